"""Posterior-predictive sampling: closed forms, chunking, masks, noise, classification, summaries.

Compilation dominates the run time, so the tests share a few posteriors and
task batches (built with numpy, not by compiled samplers) at module scope.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

import hbmeta as hb
from hbmeta.predict.kernel import KERNEL_CACHE, compiled_chunk

RNG = np.random.default_rng(0)


def mlp_params(sizes, seed=0):
    """He-initialised MLP params built with numpy (no compiled random-number code in the tests' setup)."""
    rng = np.random.default_rng(seed)
    return [{"w": jnp.asarray(rng.normal(size=(a, b)) * np.sqrt(2 / a), jnp.float32), "b": jnp.zeros(b, jnp.float32)}
            for a, b in zip(sizes[:-1], sizes[1:])]


def numpy_tasks(num_tasks, k, m, d=1, seed=0):
    rng = np.random.default_rng(seed)
    xs, xq = rng.uniform(-2, 2, (num_tasks, k, d)), rng.uniform(-2, 2, (num_tasks, m, d))
    w = rng.normal(size=(num_tasks, d, 1))
    return hb.make_tasks(xs, np.sin(xs @ w), xq, np.sin(xq @ w))


@pytest.fixture(scope="module")
def reg():
    net = hb.mlp((1, 8, 1))
    theta = mlp_params((1, 8, 1))
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, step_size=0.05), theta, likelihood=hb.NormalLikelihood())
    flat = spec.ravel(theta) + 0.1 * np.random.default_rng(1).normal(size=(2, 6, spec.num_params)).astype(np.float32)
    noise = 0.2 + RNG.random((2, 6))
    post = hb.Posterior({"theta": np.asarray(flat), "noise": noise}, spec, "custom", {})
    tasks = numpy_tasks(5, 4, 6)
    whole = hb.sample_predictive(post, tasks, key=jax.random.key(4), draw_chunk=100, task_chunk=100,
                                 return_params=True)
    return post, tasks, whole


def test_linear_one_step_matches_closed_form_and_noise_is_per_draw():
    # docs/references.md, linear-Gaussian tasks: one step on mean squared error gives φ̂ = Aθ + b,
    # A = I − (2α/K)XᵀX, b = (2α/K)Xᵀy.
    spec = hb.ModelSpec(hb.GradientSteps(hb.linear().apply, step_size=0.1), {"w": jnp.zeros(3)},
                        likelihood=hb.NormalLikelihood())
    tasks = numpy_tasks(4, 6, 400, d=3, seed=1)
    theta = RNG.normal(size=(2, 3, 3)).astype(np.float32)
    alpha = np.array([[0.05, 0.1, 0.2], [0.01, 0.03, 0.07]], np.float32)
    sigma = np.array([[0.1, 2.0, 0.5], [1.0, 0.3, 3.0]], np.float32)
    post = hb.Posterior({"theta": theta, "step_size": alpha, "noise": sigma}, spec, "custom", {})
    pred = hb.sample_predictive(post, tasks, key=jax.random.key(0), draw_chunk=4, task_chunk=3)
    assert pred.mean.shape == (2, 3, 4, 400, 1) and pred.y.shape == pred.mean.shape
    np.testing.assert_array_equal(pred.noise, sigma)
    assert pred.probs is None and pred.regression
    X, y, Xq = (np.asarray(a, np.float64) for a in (tasks.x_support, tasks.y_support[..., 0], tasks.x_query))
    K = X.shape[1]
    for c in range(2):
        for s in range(3):
            for j in range(tasks.num_tasks):
                a = float(alpha[c, s])
                phi = (np.eye(3) - 2 * a / K * X[j].T @ X[j]) @ theta[c, s] + 2 * a / K * X[j].T @ y[j]
                np.testing.assert_allclose(pred.mean[c, s, j, :, 0], Xq[j] @ phi, rtol=1e-4, atol=1e-5)
            # y − μ = σ ε with ε standard normal: 1600 values per draw, within 4 standard errors
            z = ((pred.y - pred.mean) / sigma[c, s])[c, s].ravel()
            assert abs(z.mean()) < 4 / np.sqrt(z.size)
            assert abs(z.var() - 1) < 4 * np.sqrt(2 / z.size)
    assert not np.allclose(pred.y[0, 0] - pred.mean[0, 0], pred.y[0, 1] - pred.mean[0, 1])


def test_chunked_equals_unchunked_and_compiles_once(reg):
    post, tasks, whole = reg
    part = hb.sample_predictive(post, tasks, key=jax.random.key(4), draw_chunk=5, task_chunk=2, return_params=True)
    np.testing.assert_allclose(part.mean, whole.mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(part.y, whole.y, rtol=1e-5, atol=1e-5)  # noise keys do not depend on chunks
    for a, w in zip(jax.tree.leaves(part.params), jax.tree.leaves(whole.params)):
        np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-6)
    # the last chunks of draws (12 = 5 + 5 + 2) and tasks (5 = 2 + 2 + 1) were padded: still one compilation
    run = compiled_chunk(post.spec, regression=True, has_alpha=False, want_params=True)
    assert any(v[1] is run for v in KERNEL_CACHE.values())
    assert run._cache_size() == 2  # the unchunked call and the chunked one
    hb.sample_predictive(post, tasks, key=jax.random.key(9), draw_chunk=5, task_chunk=2, return_params=True)
    assert run._cache_size() == 2


def test_adapted_params_are_the_rule_applied_per_draw_and_task(reg):
    post, tasks, whole = reg
    spec = post.spec
    assert jax.tree.leaves(whole.params)[0].shape[:3] == (2, 6, 5)

    @jax.jit
    def by_hand(flat, xs, ys, xq):
        phi = spec.rule(spec.unravel(flat), xs, ys)
        return phi, spec.rule.apply(phi, xq)

    for c, s, j in ((0, 0, 0), (1, 5, 4)):
        phi, mean = by_hand(post.samples["theta"][c, s], tasks.x_support[j], tasks.y_support[j], tasks.x_query[j])
        got = jax.tree.map(lambda a: a[c, s, j], whole.params)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(phi)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(whole.mean[c, s, j], mean, rtol=1e-5, atol=1e-6)


def test_masks(reg):
    post, tasks, whole = reg
    qmask = np.ones((5, 6), bool)
    qmask[0, 1:3] = False
    qmask[2, 5] = False
    smask = np.ones((5, 4), bool)
    smask[3, 2:] = False
    masked = tasks._replace(query_mask=jnp.asarray(qmask), support_mask=jnp.asarray(smask),
                            y_support=tasks.y_support.at[3, 2:].set(1e3))
    pred = hb.sample_predictive(post, masked, key=jax.random.key(4), draw_chunk=100, task_chunk=100)
    assert np.all(np.isnan(pred.mean[:, :, ~qmask])) and np.all(np.isnan(pred.y[:, :, ~qmask]))
    np.testing.assert_array_equal(pred.query_mask, qmask)
    keep = qmask.copy()
    keep[3] = False  # task 3 was adapted on its first two support points only
    np.testing.assert_allclose(pred.mean[:, :, keep], whole.mean[:, :, keep], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.y[:, :, keep], whole.y[:, :, keep], rtol=1e-5, atol=1e-6)
    spec = post.spec
    by_hand = jax.jit(lambda flat: spec.rule.apply(spec.rule(spec.unravel(flat), tasks.x_support[3, :2],
                                                             tasks.y_support[3, :2]), tasks.x_query[3]))
    for s in (0, 3):
        np.testing.assert_allclose(pred.mean[1, s, 3], by_hand(post.samples["theta"][1, s]), rtol=1e-5, atol=1e-6)


def test_classification_probabilities_and_labels():
    net = hb.mlp((2, 8, 3))
    theta = mlp_params((2, 8, 3))
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, loss="cross_entropy", step_size=0.5), theta,
                        likelihood=hb.CategoricalLikelihood())
    flat = spec.ravel(theta) + 0.5 * np.random.default_rng(1).normal(size=(2, 100, spec.num_params)).astype(np.float32)
    post = hb.Posterior({"theta": np.asarray(flat)}, spec, "custom", {})
    rng = np.random.default_rng(2)
    mask = np.ones((3, 6), bool)
    mask[1, 0] = False
    tasks = hb.make_tasks(rng.normal(size=(3, 4, 2)), rng.integers(0, 3, (3, 4)), rng.normal(size=(3, 6, 2)),
                          rng.integers(0, 3, (3, 6)), query_mask=mask)
    pred = hb.sample_predictive(post, tasks, key=1)
    assert pred.mean is None and pred.noise is None and not pred.regression
    assert pred.probs.shape == (2, 100, 3, 6, 3) and pred.y.shape == (2, 100, 3, 6)
    np.testing.assert_allclose(pred.probs[:, :, mask].sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.isnan(pred.probs[:, :, 1, 0])) and np.all(pred.y[:, :, 1, 0] == -1)
    # yˢ ~ Categorical(pˢ): over 200 draws the label frequencies match p̄ within 4 standard errors
    freq = np.stack([(pred.y == k).mean(axis=(0, 1)) for k in range(3)], -1)[mask]
    pbar = pred.probs.mean(axis=(0, 1))[mask]
    assert np.all(np.abs(freq - pbar) < 4 * np.sqrt(pbar * (1 - pbar) / 200) + 1e-3)
    s = hb.summarize(pred)
    np.testing.assert_allclose(s.probs[mask], pbar, rtol=1e-5)
    assert np.all(s.label[~mask] == -1) and np.array_equal(s.label[mask], np.argmax(pbar, -1))


def test_summarize_regression_single_draw_and_mixture(x64):
    mean = np.zeros((1, 1, 1, 2, 1))
    mean[..., 1, 0] = 3.0
    p = hb.Predictive(mean, None, mean.copy(), np.array([[2.0]]), None, None)
    s = hb.summarize(p, levels=(0.5, 0.9))
    for level in (0.5, 0.9):
        z = norm.ppf((1 + level) / 2)
        lo, hi = s.intervals[level]
        np.testing.assert_allclose(hi[0, :, 0], mean[0, 0, 0, :, 0] + 2 * z, atol=1e-8)
        np.testing.assert_allclose(lo[0, :, 0], mean[0, 0, 0, :, 0] - 2 * z, atol=1e-8)
    np.testing.assert_allclose(s.sd, 2.0)
    # two draws: the quantiles are those of the equal mixture of N(−1, 0.5²) and N(2, 1²)
    mu = np.array([-1.0, 2.0]).reshape(1, 2, 1, 1, 1)
    p = hb.Predictive(mu, None, mu.copy(), np.array([[0.5, 1.0]]), None, None)
    s = hb.summarize(p, levels=(0.8,))
    lo, hi = (float(a.squeeze()) for a in s.intervals[0.8])
    cdf = lambda t: 0.5 * norm.cdf(t, -1, 0.5) + 0.5 * norm.cdf(t, 2, 1.0)
    assert abs(cdf(lo) - 0.1) < 1e-9 and abs(cdf(hi) - 0.9) < 1e-9
    np.testing.assert_allclose(s.mean.squeeze(), 0.5)
    np.testing.assert_allclose(s.sd.squeeze(), np.sqrt(2.25 + (0.25 + 1.0) / 2))
    np.testing.assert_allclose([a.squeeze() for a in s.mean_intervals[0.8]], np.quantile([-1.0, 2.0], [0.1, 0.9]))


def test_summarize_classification_spread():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]).reshape(1, 2, 1, 1, 3)
    p = hb.Predictive(None, probs, np.zeros((1, 2, 1, 1), int), None, None, None)
    s = hb.summarize(p, levels=(0.5,))
    np.testing.assert_allclose(s.probs[0, 0], [0.4, 0.4, 0.2])
    np.testing.assert_allclose(s.sd[0, 0], [0.3, 0.2, 0.1])
    assert s.label.shape == (1, 1) and s.mean_intervals is None


def test_with_query_inputs_and_errors(reg):
    post, tasks, whole = reg
    grid = hb.with_query_inputs(tasks, np.linspace(-1, 1, 9))
    assert grid.x_query.shape == (5, 9, 1) and grid.y_query.shape == (5, 9, 1) and grid.query_mask is None
    np.testing.assert_array_equal(grid.x_support, tasks.x_support)
    with pytest.raises(ValueError, match="x has shape"):
        hb.with_query_inputs(tasks, np.zeros((3, 9, 1)))
    with pytest.raises(ValueError, match="expected hbmeta.Posterior"):
        hb.sample_predictive({"theta": 1}, tasks, key=0)
    with pytest.raises(ValueError, match="expected hbmeta.TaskBatch"):
        hb.sample_predictive(post, (1, 2), key=0)
    with pytest.raises(ValueError, match="draw_chunk=0"):
        hb.sample_predictive(post, tasks, key=0, draw_chunk=0)
    with pytest.raises(ValueError, match="key is a str"):
        hb.sample_predictive(post, tasks, key="seed")
    labels = hb.make_tasks(np.zeros((2, 3, 1)), np.zeros((2, 3), int), np.zeros((2, 4, 1)), np.zeros((2, 4), int))
    with pytest.raises(ValueError, match="regression one"):
        hb.sample_predictive(post, labels, key=0)
    bad = post._replace(samples={"theta": np.zeros((1, 2, 3))})
    with pytest.raises(ValueError, match=r"samples\['theta'\] has shape"):
        hb.sample_predictive(bad, tasks, key=0)
    with pytest.raises(ValueError, match="levels"):
        hb.summarize(whole, levels=(1.0,))


def test_draws_sharing_theta_linearise_once_and_match_each_draw_alone():
    # an ensemble's tail nodes: 3 members' θ, each repeated with 4 scales of (τ, σ); blocks of 5 draws cut
    # across members, so blocks hold 2 or 3 distinct θ (padded to one shape). Each draw's task-level
    # predictive must be task_predictive at its own (θ, τ, σ).
    net = hb.mlp((1, 8, 1))
    theta = mlp_params((1, 8, 1), seed=3)
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, step_size=0.05), theta, likelihood=hb.NormalLikelihood(),
                        task_posterior=hb.TaskPosterior())
    rng = np.random.default_rng(5)
    members = np.asarray(spec.ravel(theta))[None] + 0.1 * rng.normal(size=(3, spec.num_params))
    u = np.array([0.3, 0.8, 1.5, 4.0])
    tau = np.outer([0.05, 0.1, 0.2], np.sqrt(u)).astype(np.float32)
    noise = np.outer([0.3, 0.2, 0.5], np.sqrt(u)).astype(np.float32)
    post = hb.Posterior({"theta": np.repeat(members[:, None], 4, axis=1).astype(np.float32), "tau": tau,
                         "noise": noise}, spec, "ensemble", {})
    tasks = numpy_tasks(3, 4, 6, seed=2)
    pred = hb.sample_predictive(post, tasks, key=jax.random.key(1), draw_chunk=5, task_chunk=2)
    for m in range(3):
        for k in range(4):
            alone = hb.task_predictive(spec, jnp.asarray(members[m], jnp.float32), tasks, tau=float(tau[m, k]),
                                       noise=float(noise[m, k]))
            np.testing.assert_allclose(pred.mean[m, k], alone.mean, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(pred.noise[m, k], np.sqrt(alone.var), rtol=1e-5, atol=1e-6)
    # one member's scale nodes share the mean, and their variances are in the ratio of the scales
    np.testing.assert_allclose(pred.mean[0, 0], pred.mean[0, 3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.noise[0, 3] ** 2 / pred.noise[0, 0] ** 2, u[3] / u[0], rtol=1e-4)
