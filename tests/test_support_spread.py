"""The per-task scale h_j = ((s_j²/s̄² + κ)/(1 + κ))^p of the ensemble's task-level predictive.

Checks: the support spread s_j² is the masked variance of the support targets (numpy, by hand); the
fold choice of p is the argmax of scores recomputed by hand (k_p keeps the mean out-of-sample
variance, then the folds' mixture log-likelihood), picks a clear power when the errors grow with the
task's scale and p = 0 when they do not; the predictive with ``spread_power`` / ``spread_ref`` draws
has the same means and its standard deviations are √h_j times those without, exactly; bad powers are
refused before any work.
"""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hbmeta as hb
from hbmeta.diagnostics.diagnose import diagnostic_draws
from hbmeta.inference.fold_scores import mixture_fold_score
from hbmeta.inference.holdout import holdout_task_scale
from hbmeta.inference.spread_power import SPREAD_POWERS, fit_spread_power
from hbmeta.model.support_spread import SPREAD_FLOOR, spread_factor, support_spread


def test_support_spread_is_the_masked_variance_of_the_support_targets_averaged_over_outputs():
    rng = np.random.default_rng(0)
    ys = rng.normal(size=(6, 5, 2)) * np.array([1.0, 3.0])
    mask = rng.uniform(size=(6, 5)) < 0.7
    mask[0] = [True, False, False, False, False]  # one valid point: spread 0
    got = np.asarray(support_spread(ys, mask))
    for j in range(6):
        keep = ys[j][mask[j]]
        want = 0.0 if len(keep) < 2 else np.mean(np.var(keep, axis=0))
        assert math.isclose(got[j], want, rel_tol=1e-5, abs_tol=1e-6)
    np.testing.assert_allclose(support_spread(ys), np.mean(np.var(ys, axis=1), axis=-1), rtol=1e-5)
    assert float(spread_factor(7.0, 0.0, 2.0)) == 1.0
    assert math.isclose(float(spread_factor(7.0, 0.5, 2.0)), math.sqrt((3.5 + SPREAD_FLOOR) / (1 + SPREAD_FLOOR)),
                        rel_tol=1e-6)


def _members(rng, scale_errors):
    """Four members' out-of-sample predictions on 80 tasks whose scale a_j varies; errors ∝ a_j or not."""
    amp = rng.uniform(0.3, 3.0, 80)
    y = amp[:, None, None] * rng.normal(size=(80, 10, 1))
    sd = 0.4 * (amp[:, None, None] if scale_errors else np.mean(amp))
    mu = y + sd * rng.normal(size=(4, 80, 10, 1))
    out = np.zeros((4, 80))
    out[[0, 1], ::2] = 1
    out[[2, 3], 1::2] = 1
    return amp**2, mu, y, out


def test_the_folds_choose_the_power_that_scores_best_and_it_keeps_the_mean_variance():
    rng = np.random.default_rng(1)
    s2, mu, y, out = _members(rng, scale_errors=True)
    var = np.full(mu.shape, 0.5)
    w = np.ones((80, 10))
    fit = fit_spread_power(mu, var, y, out, w, s2, 0.05, tails=False)
    assert set(fit.scores) == set(SPREAD_POWERS) and fit.power == max(fit.scores, key=fit.scores.get)
    assert fit.power >= 0.75 and fit.scores[fit.power] > fit.scores[0.0] + 0.05
    assert math.isclose(fit.ref, float(np.mean(s2)), rel_tol=1e-9)
    c = out[:, :, None, None] * w[None, :, :, None]
    for p, score in fit.scores.items():
        h = ((s2 / s2.mean() + SPREAD_FLOOR) / (1 + SPREAD_FLOOR)) ** p
        k = np.sum(c * var) / np.sum(c * var * h[None, :, None, None])
        scaled = var * k * h[None, :, None, None]
        assert math.isclose(np.sum(c * scaled), np.sum(c * var), rel_tol=1e-6)  # the mean variance is kept
        assert math.isclose(score, mixture_fold_score(mu, scaled, y, out, w, np.ones(1), 0.05), rel_tol=1e-5)
        if p == fit.power:
            assert math.isclose(fit.norm, k, rel_tol=1e-5)
    # errors of one size for every task: one scale wins
    s2, mu, y, out = _members(np.random.default_rng(2), scale_errors=False)
    flat = fit_spread_power(mu, np.full(mu.shape, 0.5), y, out, w, s2, 0.05, tails=False)
    assert flat.power == 0.0 and flat.norm == 1.0
    with pytest.raises(ValueError, match="powers=\\(0.5,\\); expected powers p ≥ 0 that include 0"):
        fit_spread_power(mu, np.full(mu.shape, 0.5), y, out, w, s2, 0.05, powers=(0.5,))


def test_the_predictive_scales_each_tasks_variance_by_its_factor_and_keeps_the_means():
    net = hb.mlp((1, 8, 1))
    tasks = hb.Sinusoid(num_support=5, num_query=6).sample(jax.random.key(0), 12)
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, step_size=0.01), net.init(jax.random.key(1)),
                        task_posterior=hb.TaskPosterior())
    post = hb.run_ensemble(spec, tasks, key=1, num_members=4, init=net.init, num_iterations=20, meta_batch_size=4,
                           progress=False, spread_scale=False)
    assert "spread_power" not in post.samples
    shape = post.samples["tau"].shape
    scaled = post._replace(samples={**post.samples, "spread_power": np.full(shape, 0.7, np.float32),
                                    "spread_ref": np.full(shape, 2.5, np.float32)})
    base = hb.sample_predictive(post, tasks, key=3)
    got = hb.sample_predictive(scaled, tasks, key=3)
    h = np.asarray(spread_factor(support_spread(tasks.y_support), 0.7, 2.5))
    assert h.min() < 0.8 and h.max() > 1.2  # the check below is not vacuous
    # scaling τ² and σ² together leaves the mean unchanged in exact arithmetic; float32 solves of a nearly
    # singular τ²K + σ²I leave rounding of a few 1e-4 of the mean's size
    scale = float(np.max(np.abs(base.mean)))
    np.testing.assert_allclose(got.mean, base.mean, rtol=0, atol=1e-3 * scale)
    np.testing.assert_allclose(got.noise, base.noise * np.sqrt(h)[None, None, :, None, None], rtol=1e-3)
    np.testing.assert_allclose(got.y - got.mean, (base.y - base.mean) * np.sqrt(h)[None, None, :, None, None],
                               rtol=1e-3, atol=1e-3 * scale)
    # p and s̄² are fitted constants: diagnose neither checks nor plots them (ArviZ would divide 0 by 0)
    assert not {"spread_power", "spread_ref"} & set(diagnostic_draws(scaled, tasks=tasks))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hb.diagnose(scaled, tasks=tasks)
    with pytest.raises(ValueError, match="spread_scale='yes'; expected True or False"):
        hb.run_ensemble(spec, tasks, key=1, num_members=4, init=net.init, num_iterations=2, spread_scale="yes")


def test_bad_spread_powers_are_refused_before_any_fit():
    net = hb.mlp((1, 4, 1))
    tasks = hb.Sinusoid(num_support=5, num_query=5).sample(jax.random.key(0), 8)
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, step_size=0.01), net.init(jax.random.key(1)),
                        task_posterior=hb.TaskPosterior())
    theta = np.zeros((4, spec.num_params), np.float32)
    index = np.arange(8).reshape(4, 2)
    for bad in ((0.5,), (0.0, -1.0), ()):
        with pytest.raises(ValueError, match="spread_powers=.*expected powers p ≥ 0 that include 0"):
            holdout_task_scale(spec, jnp.asarray(theta), tasks, index, spread_powers=bad)
