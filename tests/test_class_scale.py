"""The classification ensemble's scale c on every τ_m² (hbmeta.inference.class_scale.mixture_brier): the estimate of
the M-member mixture's Brier score is exact when every member is out of sample, unbiased (within Monte Carlo
error) from two or three out-of-sample members per task, and c is the argmin of the estimates, each recomputed."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hbmeta as hb
from hbmeta.inference.class_scale import CLASS_SCALES, mixture_brier
from hbmeta.inference.ensemble import holdout_blocks
from hbmeta.inference.holdout import holdout_task_scale, out_of_sample_mask


def _members(rng, num_members, num_tasks, num_points, k=3, spread=1.0):
    """Members' class probabilities around a task's true logits (independent member offsets), and labels."""
    truth = rng.normal(0.0, 1.5, (num_tasks, num_points, k))
    logits = truth[None] + rng.normal(0.0, spread, (num_members, num_tasks, num_points, k))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    p_true = np.exp(truth) / np.exp(truth).sum(-1, keepdims=True)
    y = (rng.random((num_tasks, num_points, 1)) > np.cumsum(p_true, -1)).sum(-1)
    return probs, y


def _brier(p, y):
    return np.sum((np.eye(p.shape[-1])[y] - p) ** 2, -1)


def test_with_every_member_out_of_sample_the_estimate_is_the_mixtures_brier_score():
    rng = np.random.default_rng(0)
    probs, y = _members(rng, 5, 7, 4)
    w = rng.random((7, 4)) + 0.5
    exact = np.sum(_brier(probs.mean(0), y) * w) / np.sum(w)
    assert mixture_brier(probs, y, np.ones((5, 7)), w) == pytest.approx(exact, rel=1e-5)


def test_from_two_or_three_members_a_task_the_estimate_is_unbiased():
    rng = np.random.default_rng(1)
    num_members, num_tasks = 8, 3000
    probs, y = _members(rng, num_members, num_tasks, 1)
    out = np.zeros((num_members, num_tasks))
    for j in range(num_tasks):
        out[rng.choice(num_members, 2 + j % 2, replace=False), j] = 1.0
    # per task: the estimate from its out-of-sample members against the 8-member mixture's own Brier score
    est = np.array([mixture_brier(probs[:, j:j + 1], y[j:j + 1], out[:, j:j + 1], np.ones((1, 1)))
                    for j in range(num_tasks)])
    exact = _brier(probs.mean(0), y)[:, 0]
    diff = est - exact
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(num_tasks)
    # and the plain out-of-sample mixture (the members' spread not credited) is biased high: why the identity
    plain = _brier((probs * out[..., None, None]).sum(0) / out.sum(0)[:, None, None], y)[:, 0]
    assert (plain - exact).mean() > 5 * (plain - exact).std() / math.sqrt(num_tasks)


def _blobs_ensemble():
    net = hb.mlp((2, 16, 3))
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, loss="cross_entropy", step_size=0.1), net.init(jax.random.key(0)),
                        likelihood=hb.CategoricalLikelihood(), task_posterior=hb.TaskPosterior())
    tasks = hb.GaussianBlobs(num_classes=3, shots=2, query_shots=3, dim=2).sample(jax.random.key(1), 16)
    theta = jnp.stack([spec.ravel(net.init(k)) for k in jax.random.split(jax.random.key(2), 4)])
    _, holdout_index = holdout_blocks(jax.random.key(3), 16, 4, "folds")
    return spec, tasks, np.asarray(theta), np.asarray(holdout_index)


def test_the_classification_scale_is_the_argmin_of_the_estimated_mixture_brier_scores():
    spec, tasks, theta, index = _blobs_ensemble()
    own = holdout_task_scale(spec, theta, tasks, index, class_scales=(1.0,))
    assert own.scale == 1.0 and own.scale_rule == "fixed" and own.noise is None
    fit = holdout_task_scale(spec, theta, tasks, index)
    assert fit.scale_rule == "mixture Brier" and sorted(fit.scale_scores) == sorted(CLASS_SCALES)
    assert fit.scale == max(fit.scale_scores, key=fit.scale_scores.get)
    np.testing.assert_allclose(fit.tau, own.tau * math.sqrt(fit.scale), rtol=1e-6)
    out = out_of_sample_mask(index, 4, 16)
    for c in (0.25, 1.0, 4.0):  # each score recomputed from the members' predictives at τ_m √c
        probs = np.stack([np.asarray(hb.task_predictive(spec, jnp.asarray(theta[m]), tasks,
                                                        tau=float(own.tau[m] * math.sqrt(c))).probs) for m in range(4)])
        assert fit.scale_scores[c] == pytest.approx(-mixture_brier(probs, tasks.y_query, out, np.ones(tasks.x_query.shape[:2])),
                                                    rel=1e-5)


@pytest.mark.parametrize("bad", [(0.5, 2.0), (-1.0, 1.0), ()])
def test_bad_class_scales_are_refused_before_any_fit(bad):
    spec, tasks, theta, index = _blobs_ensemble()
    with pytest.raises(ValueError, match="class_scales=.*expected factors c > 0 that include 1.0"):
        holdout_task_scale(spec, theta, tasks, index, class_scales=bad)


def test_run_ensemble_applies_the_scale_to_its_draws_and_class_scale_false_keeps_the_members_own_fits():
    net = hb.mlp((2, 16, 3))
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, loss="cross_entropy", step_size=0.1), net.init(jax.random.key(0)),
                        likelihood=hb.CategoricalLikelihood(), task_posterior=hb.TaskPosterior())
    tasks = hb.GaussianBlobs(num_classes=3, shots=2, query_shots=3, dim=2).sample(jax.random.key(1), 16)
    kw = dict(key=2, num_members=4, init=net.init, num_iterations=20, meta_batch_size=4, progress=False)
    scaled, own = (hb.run_ensemble(spec, tasks, **kw, class_scale=flag) for flag in (True, False))
    fit, own_fit = scaled.info["holdout_noise"], own.info["holdout_noise"]
    assert own_fit["scale"] == 1.0 and own_fit["scale_rule"] == "fixed"
    assert fit["scale_rule"] == "mixture Brier" and fit["scale"] == max(fit["scale_scores"], key=fit["scale_scores"].get)
    assert fit["scale"] != 1.0  # the check below is not vacuous
    np.testing.assert_allclose(scaled.samples["tau"][:, 0], own.samples["tau"][:, 0] * math.sqrt(fit["scale"]), rtol=1e-6)
    np.testing.assert_array_equal(scaled.samples["theta"], own.samples["theta"])  # the same members
    assert scaled.settings["class_scale"] is True and own.settings["class_scale"] is False
    with pytest.raises(ValueError, match="class_scale='no'; expected True or False"):
        hb.run_ensemble(spec, tasks, **kw, class_scale="no")
