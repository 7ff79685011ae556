"""The closed-form posterior of linear-Gaussian tasks against the model's own log density."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import log_density

import hbmeta as hb


def _linear_tasks(num_tasks, dim, *, num_support=5, num_query=6, noise=0.2, seed=0, masks=False):
    """Linear-Gaussian tasks made with numpy (y = xᵀw + ε, w ~ N(0, I))."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(num_tasks, dim, 1))
    xs, xq = rng.normal(size=(num_tasks, num_support, dim)), rng.normal(size=(num_tasks, num_query, dim))
    ys = xs @ w + noise * rng.normal(size=(num_tasks, num_support, 1))
    yq = xq @ w + noise * rng.normal(size=(num_tasks, num_query, 1))
    sm = qm = None
    if masks:
        sm = np.ones((num_tasks, num_support), bool)
        sm[0, 3:] = False
        sm[2, 4] = False
        qm = np.ones((num_tasks, num_query), bool)
        qm[1, 2:] = False
    return hb.make_tasks(xs, ys, xq, yq, support_mask=sm, query_mask=qm)


@pytest.mark.parametrize("num_steps, masks", [(0, False), (1, False), (3, True)])
def test_exact_posterior_is_the_mode_and_curvature_of_the_model(x64, num_steps, masks):
    """Gradient zero at the mean and −Hessian⁻¹ = covariance of the NumPyro model's log density (float64)."""
    tasks = _linear_tasks(7, 3, masks=masks)
    loc, scale = jnp.array([0.3, -0.2, 0.0]), jnp.array([0.7, 1.0, 1.5])
    spec = hb.ModelSpec(hb.GradientSteps(hb.linear().apply, step_size=0.1, num_steps=num_steps),
                        {"w": jnp.zeros(3)}, prior=hb.NormalPrior(loc={"w": loc}, scale={"w": scale}),
                        likelihood=hb.NormalLikelihood(noise=0.5))
    model = hb.build_model(spec)
    exact = hb.linear_gaussian_posterior(tasks, step_size=0.1, num_steps=num_steps, noise=0.5,
                                         prior_loc=loc, prior_scale=scale)

    def logp(theta):
        return log_density(model, (tasks,), {}, {"theta": theta})[0]

    mean = jnp.asarray(exact.mean)
    assert float(jnp.max(jnp.abs(jax.jit(jax.grad(logp))(mean)))) < 1e-9
    hessian = np.asarray(jax.jit(jax.hessian(logp))(mean))
    np.testing.assert_allclose(-np.linalg.inv(hessian), exact.cov, rtol=1e-9, atol=1e-12)
    assert np.all(exact.sd > 0) and exact.mean.dtype == np.float64


def test_more_data_shrinks_the_posterior_toward_the_prior_free_answer():
    few = _linear_tasks(5, 2, num_support=10, num_query=10, noise=0.1, seed=1)
    many = _linear_tasks(200, 2, num_support=10, num_query=10, noise=0.1, seed=1)
    a = hb.linear_gaussian_posterior(few, step_size=0.1, noise=0.5)
    b = hb.linear_gaussian_posterior(many, step_size=0.1, noise=0.5)
    assert np.all(b.sd < a.sd / 3)


def test_gaussian_distance_matches_monte_carlo_error():
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.5], [0.5, 2.0]])
    g = hb.GaussianPosterior(np.array([1.0, -1.0]), cov)
    draws = rng.multivariate_normal(g.mean, cov, size=10000)
    d = hb.gaussian_distance(draws, g)
    assert d["max_mean_diff_sd"] < 4 / np.sqrt(10000) * 2 and d["num_draws"] == 10000
    assert 0.97 < d["sd_ratio_min"] <= d["sd_ratio_max"] < 1.03
    shifted = hb.gaussian_distance(draws + np.sqrt(np.diag(cov)), g)
    assert abs(shifted["max_mean_diff_sd"] - 1.0) < 0.05
    wide = hb.gaussian_distance(g.mean + 2 * (draws - g.mean), g)
    assert abs(wide["sd_ratio_min"] - 2.0) < 0.06


def test_bad_inputs_raise_before_any_work():
    tasks = _linear_tasks(3, 2)
    with pytest.raises(ValueError, match="noise=0; expected a positive number"):
        hb.linear_gaussian_posterior(tasks, step_size=0.1, noise=0)
    with pytest.raises(ValueError, match="step_size=-1; expected a positive number"):
        hb.linear_gaussian_posterior(tasks, step_size=-1, noise=1.0)
    with pytest.raises(ValueError, match=r"prior_scale has shape \(3,\); expected a scalar or \(2,\)"):
        hb.linear_gaussian_posterior(tasks, step_size=0.1, noise=1.0, prior_scale=np.ones(3))
    with pytest.raises(ValueError, match="expected hbmeta.TaskBatch"):
        hb.linear_gaussian_posterior("tasks", step_size=0.1, noise=1.0)
    labels = np.zeros((2, 25), np.int32)
    blobs = hb.make_tasks(np.zeros((2, 5, 2)), labels[:, :5], np.zeros((2, 25, 2)), labels)
    with pytest.raises(ValueError, match=r"y_query has shape \(2, 25\); expected \(T, M, 1\)"):
        hb.linear_gaussian_posterior(blobs, step_size=0.1, noise=1.0)
    g = hb.GaussianPosterior(np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match=r"draws has shape \(1, 2\); expected \(N, 2\) with N >= 2"):
        hb.gaussian_distance(np.zeros((1, 2)), g)
