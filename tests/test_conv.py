"""The MAML 4-layer convolutional network: the convolution, per-task normalisation, shapes, MAML on it."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hbmeta as hb
from hbmeta.adaptation.conv import conv3x3, conv4
from hbmeta.tasks.digits import digits_episodes


def _direct_conv(h, w, stride):
    """A 3×3 'SAME' convolution by explicit loops (numpy, float64): the reference."""
    n, H, W, _ = h.shape
    Ho, Wo = math.ceil(H / stride), math.ceil(W / stride)
    pad_h = max((Ho - 1) * stride + 3 - H, 0)
    pad_w = max((Wo - 1) * stride + 3 - W, 0)
    hp = np.pad(h, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    out = np.zeros((n, Ho, Wo, w.shape[3]))
    for i in range(Ho):
        for j in range(Wo):
            patch = hp[:, i * stride : i * stride + 3, j * stride : j * stride + 3, :]
            out[:, i, j] = np.einsum("nabc,abco->no", patch, w)
    return out


@pytest.mark.parametrize("impl", ["patches", "xla"])
@pytest.mark.parametrize("stride, size", [(1, 5), (2, 8), (2, 7)])
def test_convolution_matches_explicit_loops(rng, impl, stride, size):
    h = rng.normal(size=(3, size, size, 4))
    w = rng.normal(size=(3, 3, 4, 6))
    got = conv3x3(jnp.asarray(h, jnp.float32), jnp.asarray(w, jnp.float32), stride, impl)
    np.testing.assert_allclose(np.asarray(got), _direct_conv(h, w, stride), rtol=1e-4, atol=1e-4)


def test_parameter_count_and_shapes_of_the_two_variants():
    net = conv4(5, image_shape=(28, 28, 1))  # the paper's Omniglot network
    p = net.init(jax.random.key(0))
    count = sum(a.size for a in jax.tree.leaves(p))
    assert count == 9 * 1 * 64 + 3 * 9 * 64 * 64 + 4 * 2 * 64 + 64 * 5 + 5
    assert net.apply(p, jnp.zeros((2, 7, 784))).shape == (2, 7, 5)
    assert net.apply(p, jnp.zeros((784,))).shape == (5,)
    pooled = conv4(5, image_shape=(84, 84, 3), filters=32, downsample="pool")  # the miniImageNet network
    q = pooled.init(jax.random.key(0))
    assert q["out"]["w"].shape == (32 * 5 * 5, 5)  # 84 → 42 → 21 → 10 → 5
    assert pooled.apply(q, jnp.zeros((4, 84 * 84 * 3))).shape == (4, 5)
    plain = conv4(3, image_shape=(8, 8, 1), filters=4, norm="none").init(jax.random.key(0))
    assert set(plain["conv"][0]) == {"w", "b"}


def _params(norm, seed=0, filters=8):
    net = conv4(4, image_shape=(8, 8, 1), filters=filters, norm=norm)
    p = net.init(jax.random.key(seed))
    # non-trivial normalisation parameters, so that the tests see them
    p["conv"] = [dict(b, **({"scale": b["scale"] * 1.3, "offset": b["offset"] + 0.2} if "scale" in b else {}))
                 for b in p["conv"]]
    return net, p


def test_task_normalisation_never_mixes_tasks(rng):
    net, p = _params("task")
    x = jnp.asarray(rng.uniform(size=(3, 6, 64)), jnp.float32)
    batched = net.apply(p, x)
    one_by_one = jnp.stack([net.apply(p, x[t]) for t in range(3)])
    np.testing.assert_allclose(np.asarray(batched), np.asarray(one_by_one), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.vmap(net.apply, (None, 0))(p, x)), np.asarray(batched), rtol=1e-4,
                               atol=1e-5)
    other = x.at[2].set(5.0 * x[2] + 1.0)  # change task 2 only
    np.testing.assert_allclose(np.asarray(net.apply(p, other)[:2]), np.asarray(batched[:2]), rtol=1e-5, atol=1e-6)
    # but within a task the statistics are shared: changing one point changes the others' outputs
    moved = x.at[0, 0].set(x[0, 0] * 4.0)
    assert float(jnp.max(jnp.abs(net.apply(p, moved)[0, 1:] - batched[0, 1:]))) > 1e-3


def test_task_normalisation_standardises_each_channel_over_the_task():
    """The first block's normalised pre-activations: mean `offset`, sd `scale` over the task's points and pixels."""
    net, p = _params("task")
    x = jax.random.uniform(jax.random.key(3), (2, 5, 64))
    h = conv3x3(x.reshape(10, 8, 8, 1), p["conv"][0]["w"], 2).reshape(2, 5, 4, 4, -1)
    mean, var = h.mean(axis=(1, 2, 3), keepdims=True), h.var(axis=(1, 2, 3), keepdims=True)
    normed = (h - mean) / jnp.sqrt(var + 1e-5) * p["conv"][0]["scale"] + p["conv"][0]["offset"]
    np.testing.assert_allclose(np.asarray(normed.mean(axis=(1, 2, 3))), 0.2, atol=1e-5)
    np.testing.assert_allclose(np.asarray(normed.std(axis=(1, 2, 3))), 1.3, rtol=1e-3)
    # scaling a task's inputs by a positive factor leaves the outputs unchanged (up to ε)
    np.testing.assert_allclose(np.asarray(net.apply(p, 3.0 * x)), np.asarray(net.apply(p, x)), rtol=1e-3, atol=1e-3)


def test_instance_normalisation_makes_points_independent(rng):
    net = conv4(4, image_shape=(16, 16, 1), filters=8, norm="instance", num_blocks=3)
    p = net.init(jax.random.key(0))
    x = jnp.asarray(rng.uniform(size=(5, 256)), jnp.float32)
    out = net.apply(p, x)
    np.testing.assert_allclose(np.asarray(net.apply(p, x[2:3])[0]), np.asarray(out[2]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(net.apply(p, 2.0 * x)), np.asarray(out), rtol=1e-3, atol=1e-3)
    none = conv4(4, image_shape=(16, 16, 1), filters=8, norm="none", num_blocks=3)
    q = none.init(jax.random.key(0))
    assert float(jnp.max(jnp.abs(none.apply(q, 2.0 * x) - 2.0 * none.apply(q, x)))) < 1e-4  # positively homogeneous


@pytest.mark.parametrize("kwargs, message", [
    ({"downsample": "avg"}, r"downsample='avg'; expected one of \['stride', 'pool'\]"),
    ({"norm": "batch"}, r"norm='batch'; expected one of \['task', 'instance', 'none'\]"),
    ({"image_shape": (8, 8)}, r"image_shape=\(8, 8\); expected \(height, width, channels\)"),
    ({"norm": "instance", "image_shape": (8, 8, 1)},
     r"norm='instance' with image_shape=\(8, 8, 1\): a block's feature map is 1×1"),
    ({"downsample": "pool", "image_shape": (8, 8, 1)}, r"4 blocks of 2×2 max-pooling leave no pixels"),
    ({"filters": 0}, r"filters=0; expected a positive integer"),
    ({"impl": "fft"}, r"impl='fft'; expected one of"),
])
def test_bad_settings_are_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        conv4(5, **kwargs)


def test_wrong_input_size_is_an_error():
    net = conv4(5, image_shape=(8, 8, 1), filters=4)
    with pytest.raises(ValueError, match=r"x has 63 features per point .*; expected H·W·C = 64"):
        net.apply(net.init(jax.random.key(0)), jnp.zeros((3, 63)))


def test_maml_with_the_conv_net_learns_held_out_digit_classes():
    """A short MAML run on digits 0–4 lifts 5-way 1-shot accuracy on digits 5–9 well above chance (0.2)."""
    train = digits_episodes((0, 1, 2, 3, 4), num_shots=1, num_query=5)
    test = digits_episodes((5, 6, 7, 8, 9), num_shots=1, num_query=5)
    net = conv4(5, image_shape=train.image_shape, filters=16)
    rule = hb.GradientSteps(net.apply, loss="cross_entropy", step_size=0.4)
    p0 = net.init(jax.random.key(0))
    res = hb.train_maml(p0, train, rule=rule, key=jax.random.key(1), num_iterations=250, meta_batch_size=8,
                        progress=False)
    tasks = test.sample(jax.random.key(2), 50)

    def accuracy(params):
        phi = rule.adapt_tasks(params, tasks)
        logits = jax.vmap(net.apply)(phi, tasks.x_query)
        return float(jnp.mean(jnp.argmax(logits, -1) == tasks.y_query))

    before, after = accuracy(p0), accuracy(res.params)
    assert after > 0.45 and after > before + 0.1, (before, after)
