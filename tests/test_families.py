"""Task families: shapes, ranges, the functions behind the data, noise statistics (against
Monte Carlo standard errors), reproducibility for a key, and finite task sets."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hbmeta import FixedTasks, GaussianBlobs, LinearGaussian, Sinusoid, SinusoidAndLine


def _draw(family, n, seed=0, **kw):
    tasks, params = family.sample(jax.random.key(seed), n, return_params=True, **kw)
    return jax.tree.map(np.asarray, tasks), jax.tree.map(np.asarray, params)


# Each (family, number of tasks, point counts) compiles its sampler once per process (about a
# second on a loaded machine), so the tests below share a few configurations.
N = 1000
SIN, BMAML = Sinusoid(), Sinusoid(phase=(0.0, 2 * math.pi), frequency=(0.5, 2.0), noise=0.01, relative_noise=True)
MIX, LIN = SinusoidAndLine(), LinearGaussian(dim=3, mean=1.5, scale=0.5, noise=0.2, x_scale=2.0, num_support=8,
                                              num_query=4)
BLOBS = GaussianBlobs(num_classes=4, shots=3, query_shots=5, dim=2, centre_scale=2.0, spread=0.5)


def _sine(p, x):
    return p["amplitude"][:, None, None] * np.sin(p["frequency"][:, None, None] * x - p["phase"][:, None, None])


def test_sinusoid_maml_protocol_defaults():
    fam = SIN
    t, p = _draw(fam, N)
    assert t.x_support.shape == (N, 10, 1) and t.y_support.shape == (N, 10, 1)
    assert t.x_query.shape == (N, 10, 1) and t.y_query.shape == (N, 10, 1)
    assert p["amplitude"].min() >= 0.1 and p["amplitude"].max() <= 5.0
    assert p["phase"].min() >= 0.0 and p["phase"].max() <= math.pi
    np.testing.assert_array_equal(p["frequency"], 1.0)
    x = np.concatenate([t.x_support, t.x_query], axis=1)
    assert x.min() >= -5.0 and x.max() <= 5.0
    # No observation noise: y is exactly A sin(x − φ).
    expected = p["amplitude"][:, None, None] * np.sin(x - p["phase"][:, None, None])
    np.testing.assert_allclose(np.concatenate([t.y_support, t.y_query], axis=1), expected, atol=1e-5)
    # Uniform draws: means within 4 Monte Carlo standard errors.
    for values, (lo, hi) in ((p["amplitude"], (0.1, 5.0)), (p["phase"], (0.0, math.pi)), (x.ravel(), (-5.0, 5.0))):
        se = (hi - lo) / math.sqrt(12 * values.size)
        assert abs(values.mean() - (lo + hi) / 2) < 4 * se


def test_sinusoid_bmaml_variant_relative_noise():
    t, p = _draw(BMAML, N, seed=1)
    assert p["phase"].max() > math.pi and p["phase"].max() <= 2 * math.pi
    assert p["frequency"].min() >= 0.5 and p["frequency"].max() <= 2.0 and p["frequency"].std() > 0.3
    x = np.concatenate([t.x_support, t.x_query], axis=1)
    y = np.concatenate([t.y_support, t.y_query], axis=1)
    z = (y - _sine(p, x)) / (0.01 * p["amplitude"][:, None, None])  # ~ N(0, 1)
    n = z.size
    assert abs(z.mean()) < 4 / math.sqrt(n)
    assert abs(z.std() - 1.0) < 4 * math.sqrt(0.5 / n) + 1e-3  # float32 residuals of A·sin(…)
    # Relative noise: the residual scales with the amplitude (small-A tasks are much less noisy).
    resid = np.abs(y - _sine(p, x)).mean(axis=(1, 2))
    small, large = p["amplitude"] < 1.0, p["amplitude"] > 4.0
    assert resid[large].mean() > 3 * resid[small].mean()


def test_sinusoid_and_line_mixture():
    t, p = _draw(MIX, N, seed=3)
    assert t.x_support.shape == (N, 5, 1) and t.x_query.shape == (N, 10, 1)
    frac = p["is_line"].mean()
    assert abs(frac - 0.5) < 4 * math.sqrt(0.25 / N)
    line, x = p["is_line"] == 1, t.x_support[..., 0]
    np.testing.assert_allclose(t.y_support[line, :, 0],
                               p["slope"][line, None] * x[line] + p["intercept"][line, None], atol=1e-5)
    np.testing.assert_allclose(t.y_support[~line, :, 0],
                               p["amplitude"][~line, None] * np.sin(x[~line] - p["phase"][~line, None]), atol=1e-5)
    for name in ("slope", "intercept"):
        assert p[name].min() >= -3 and p[name].max() <= 3


def test_linear_gaussian_statistics():
    t, p = _draw(LIN, N, seed=4)
    assert t.x_support.shape == (N, 8, 3) and t.y_query.shape == (N, 4, 1)
    w = p["w"]
    assert np.all(np.abs(w.mean(axis=0) - 1.5) < 4 * 0.5 / math.sqrt(N))
    assert np.all(np.abs(w.std(axis=0) - 0.5) < 4 * 0.5 * math.sqrt(0.5 / N))
    assert abs(t.x_support.std() - 2.0) < 0.05
    r = (t.y_support - np.einsum("tkd,td->tk", t.x_support, w)[..., None]).ravel()
    assert abs(r.mean()) < 4 * 0.2 / math.sqrt(r.size)
    assert abs(r.std() - 0.2) < 4 * 0.2 * math.sqrt(0.5 / r.size)


def test_gaussian_blobs_labels_and_spread():
    fam = BLOBS
    assert not fam.regression and fam.num_support == 12 and fam.num_query == 20
    t, p = _draw(fam, 500, seed=5)
    assert t.x_support.shape == (500, 12, 2) and t.y_support.shape == (500, 12)
    assert t.y_support.dtype == np.int32 and t.y_query.shape == (500, 20)
    for y, per_class in ((t.y_support, 3), (t.y_query, 5)):
        counts = np.stack([(y == c).sum(axis=1) for c in range(4)], axis=1)
        np.testing.assert_array_equal(counts, per_class)
    centres = p["centres"]
    assert centres.shape == (500, 4, 2)
    assert abs(centres.std() - 2.0) < 0.1
    dev = t.x_query - np.take_along_axis(centres, t.y_query[..., None], axis=1)
    assert abs(dev.std() - 0.5) < 4 * 0.5 * math.sqrt(0.5 / dev.size)
    probs = np.asarray(jax.jit(fam.function)(jax.tree.map(lambda a: a[0], p), jnp.asarray(t.x_query[0])))
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-5)
    # The Bayes classifier with well separated centres mostly recovers the labels.
    assert (probs.argmax(-1) == t.y_query[0]).mean() > 0.5


def test_reproducible_for_a_key_and_different_for_another():
    for fam in (SIN, MIX, LIN, BLOBS):
        a = fam.sample(jax.random.key(7), N)
        b = fam.sample(jax.random.key(7), N)
        c = fam.sample(jax.random.key(8), N)
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(u, v)
        assert not np.array_equal(a.x_support, c.x_support)


def test_point_count_overrides():
    fam = Sinusoid()
    t = jax.eval_shape(lambda k: fam.sample(k, 2, num_support=5, num_query=100), jax.random.key(0))
    assert t.x_support.shape == (2, 5, 1) and t.x_query.shape == (2, 100, 1)
    assert fam.with_points(num_support=3).num_support == 3 and fam.num_support == 10
    blobs = GaussianBlobs(num_classes=5).with_points(num_support=10, num_query=15)
    assert (blobs.shots, blobs.query_shots) == (2, 3)
    with pytest.raises(ValueError, match="num_support=7; expected a multiple of num_classes=5"):
        GaussianBlobs(num_classes=5).with_points(num_support=7)
    with pytest.raises(ValueError, match="num_query=12; expected a multiple of num_classes=5"):
        GaussianBlobs(num_classes=5).sample(jax.random.key(0), 2, num_query=12)


def test_fixed_set_samples_distinct_tasks_from_the_set():
    fixed = SIN.fixed(jax.random.key(0), N)
    assert isinstance(fixed, FixedTasks) and fixed.num_tasks == N and fixed.regression
    assert fixed.task_params["amplitude"].shape == (N,)
    np.testing.assert_array_equal(fixed.tasks.x_query, SIN.sample(jax.random.key(0), N).x_query)
    ids = {float(v): j for j, v in enumerate(np.asarray(fixed.tasks.x_support[:, 0, 0]))}
    assert len(ids) == N
    picked = []
    for seed in range(3):
        batch = fixed.sample(jax.random.key(seed), 10)
        idx = [ids[float(v)] for v in np.asarray(batch.x_support[:, 0, 0])]  # every task is one of the set
        assert len(set(idx)) == 10  # distinct within a meta-batch
        for j, i in enumerate(idx):  # and the whole task, not only its first point
            np.testing.assert_array_equal(np.asarray(batch.y_query)[j], np.asarray(fixed.tasks.y_query)[i])
        picked.append(tuple(idx))
    assert len(set(picked)) == 3  # different keys pick different meta-batches
    with pytest.raises(ValueError, match=f"num_tasks={N + 1}; expected at most the {N} tasks"):
        fixed.sample(jax.random.key(0), N + 1)
    assert not FixedTasks(tasks=fixed.tasks, family=BLOBS).regression


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: Sinusoid(amplitude=(5.0, 1.0)), r"amplitude=\(5.0, 1.0\); expected a finite \(low, high\)"),
        (lambda: Sinusoid(x_range=(-math.inf, 5.0)), r"x_range=.*expected a finite"),
        (lambda: Sinusoid(noise=-0.1), r"noise=-0.1; expected a non-negative"),
        (lambda: Sinusoid(num_support=0), r"num_support=0; expected an integer >= 1"),
        (lambda: SinusoidAndLine(line_probability=1.5), r"line_probability=1.5; expected a value in \[0, 1\]"),
        (lambda: LinearGaussian(dim=0), r"dim=0; expected an integer >= 1"),
        (lambda: LinearGaussian(scale=0.0), r"scale=0.0; expected a positive number"),
        (lambda: GaussianBlobs(num_classes=1), r"num_classes=1; expected an integer >= 2"),
        (lambda: GaussianBlobs(spread=-1.0), r"spread=-1.0; expected a positive number"),
        (lambda: Sinusoid().sample(jax.random.key(0), 0), r"num_tasks=0; expected an integer >= 1"),
    ],
)
def test_bad_family_settings_raise(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()
