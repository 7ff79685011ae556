"""N-way K-shot image classification episodes, and image folders in the Omniglot layout.

An **episode** (one task) picks ``N`` classes at random, labels them
``0..N−1`` in random order, and takes ``K`` images of each for the support set
and ``Q`` others for the query set (Vinyals et al. 2016; Finn et al. 2017,
§5.2). :class:`ImageEpisodes` draws episodes from an array of classes ×
images and works wherever a task family does (``sample(key, T)`` is
``jit``-able and feeds :func:`~hbmeta.train_maml`; ``fixed(key, T)`` gives a
finite :class:`~hbmeta.FixedTasks`). With ``rotations=True`` every class also
appears rotated by 90°, 180° and 270° as three new classes (Santoro et al.
2016; the MAML paper's Omniglot protocol).

Images are flattened to feature vectors ``H·W·C`` (row-major ``H, W, C``), pixel
values in [0, 1], so the tasks are ordinary :class:`~hbmeta.TaskBatch` es of
shape ``(T, N·K, H·W·C)``; :func:`~hbmeta.conv4` reshapes them back. Point
``i`` of a support (query) set has label ``i mod N``.

:func:`omniglot_episodes` reads a local Omniglot copy (Lake et al. 2015):
``root/images_background/ALPHABET/CHARACTER/*.png`` (30 alphabets, 964
characters: meta-training) and ``root/images_evaluation/...`` (20 alphabets,
659 characters: meta-testing), 20 drawings per character, resized to 28×28
and inverted so that ink is 1, as in the MAML code. Pillow is an optional
extra (``pip install "hbmeta[images]"``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from hbmeta.tasks.batch import TaskBatch
from hbmeta.tasks.families import FixedTasks

OMNIGLOT_SPLITS = {"background": "images_background", "evaluation": "images_evaluation"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def _positive(name, value, minimum=1):
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name}={value!r}; expected an integer >= {minimum}")


@partial(jax.jit, static_argnums=(0, 2))
def _sample(source, key, num_tasks):
    N, K, Q, R = source.num_ways, source.num_shots, source.num_query, 4 if source.rotations else 1
    images, counts = jnp.asarray(source.images), jnp.asarray(source.counts)
    k_cls, k_img = jax.random.split(key)
    cls = jax.vmap(lambda k: jax.random.choice(k, source.num_classes, (N,), replace=False))(
        jax.random.split(k_cls, num_tasks))  # (T, N) classes, in label order
    base, rot = cls // R, cls % R
    # K + Q distinct images per chosen class: the smallest of uniform keys, among the class's real images.
    u = jax.random.uniform(k_img, (num_tasks, N, images.shape[1]))
    u = jnp.where(jnp.arange(images.shape[1]) < counts[base][..., None], u, 2.0)
    idx = jnp.argsort(u, axis=-1)[..., : K + Q]
    x = images[base[..., None], idx]  # (T, N, K+Q, H, W, C)
    x = x.astype(jnp.float32) / 255.0 if source.images.dtype == np.uint8 else x.astype(jnp.float32)
    if R > 1:
        turned = jnp.stack([jnp.rot90(x, r, axes=(3, 4)) for r in range(4)])  # (4, T, N, K+Q, H, W, C)
        x = jnp.take_along_axis(turned, rot[None, :, :, None, None, None, None], axis=0)[0]
    x = jnp.swapaxes(x, 1, 2).reshape(num_tasks, K + Q, N, -1)  # point (k, n) -> index k·N + n: label n
    labels = jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32), (num_tasks, K + Q, N))
    xs, xq = x[:, :K].reshape(num_tasks, K * N, -1), x[:, K:].reshape(num_tasks, Q * N, -1)
    ys, yq = labels[:, :K].reshape(num_tasks, K * N), labels[:, K:].reshape(num_tasks, Q * N)
    return TaskBatch(xs, ys, xq, yq)


@dataclass(frozen=True, eq=False)
class ImageEpisodes:
    """N-way K-shot episodes from ``images`` ``(classes, n, H, W, C)`` with ``counts`` real images per class.

    Args:
        images: ``uint8`` (0–255) or float (0–1) array; class ``c`` has images
            ``images[c, :counts[c]]`` (the rest is padding).
        counts: ``(classes,)`` images per class (default: all ``n``).
        num_ways: N, classes per episode.
        num_shots: K, support images per class.
        num_query: Q, query images per class.
        rotations: add each class rotated by 90°, 180°, 270° as new classes (square images only).
        class_names: optional names of the classes (without rotations).

    Example:
        >>> import jax, numpy as np
        >>> src = ImageEpisodes(np.zeros((6, 4, 5, 5, 1), np.uint8), num_ways=3, num_shots=1, num_query=2)
        >>> t = src.sample(jax.random.key(0), 2)
        >>> t.x_support.shape, t.y_support.tolist(), t.y_query.shape, src.num_classes
        ((2, 3, 25), [[0, 1, 2], [0, 1, 2]], (2, 6), 24)
    """

    images: np.ndarray
    counts: np.ndarray | None = None
    num_ways: int = 5
    num_shots: int = 1
    num_query: int = 15
    rotations: bool = True
    class_names: tuple = ()

    regression = False

    def __post_init__(self):
        images = np.asarray(self.images)
        if images.ndim != 5:
            raise ValueError(f"images has shape {images.shape}; expected (classes, images, height, width, channels)")
        if images.dtype != np.uint8 and images.dtype.kind != "f":
            raise ValueError(f"images has dtype {images.dtype}; expected uint8 (0-255) or floats (0-1)")
        if images.dtype.kind == "f" and not np.all(np.isfinite(images)):
            raise ValueError("images contains NaN or infinite values; expected pixel values in [0, 1]")
        counts = np.full(images.shape[0], images.shape[1]) if self.counts is None else np.asarray(self.counts)
        if counts.shape != (images.shape[0],) or counts.min() < 0 or counts.max() > images.shape[1]:
            raise ValueError(f"counts has shape {counts.shape} and values in [{counts.min()}, {counts.max()}]; "
                             f"expected ({images.shape[0]},) values in [0, {images.shape[1]}]")
        _positive("num_ways", self.num_ways, 2)
        _positive("num_shots", self.num_shots)
        _positive("num_query", self.num_query, 0)
        if self.rotations and images.shape[2] != images.shape[3]:
            raise ValueError(f"rotations=True with images of {images.shape[2]}×{images.shape[3]}; "
                             "expected square images")
        need = self.num_shots + self.num_query
        short = np.flatnonzero(counts < need)
        if short.size:
            c = int(short[0])
            name = self.class_names[c] if c < len(self.class_names) else c
            raise ValueError(f"class {name!r} has {int(counts[c])} images; expected at least num_shots + num_query = "
                             f"{need} in every class ({short.size} class(es) have fewer)")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "counts", counts.astype(np.int32))
        if self.num_ways > self.num_classes:
            raise ValueError(f"num_ways={self.num_ways}; expected at most the {self.num_classes} classes"
                             + (" (with rotations)" if self.rotations else ""))

    @property
    def num_classes(self) -> int:
        """Classes episodes are drawn from (4× the image classes with rotations)."""
        return int(self.images.shape[0]) * (4 if self.rotations else 1)

    @property
    def image_shape(self) -> tuple:
        """``(H, W, C)``, for :func:`~hbmeta.conv4`."""
        return tuple(int(s) for s in self.images.shape[2:])

    @property
    def num_support(self) -> int:
        return self.num_ways * self.num_shots

    def sample(self, key, num_tasks: int, **_) -> TaskBatch:
        """``num_tasks`` fresh episodes as a :class:`~hbmeta.TaskBatch` (``jit``-able, ``num_tasks`` static)."""
        _positive("num_tasks", num_tasks)
        return _sample(self, key, int(num_tasks))

    def fixed(self, key, num_tasks: int) -> FixedTasks:
        """A finite set of ``num_tasks`` episodes drawn once."""
        return FixedTasks(tasks=self.sample(key, num_tasks), family=self)


def _pillow():
    # Pillow is an optional extra (hbmeta[images]); imported here so that `import hbmeta` does not need it.
    try:
        from PIL import Image  # optional extra: imported only when a folder is read
    except ImportError:  # pragma: no cover - installed wherever the tests run
        raise ImportError('reading image folders needs Pillow; install it with pip install "hbmeta[images]"') from None
    return Image


def load_image_folder(root, *, image_size: int = 28, invert: bool = True):
    """``(images, counts, names)`` from ``root/GROUP/CLASS/*.png``: one class per second-level folder.

    Images are converted to grey levels, resized to ``image_size²`` (Lanczos)
    and, with ``invert``, inverted (``255 − v``: dark ink on white becomes 1 on 0).
    ``images`` is ``uint8`` ``(classes, max images, s, s, 1)``; ``names`` are ``"GROUP/CLASS"``.
    """
    Image = _pillow()
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"image folder {root!r} does not exist; expected root/GROUP/CLASS/*.png")
    _positive("image_size", image_size)
    classes, names = [], []
    for group in sorted(os.listdir(root)):
        gdir = os.path.join(root, group)
        if not os.path.isdir(gdir):
            continue
        for cls in sorted(os.listdir(gdir)):
            cdir = os.path.join(gdir, cls)
            files = sorted(f for f in os.listdir(cdir) if f.lower().endswith(IMAGE_EXTENSIONS)) \
                if os.path.isdir(cdir) else []
            if not files:
                continue
            arrays = []
            for f in files:
                with Image.open(os.path.join(cdir, f)) as im:
                    a = np.asarray(im.convert("L").resize((image_size, image_size), Image.LANCZOS), dtype=np.uint8)
                arrays.append(255 - a if invert else a)
            classes.append(np.stack(arrays))
            names.append(f"{group}/{cls}")
    if not classes:
        raise ValueError(f"image folder {root!r} has no GROUP/CLASS/ folders with images; expected "
                         f"root/GROUP/CLASS/*.png (extensions {', '.join(IMAGE_EXTENSIONS)})")
    counts = np.array([len(c) for c in classes])
    images = np.zeros((len(classes), counts.max(), image_size, image_size, 1), np.uint8)
    for i, c in enumerate(classes):
        images[i, : len(c), :, :, 0] = c
    return images, counts, tuple(names)


def omniglot_episodes(
    root,
    *,
    split: str | None = "background",
    num_ways: int = 5,
    num_shots: int = 1,
    num_query: int = 15,
    rotations: bool = True,
    image_size: int = 28,
) -> ImageEpisodes:
    """Episodes from a local Omniglot copy (module docstring) or any folder in its layout.

    Args:
        root: the Omniglot folder holding ``images_background/`` and
            ``images_evaluation/``; with ``split=None``, a folder
            ``root/ALPHABET/CHARACTER/*.png`` itself.
        split: ``"background"`` (meta-training alphabets), ``"evaluation"``
            (meta-test alphabets) or None.
        num_ways, num_shots, num_query, rotations: as in :class:`ImageEpisodes`.
        image_size: side of the resized images (28 in the MAML paper).

    Example (``OMNIGLOT`` holds the unzipped ``images_background`` and ``images_evaluation``)::

        train = omniglot_episodes(OMNIGLOT, split="background")          # 964 × 4 classes
        test = omniglot_episodes(OMNIGLOT, split="evaluation")           # 659 × 4 classes
        net = conv4(5, image_shape=train.image_shape)
    """
    if split is not None:
        if split not in OMNIGLOT_SPLITS:
            raise ValueError(f"split={split!r}; expected one of {list(OMNIGLOT_SPLITS)} or None")
        folder = os.path.join(os.fspath(root), OMNIGLOT_SPLITS[split])
        if not os.path.isdir(folder):
            raise ValueError(f"{folder!r} does not exist; expected the Omniglot layout "
                             f"root/{OMNIGLOT_SPLITS[split]}/ALPHABET/CHARACTER/*.png")
    else:
        folder = root
    images, counts, names = load_image_folder(folder, image_size=image_size)
    return ImageEpisodes(images, counts, num_ways=num_ways, num_shots=num_shots, num_query=num_query,
                         rotations=rotations, class_names=names)
