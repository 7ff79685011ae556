"""The NumPyro model of build_model: sites, log density against hand-computed values, validation.

The reference log densities are written out here from the model's definition
(docs/references.md, linear-Gaussian tasks): for the linear model f_θ(x) = xᵀθ with the mean-squared
inner loss, one gradient step gives φ̂ = θ + (2α/K) Xᵀ(y − Xθ).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer.util import log_density
from scipy import stats

import hbmeta as hb

D, T, K, M = 2, 6, 4, 3


def _tasks(seed=0):
    """Linear-Gaussian tasks drawn with numpy (cheaper than a jax family sample in eager mode)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, K + M, D))
    w = 1.0 + rng.standard_normal((T, D))
    y = np.einsum("tkd,td->tk", x, w)[..., None] + 0.1 * rng.standard_normal((T, K + M, 1))
    return hb.make_tasks(x[:, :K], y[:, :K], x[:, K:], y[:, K:])


def _spec(**kw):
    rule = kw.pop("rule", hb.GradientSteps(hb.linear().apply, step_size=0.1, num_steps=1))
    kw.setdefault("likelihood", hb.NormalLikelihood(noise=0.5))
    kw.setdefault("prior", hb.NormalPrior(0.5, 2.0))
    return hb.ModelSpec(rule, {"w": jnp.zeros(D)}, **kw)


def _np(*arrays):
    return [np.asarray(a, np.float64) for a in arrays]


def _adapt_one_step(theta, x, y, alpha, mask=None):
    w = np.ones(len(x)) if mask is None else np.asarray(mask, np.float64)
    resid = (y - x @ theta) * w
    return theta + (2 * alpha / w.sum()) * x.T @ resid


def _ld(model, tasks, values, **kw):
    return float(jax.jit(lambda t, v: log_density(model, (t,), kw, v)[0])(tasks, values))


def test_sites_and_shapes_without_adapted_params():
    spec = _spec(likelihood=hb.NormalLikelihood(noise_prior_scale=1.0), step_size_prior=hb.StepSizePrior())
    tr = handlers.trace(handlers.seed(hb.build_model(spec), 0)).get_trace(_tasks())
    samples = {k: v for k, v in tr.items() if v["type"] == "sample"}
    assert set(samples) == {"theta", "log_step_size", "noise", "y"}
    assert not [k for k, v in tr.items() if v["type"] == "deterministic"]  # φ̂ is never stored
    assert samples["theta"]["value"].shape == (D,)
    assert samples["noise"]["value"].shape == ()
    assert samples["y"]["fn"].batch_shape == (T, M) and samples["y"]["is_observed"]
    assert tr["tasks"]["type"] == "plate" and tr["points"]["type"] == "plate"


def test_log_density_matches_hand_computation():
    tasks = _tasks()
    spec = _spec()
    theta = np.array([0.7, -0.3])
    got = _ld(hb.build_model(spec), tasks, {"theta": jnp.asarray(theta, jnp.float32)})
    xs, ys, xq, yq = _np(tasks.x_support, tasks.y_support, tasks.x_query, tasks.y_query)
    want = stats.norm.logpdf(theta, 0.5, 2.0).sum()
    for j in range(T):
        phi = _adapt_one_step(theta, xs[j], ys[j, :, 0], 0.1)
        want += stats.norm.logpdf(yq[j, :, 0], xq[j] @ phi, 0.5).sum()
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_masks_drop_points_from_both_sets():
    tasks = _tasks()
    rng = np.random.default_rng(1)
    smask = rng.random((T, K)) < 0.6
    smask[:, 0] = True
    qmask = rng.random((T, M)) < 0.6
    masked = tasks._replace(support_mask=jnp.asarray(smask), query_mask=jnp.asarray(qmask))
    spec = _spec(likelihood=hb.NormalLikelihood(noise=0.3))
    theta = np.array([1.2, 0.4])
    got = _ld(hb.build_model(spec), masked, {"theta": jnp.asarray(theta, jnp.float32)})
    xs, ys, xq, yq = _np(tasks.x_support, tasks.y_support, tasks.x_query, tasks.y_query)
    want = stats.norm.logpdf(theta, 0.5, 2.0).sum()
    for j in range(T):
        phi = _adapt_one_step(theta, xs[j], ys[j, :, 0], 0.1, smask[j])
        keep = qmask[j]
        want += stats.norm.logpdf(yq[j, keep, 0], xq[j, keep] @ phi, 0.3).sum()
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_inferred_noise_and_step_size_enter_the_density():
    tasks = _tasks()
    spec = _spec(likelihood=hb.NormalLikelihood(noise_prior_scale=2.0),
                 step_size_prior=hb.StepSizePrior(np.log(0.05), 0.3))
    theta, sigma, log_a = np.array([0.2, 0.9]), 0.8, np.log(0.07)
    values = {"theta": jnp.asarray(theta, jnp.float32), "noise": jnp.float32(sigma),
              "log_step_size": jnp.float32(log_a)}
    got = _ld(hb.build_model(spec), tasks, values)
    xs, ys, xq, yq = _np(tasks.x_support, tasks.y_support, tasks.x_query, tasks.y_query)
    want = stats.norm.logpdf(theta, 0.5, 2.0).sum() + stats.halfnorm.logpdf(sigma, scale=2.0)
    want += stats.norm.logpdf(log_a, np.log(0.05), 0.3)
    for j in range(T):
        phi = _adapt_one_step(theta, xs[j], ys[j, :, 0], np.exp(log_a))
        want += stats.norm.logpdf(yq[j, :, 0], xq[j] @ phi, sigma).sum()
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_task_subsampling_is_scaled_and_unbiased():
    tasks = _tasks()
    spec = _spec()
    model = hb.build_model(spec)
    theta = jnp.array([0.3, 0.8])
    full = _ld(model, tasks, {"theta": theta})
    prior = float(stats.norm.logpdf(np.asarray(theta, np.float64), 0.5, 2.0).sum())
    # A partition of the tasks into subsets of size B: the scaled subsampled likelihoods average to the full one.
    B = 2
    parts = np.arange(T).reshape(-1, B)
    tr = handlers.trace(handlers.seed(handlers.substitute(model, data={"tasks": jnp.asarray(parts[1])}), 0)).get_trace(
        tasks, subsample_size=B
    )
    assert tr["y"]["scale"] == pytest.approx(T / B)
    np.testing.assert_array_equal(tr["y"]["value"], tasks.y_query[parts[1]])

    @jax.jit
    def subsampled(idx):
        sub = handlers.substitute(model, data={"tasks": idx})
        return log_density(sub, (tasks,), {"subsample_size": B}, {"theta": theta})[0]

    estimates = [float(subsampled(jnp.asarray(idx))) - prior for idx in parts]
    np.testing.assert_allclose(np.mean(estimates), full - prior, rtol=1e-5)
    assert np.std(estimates) > 0.01 * abs(full - prior)  # the subsets really differ


def test_explicit_variant_density():
    tasks = _tasks()
    tau, sigma = 0.4, 0.5
    spec = _spec(explicit_tau=tau, likelihood=hb.NormalLikelihood(noise=sigma))
    rng = np.random.default_rng(2)
    theta = np.array([0.6, -0.2])
    phi = theta + tau * rng.standard_normal((T, D))
    tr = handlers.trace(handlers.seed(hb.build_model(spec), 0)).get_trace(tasks)
    assert tr["phi"]["value"].shape == (T, 1, D)
    assert tr["y_support"]["fn"].batch_shape == (T, K)
    values = {"theta": jnp.asarray(theta, jnp.float32), "phi": jnp.asarray(phi[:, None, :], jnp.float32)}
    got = _ld(hb.build_model(spec), tasks, values)
    xs, ys, xq, yq = _np(tasks.x_support, tasks.y_support, tasks.x_query, tasks.y_query)
    want = stats.norm.logpdf(theta, 0.5, 2.0).sum() + stats.norm.logpdf(phi, theta, tau).sum()
    for j in range(T):
        want += stats.norm.logpdf(ys[j, :, 0], xs[j] @ phi[j], sigma).sum()
        want += stats.norm.logpdf(yq[j, :, 0], xq[j] @ phi[j], sigma).sum()
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_categorical_likelihood_density():
    rng = np.random.default_rng(3)
    tasks = hb.make_tasks(rng.standard_normal((4, 6, 2)), rng.integers(0, 3, (4, 6)),
                          rng.standard_normal((4, 5, 2)), rng.integers(0, 3, (4, 5)))
    net = hb.mlp((2, 3))
    params = [{"w": jnp.asarray(rng.standard_normal((2, 3)), jnp.float32),
               "b": jnp.asarray(rng.standard_normal(3), jnp.float32)}]
    rule = hb.GradientSteps(net.apply, loss="cross_entropy", step_size=0.5, num_steps=1)
    spec = hb.ModelSpec(rule, params, likelihood=hb.CategoricalLikelihood(), prior=hb.NormalPrior(0.0, 1.0))
    flat = spec.ravel(params)
    got = _ld(hb.build_model(spec), tasks, {"theta": flat})
    w, b = np.asarray(params[0]["w"], np.float64), np.asarray(params[0]["b"], np.float64)
    want = stats.norm.logpdf(np.asarray(flat, np.float64), 0.0, 1.0).sum()
    for j in range(4):
        xs, ys = np.asarray(tasks.x_support[j], np.float64), np.asarray(tasks.y_support[j])
        p = np.exp(xs @ w + b)
        p /= p.sum(1, keepdims=True)
        g = (p - np.eye(3)[ys]) / len(ys)  # d(mean cross-entropy)/d(logits)
        w_j, b_j = w - 0.5 * xs.T @ g, b - 0.5 * g.sum(0)
        logits = np.asarray(tasks.x_query[j], np.float64) @ w_j + b_j
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        want += logp[np.arange(len(logits)), np.asarray(tasks.y_query[j])].sum()
    np.testing.assert_allclose(got, want, rtol=1e-5)


def _trace(spec, tasks, **kw):
    return handlers.trace(handlers.seed(hb.build_model(spec), 0)).get_trace(tasks, **kw)


def test_likelihood_must_match_targets():
    tasks = _tasks()
    labels = tasks._replace(y_query=jnp.zeros((T, M), jnp.int32), y_support=jnp.zeros((T, K), jnp.int32))
    with pytest.raises(ValueError, match="y_query has dtype int32.*expected real targets"):
        _trace(_spec(), labels)
    with pytest.raises(ValueError, match="y_query has dtype float32.*expected integer class labels"):
        _trace(_spec(likelihood=hb.CategoricalLikelihood()), tasks)


def test_shape_and_label_checks():
    tasks = _tasks()
    wide = tasks._replace(y_query=jnp.zeros((T, M, 2)))
    with pytest.raises(ValueError, match=r"maps one task's x_query .* to shape \(3, 1\); expected \(3, 2\)"):
        _trace(_spec(), wide)
    with pytest.raises(ValueError, match="the network's apply failed"):
        _trace(_spec(), tasks._replace(x_query=jnp.zeros((T, M, 5))))
    blobs = hb.make_tasks(np.zeros((2, 3, 2)), np.zeros((2, 3), int), np.zeros((2, 3, 2)), np.zeros((2, 3), int))
    net = hb.mlp((2, 3))
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, loss="cross_entropy"),
                        [{"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}], likelihood=hb.CategoricalLikelihood())
    with pytest.raises(ValueError, match=r"y_query has labels in \[0, 7\]; expected labels in \[0, 2\]"):
        _trace(spec, blobs._replace(y_query=blobs.y_query.at[0, 0].set(7)))
    with pytest.raises(ValueError, match="subsample_size=0"):
        _trace(_spec(), tasks, subsample_size=0)
    with pytest.raises(ValueError, match="subsample_size=7"):
        _trace(_spec(), tasks, subsample_size=7)
    with pytest.raises(ValueError, match="tasks is a dict"):
        _trace(_spec(), {"x": 1})


def test_spec_rejects_bad_priors_and_step_sizes():
    with pytest.raises(ValueError, match="prior scale"):
        hb.NormalPrior(0.0, 0.0)
    with pytest.raises(ValueError, match="prior scale"):
        hb.NormalPrior(0.0, {"w": -1.0})
    with pytest.raises(ValueError, match="step_size"):
        hb.GradientSteps(hb.linear().apply, step_size=0.0)
    with pytest.raises(ValueError, match="step_size_prior scale"):
        hb.StepSizePrior(scale=-0.1)
    with pytest.raises(ValueError, match="noise"):
        hb.NormalLikelihood(noise=-1.0)
    with pytest.raises(ValueError, match="explicit_tau"):
        _spec(explicit_tau=0.0)
    with pytest.raises(ValueError, match="prior centre has tree structure"):
        _spec(prior=hb.NormalPrior(centre={"v": jnp.zeros(D)}))
    with pytest.raises(ValueError, match=r"prior centre has a leaf of shape \(3,\)"):
        _spec(prior=hb.NormalPrior(centre={"w": jnp.zeros(3)}))
    with pytest.raises(ValueError, match="prior scale has tree structure"):
        _spec(prior=hb.NormalPrior(scale={"v": 1.0}))
    with pytest.raises(ValueError, match="prior loc has a leaf of shape"):
        _spec(prior=hb.NormalPrior(loc={"w": jnp.zeros(3)}))
    with pytest.raises(ValueError, match="step_size_prior is set with explicit_tau"):
        _spec(explicit_tau=0.5, step_size_prior=hb.StepSizePrior())


def test_prior_loc_scale_per_leaf_and_centre():
    params = {"a": jnp.zeros((2, 2)), "b": jnp.zeros(3)}
    rule = hb.GradientSteps(lambda p, x: x @ p["a"] + p["b"][:2])
    prior = hb.NormalPrior(loc={"a": 1.0, "b": 2.0}, scale={"a": 0.5, "b": jnp.arange(1.0, 4.0)})
    spec = hb.ModelSpec(rule, params, prior=prior)
    loc, scale = spec.prior_loc_scale()
    np.testing.assert_array_equal(loc, [1, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(scale, [0.5, 0.5, 0.5, 0.5, 1, 2, 3])
    centre = {"a": jnp.full((2, 2), 3.0), "b": jnp.arange(3.0)}
    spec = dataclasses.replace(spec, prior=hb.NormalPrior(scale=1.0, centre=centre))
    np.testing.assert_array_equal(spec.prior_loc_scale()[0], [3, 3, 3, 3, 0, 1, 2])
