"""Coverage per third of the tasks ranked by support-set spread: known answers and Monte Carlo bounds."""

import numpy as np
import pytest

import hbmeta as hb


def _tasks_and_predictive(noise_of_task, rng, *, num_tasks=60, num_points=200, scale_noise_with_task=True):
    amp = np.linspace(0.5, 5.0, num_tasks)
    ys = amp[:, None, None] * rng.normal(size=(num_tasks, 5, 1))  # support spread grows with amp
    sd_true = 0.3 * amp  # the true predictive sd of each task
    yq = sd_true[:, None, None] * rng.normal(size=(num_tasks, num_points, 1))
    x = np.zeros((num_tasks, 5, 1)), np.zeros((num_tasks, num_points, 1))
    tasks = hb.make_tasks(x[0], ys, x[1], yq)
    sd = noise_of_task(sd_true)
    mean = np.zeros((1, 1, num_tasks, num_points, 1))
    noise = np.broadcast_to(sd[None, None, :, None, None], mean.shape).copy()
    pred = hb.Predictive(mean, None, mean, noise, None, None)
    return tasks, pred


def test_a_predictive_that_follows_each_task_covers_every_third():
    rng = np.random.default_rng(0)
    tasks, pred = _tasks_and_predictive(lambda sd: sd, rng)
    cov = hb.coverage_by_spread(pred, tasks, level=0.9)
    n = 20 * 200  # points per third
    for name, value in cov.items():
        assert value == pytest.approx(0.9, abs=4 * np.sqrt(0.09 / n)), (name, value)


def test_one_global_sigma_over_covers_small_tasks_and_under_covers_large_ones():
    rng = np.random.default_rng(1)
    tasks, pred = _tasks_and_predictive(lambda sd: np.full_like(sd, sd.mean()), rng)
    cov = hb.coverage_by_spread(pred, tasks, level=0.9)
    assert cov["coverage_90_low_spread"] > 0.97
    assert cov["coverage_90_high_spread"] < 0.8
    # the overall figure hides it
    assert hb.coverage(pred.mean, pred.noise, tasks.y_query, level=0.9) == pytest.approx(
        np.mean(list(cov.values())), abs=1e-6)


def test_classification_is_refused():
    probs = np.full((1, 1, 3, 4, 2), 0.5)
    pred = hb.Predictive(None, probs, np.zeros((1, 1, 3, 4), int), None, None, None)
    tasks = hb.make_tasks(np.zeros((3, 2, 1)), np.zeros((3, 2), np.int32), np.zeros((3, 4, 1)),
                          np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError, match="regression"):
        hb.coverage_by_spread(pred, tasks)
