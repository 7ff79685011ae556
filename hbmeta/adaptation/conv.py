"""The MAML paper's 4-layer convolutional network for few-shot image classification, as ``(init, apply)``.

Finn et al. (2017, §5.2) follow Vinyals et al. (2016): four blocks of a
3×3 convolution with 64 filters, a normalisation, a ReLU, and a 2× spatial
reduction, then a linear layer to the N classes. For Omniglot (28×28) the
reduction is a stride-2 convolution and the last feature map is averaged over
its positions; for miniImageNet (84×84) it is 2×2 max-pooling with 32 filters
and the last feature map is flattened. :func:`conv4` builds either
(``downsample="stride"`` or ``"pool"``).

Normalisation is **per task, never across tasks**. MAML uses batch
normalisation with the statistics of the current batch, which is one task's
support or query set; here ``norm="task"`` does that explicitly: for inputs of
shape ``(..., N, H·W·C)`` the mean and variance of each channel are taken over
the ``N`` points and the ``H×W`` positions of each leading index separately,

    ĥ = scale · (h − mean_task) / √(var_task + ε) + offset,

so vmapping over tasks, or calling ``apply`` on ``(T, N, ·)``, never mixes
tasks (a task's prediction for one point depends on the other points of the
same call: MAML's transductive setting). ``norm="instance"`` uses each
image's own statistics (over positions only; no dependence between points)
and ``norm="none"`` none. With a normalisation the convolutions have no bias
(the mean subtraction removes it); ``scale`` and ``offset`` are learned per
channel.

Images travel as flat feature vectors, ``(..., N, H·W·C)`` in row-major
``H, W, C`` order, so every part of hbmeta that expects ``(tasks, points,
features)`` inputs works unchanged; ``apply`` reshapes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from hbmeta.adaptation.networks import Network

NORMS = ("task", "instance", "none")
DOWNSAMPLES = ("stride", "pool")
IMPLEMENTATIONS = ("patches", "xla")


def conv3x3(h, w, stride: int, impl: str = "patches"):
    """A 3×3 convolution, "SAME" padding, NHWC inputs and HWIO kernels ``(3, 3, c_in, c_out)``.

    ``impl="patches"`` extracts the 3×3 patches and multiplies by the kernel
    as a ``(9·c_in, c_out)`` matrix (im2col); ``"xla"`` calls XLA's convolution.
    They agree to rounding. Under ``vmap`` over tasks with one adapted kernel
    per task (MAML's query pass and its second-order gradient) the patches
    form is a batched matrix product, several times faster on CPU than the
    grouped convolution that batching XLA's convolution produces.
    """
    if impl == "xla":
        return jax.lax.conv_general_dilated(h, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    patches = jax.lax.conv_general_dilated_patches(h, (3, 3), (stride, stride), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    c_in, c_out = w.shape[2], w.shape[3]
    return patches @ jnp.transpose(w, (2, 0, 1, 3)).reshape(9 * c_in, c_out)  # patch features are (c_in, kh, kw)


def _out_size(size, downsample, num_blocks):
    sizes = [size]
    for _ in range(num_blocks):
        sizes.append(math.ceil(sizes[-1] / 2) if downsample == "stride" else sizes[-1] // 2)
    return sizes


def conv4(
    num_classes: int,
    *,
    image_shape: Sequence[int] = (28, 28, 1),
    filters: int = 64,
    num_blocks: int = 4,
    downsample: str = "stride",
    norm: str = "task",
    eps: float = 1e-5,
    impl: str = "patches",
) -> Network:
    """The 4-block convolutional network of MAML (module docstring) as a :class:`~hbmeta.Network`.

    Args:
        num_classes: N, the number of outputs (logits).
        image_shape: ``(H, W, C)`` of the images (28×28×1 for Omniglot, 84×84×3 for miniImageNet).
        filters: channels of every convolution (64 for Omniglot; the paper used 32 for miniImageNet).
        num_blocks: convolution blocks (4 in the paper).
        downsample: ``"stride"`` (stride-2 convolutions, average over the last
            map: the paper's Omniglot network) or ``"pool"`` (2×2 max-pooling,
            flattened: its miniImageNet network).
        norm: ``"task"`` (statistics over one task's points and positions: MAML's
            batch normalisation), ``"instance"`` (per image) or ``"none"``.
        eps: ε of the normalisation.
        impl: ``"patches"`` (im2col, fast under vmap on CPU) or ``"xla"``: see :func:`conv3x3`.

    Params: ``{"conv": [{"w": (3, 3, c_in, filters), "scale", "offset": (filters,)}, …], "out": {"w", "b"}}``
    (``"b"`` instead of scale/offset in the blocks when ``norm="none"``); He
    initialisation of the convolutions (N(0, 2/(9 c_in))), N(0, 1/n_in) for the output layer.
    ``apply(params, x)`` maps ``(..., N, H·W·C)`` (or one image ``(H·W·C,)``) to ``(..., N, num_classes)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = conv4(5, image_shape=(8, 8, 1), filters=16)
        >>> params = net.init(jax.random.key(0))
        >>> net.apply(params, jnp.zeros((3, 10, 64))).shape
        (3, 10, 5)
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise ValueError(f"image_shape={image_shape!r}; expected (height, width, channels), positive")
    for name, value, lo in (("num_classes", num_classes, 1), ("filters", filters, 1), ("num_blocks", num_blocks, 1)):
        if isinstance(value, bool) or int(value) != value or value < lo:
            raise ValueError(f"{name}={value!r}; expected a positive integer")
    if downsample not in DOWNSAMPLES:
        raise ValueError(f"downsample={downsample!r}; expected one of {list(DOWNSAMPLES)}")
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r}; expected one of {list(NORMS)}")
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl={impl!r}; expected one of {list(IMPLEMENTATIONS)}")
    if not eps > 0:
        raise ValueError(f"eps={eps!r}; expected a positive number")
    H, W, C = shape
    hs, ws = _out_size(H, downsample, num_blocks), _out_size(W, downsample, num_blocks)
    if min(hs[-1], ws[-1]) < 1:
        raise ValueError(f"image_shape={shape}: {num_blocks} blocks of 2×2 max-pooling leave no pixels; "
                         "expected larger images, fewer blocks or downsample='stride'")
    at_norm = (hs[1:], ws[1:]) if downsample == "stride" else (hs[:-1], ws[:-1])  # feature-map sizes normalised
    if norm == "instance" and any(h * w == 1 for h, w in zip(*at_norm)):
        raise ValueError(f"norm='instance' with image_shape={shape}: a block's feature map is 1×1, where an image's "
                         "own statistics make every feature zero; expected norm='task' or larger images")
    num_classes, filters, num_blocks = int(num_classes), int(filters), int(num_blocks)
    features = filters if downsample == "stride" else filters * hs[-1] * ws[-1]
    stride = 2 if downsample == "stride" else 1

    def init(key):
        keys = jax.random.split(key, num_blocks + 1)
        blocks, c_in = [], C
        for k in keys[:-1]:
            block = {"w": jax.random.normal(k, (3, 3, c_in, filters)) * math.sqrt(2.0 / (9 * c_in))}
            if norm == "none":
                block["b"] = jnp.zeros((filters,))
            else:
                block["scale"] = jnp.ones((filters,))
                block["offset"] = jnp.zeros((filters,))
            blocks.append(block)
            c_in = filters
        out = {"w": jax.random.normal(keys[-1], (features, num_classes)) / math.sqrt(features),
               "b": jnp.zeros((num_classes,))}
        return {"conv": blocks, "out": out}

    def normalise(h, block, groups):
        if norm == "none":
            return h + block["b"]
        axes = (1, 2) if norm == "instance" else (1, 2, 3)
        g = h if norm == "instance" else h.reshape((groups, -1) + h.shape[1:])
        mean = jnp.mean(g, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(g - mean), axis=axes, keepdims=True)
        g = (g - mean) * jax.lax.rsqrt(var + eps)
        return g.reshape(h.shape) * block["scale"] + block["offset"]

    def apply(params, x):
        x = jnp.asarray(x)
        single = x.ndim == 1
        if single:
            x = x[None]
        if x.shape[-1] != H * W * C:
            raise ValueError(f"x has {x.shape[-1]} features per point (shape {x.shape}); expected "
                             f"H·W·C = {H * W * C} for image_shape={shape}")
        lead, n = x.shape[:-2], x.shape[-2]
        groups = math.prod(lead)
        h = x.reshape((groups * n, H, W, C))
        for block in params["conv"]:
            h = conv3x3(h, block["w"], stride, impl)
            h = jax.nn.relu(normalise(h, block, groups))
            if downsample == "pool":
                h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        h = jnp.mean(h, axis=(1, 2)) if downsample == "stride" else h.reshape((h.shape[0], -1))
        out = h @ params["out"]["w"] + params["out"]["b"]
        out = out.reshape(lead + (n, num_classes))
        return out[0] if single else out

    # Compiled as one function: eager initialisation would compile every random draw separately.
    return Network(jax.jit(init), apply)
