"""The classification ensemble's scale c on every τ_m² (hbmeta.inference.class_scale): the estimates of the
M-member mixture's Brier score and reliability gap are exact when every member is out of sample and unbiased
(within Monte Carlo error) from two or three out-of-sample members per task; c is the argmin of the Brier
estimates unless the gap there is over two standard errors from zero, then the c whose gap is nearest zero."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hbmeta as hb
from hbmeta.inference.class_scale import CLASS_SCALES, RELIABILITY_Z, choose_class_scale, mixture_brier, reliability_gaps
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


def _two_or_three_out(seed, num_members=8, num_tasks=3000):
    """Eight members on many one-point tasks, two or three of them out of sample on each task."""
    rng = np.random.default_rng(seed)
    probs, y = _members(rng, num_members, num_tasks, 1)
    out = np.zeros((num_members, num_tasks))
    for j in range(num_tasks):
        out[rng.choice(num_members, 2 + j % 2, replace=False), j] = 1.0
    return probs, y, out, num_tasks


def test_from_two_or_three_members_a_task_the_estimate_is_unbiased():
    probs, y, out, num_tasks = _two_or_three_out(1)
    # per task: the estimate from its out-of-sample members against the 8-member mixture's own Brier score
    est = np.array([mixture_brier(probs[:, j:j + 1], y[j:j + 1], out[:, j:j + 1], np.ones((1, 1)))
                    for j in range(num_tasks)])
    exact = _brier(probs.mean(0), y)[:, 0]
    diff = est - exact
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(num_tasks)
    # and the plain out-of-sample mixture (the members' spread not credited) is biased high: why the identity
    plain = _brier((probs * out[..., None, None]).sum(0) / out.sum(0)[:, None, None], y)[:, 0]
    assert (plain - exact).mean() > 5 * (plain - exact).std() / math.sqrt(num_tasks)


def _gap(p, y):
    """⟨e_y − p, p⟩ per point, the reliability gap of the predictive p."""
    onehot = np.eye(p.shape[-1])[y]
    return np.sum((onehot - p) * p, -1)


def test_with_every_member_out_of_sample_the_gap_is_the_mixtures_own_gap():
    rng = np.random.default_rng(4)
    probs, y = _members(rng, 5, 7, 4)
    w = rng.random((7, 4)) + 0.5
    exact = np.sum(_gap(probs.mean(0), y) * w, -1) / np.sum(w, -1)
    np.testing.assert_allclose(reliability_gaps(probs, y, np.ones((5, 7)), w), exact, rtol=1e-9)
    assert abs(exact).max() > 0.01  # not vacuous


def test_from_two_or_three_members_a_task_the_gap_is_unbiased_and_tasks_with_one_are_left_out():
    probs, y, out, num_tasks = _two_or_three_out(5)
    out[:, -1] = 0.0
    out[0, -1] = 1.0  # one member out on the last task: no pair, so no estimate
    est = reliability_gaps(probs, y, out, np.ones((num_tasks, 1)))
    assert est.shape == (num_tasks - 1,)
    diff = est - _gap(probs.mean(0), y)[:-1, 0]
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(num_tasks)
    # the plain mixture of the out-of-sample members is less flat than all eight: biased
    plain = _gap((probs * out[..., None, None]).sum(0) / np.maximum(out.sum(0), 1)[:, None, None], y)[:-1, 0]
    plain_diff = plain - _gap(probs.mean(0), y)[:-1, 0]
    assert abs(plain_diff.mean()) > 5 * plain_diff.std() / math.sqrt(num_tasks)


@pytest.mark.parametrize("gap_at_best, expected", [((0.010, 0.006), (1.0, "mixture Brier")),      # 1.7 s.e.
                                                   ((-0.011, 0.006), (1.0, "mixture Brier")),
                                                   ((0.013, 0.006), (0.5, "mixture reliability")),  # 2.2 s.e.
                                                   ((-0.013, 0.006), (2.0, "mixture reliability"))])
def test_the_brier_choice_moves_only_when_its_gap_is_over_two_standard_errors(gap_at_best, expected):
    scores = {0.25: -0.36, 0.5: -0.34, 1.0: -0.33, 2.0: -0.35}
    gaps = {0.25: (-0.02, 0.006), 0.5: (0.004, 0.006), 1.0: gap_at_best, 2.0: (0.03, 0.006)}  # rising in c
    if gap_at_best[0] < 0:  # an over-confident mixture: the c above moves it back
        gaps = {0.25: (-0.04, 0.006), 0.5: (-0.03, 0.006), 1.0: gap_at_best, 2.0: (-0.002, 0.006)}
    assert RELIABILITY_Z == 2.0
    assert choose_class_scale(scores, gaps) == expected
    assert choose_class_scale({1.0: -0.3}, {1.0: (0.5, 0.001)}) == (1.0, "mixture Brier")  # one c: nothing to move to


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
    assert sorted(fit.scale_scores) == sorted(CLASS_SCALES) == sorted(fit.reliability_gaps)
    assert (fit.scale, fit.scale_rule) == choose_class_scale(fit.scale_scores, fit.reliability_gaps)
    np.testing.assert_allclose(fit.tau, own.tau * math.sqrt(fit.scale), rtol=1e-6)
    out = out_of_sample_mask(index, 4, 16)
    w = np.ones(tasks.x_query.shape[:2])
    for c in (0.25, 1.0, 4.0):  # each score and gap recomputed from the members' predictives at τ_m √c
        probs = np.stack([np.asarray(hb.task_predictive(spec, jnp.asarray(theta[m]), tasks,
                                                        tau=float(own.tau[m] * math.sqrt(c))).probs) for m in range(4)])
        assert fit.scale_scores[c] == pytest.approx(-mixture_brier(probs, tasks.y_query, out, w), rel=1e-5)
        g = reliability_gaps(probs, tasks.y_query, out, w)
        assert fit.reliability_gaps[c][0] == pytest.approx(g.mean(), rel=1e-4, abs=1e-6)
        assert fit.reliability_gaps[c][1] == pytest.approx(g.std(ddof=1) / math.sqrt(len(g)), rel=1e-4)


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
    assert (fit["scale"], fit["scale_rule"]) == choose_class_scale(fit["scale_scores"], fit["reliability_gaps"])
    assert fit["scale"] != 1.0  # the check below is not vacuous
    np.testing.assert_allclose(scaled.samples["tau"][:, 0], own.samples["tau"][:, 0] * math.sqrt(fit["scale"]), rtol=1e-6)
    np.testing.assert_array_equal(scaled.samples["theta"], own.samples["theta"])  # the same members
    assert scaled.settings["class_scale"] is True and own.settings["class_scale"] is False
    with pytest.raises(ValueError, match="class_scale='no'; expected True or False"):
        hb.run_ensemble(spec, tasks, **kw, class_scale="no")


def test_the_summary_says_which_rule_chose_c_and_the_gap_that_moved_it():
    from hbmeta.run.report import _class_rule

    fold = {"scale_rule": "mixture reliability", "scale_scores": {"0.5": -0.34, "1.0": -0.33, "2.0": -0.35},
            "reliability_gaps": {"0.5": [0.001, 0.007], "1.0": [-0.0157, 0.0066], "2.0": [-0.03, 0.007]}}
    line = _class_rule(fold)
    assert "at c = 1," in line and "over-confident by 0.016 ± 0.007" in line
    assert _class_rule({"scale_rule": "mixture Brier"}) == " (the lowest Brier score of the mixture estimated on the folds)"
    assert _class_rule({"scale_rule": "fixed"}) == ""
