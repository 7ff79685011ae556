"""``to_netcdf`` writes, block by block, the file that ``save_netcdf(to_arviz(...))`` writes from memory: the same
groups, dims and values (bit for bit), for regression and classification, masks, the task-level option's per-point
sd, blocks that straddle chains; and without ever holding the predictive or the log-likelihood whole."""

import os
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hbmeta as hb
from hbmeta.diagnostics.arviz import _group, _group_names


def _regression(num_tasks=7, seed=0, masked=True):
    rng = np.random.default_rng(seed)
    w = rng.normal(0.5, 0.3, size=(num_tasks, 2, 1))
    xs, xq = rng.normal(size=(num_tasks, 4, 2)), rng.normal(size=(num_tasks, 6, 2))
    qm = None
    if masked:
        qm = np.ones((num_tasks, 6), bool)
        qm[1, 4:] = False
        qm[5, 1] = False
    return hb.make_tasks(xs, xs @ w + 0.3 * rng.normal(size=(num_tasks, 4, 1)),
                         xq, xq @ w + 0.3 * rng.normal(size=(num_tasks, 6, 1)), query_mask=qm)


def _posterior(spec, chains, draws, *, extra=None, seed=1):
    rng = np.random.default_rng(seed)
    theta = (spec.ravel(spec.params) + 0.2 * rng.normal(size=(chains, draws, spec.num_params))).astype(np.float32)
    samples = {"theta": theta, **(extra or {})}
    stats = {"diverging": rng.random((chains, draws)) < 0.1, "accept_prob": rng.random((chains, draws))}
    return hb.Posterior(samples, spec, "nuts", {"num_chains": chains}, stats)


def _assert_same_file(a, b):
    da, db = hb.load_netcdf(a), hb.load_netcdf(b)
    assert sorted(_group_names(da)) == sorted(_group_names(db))
    assert "posterior_predictive" in _group_names(db) and "log_likelihood" in _group_names(db)
    for name in _group_names(da):
        ga, gb = _group(da, name), _group(db, name)
        assert sorted(ga.data_vars) == sorted(gb.data_vars), name
        for var in ga.data_vars:
            assert ga[var].dims == gb[var].dims, (name, var)
            assert ga[var].dtype == gb[var].dtype, (name, var)
            np.testing.assert_array_equal(ga[var].values, gb[var].values, err_msg=f"{name}/{var}")
        for coord in ga.coords:
            np.testing.assert_array_equal(ga[coord].values, gb[coord].values)
    assert dict(da.attrs) == dict(db.attrs)


LINEAR = hb.ModelSpec(hb.GradientSteps(hb.linear().apply, step_size=0.1), {"w": jnp.zeros(2)},
                      likelihood=hb.NormalLikelihood())


@pytest.mark.parametrize("given", [False, True], ids=["sampled-in-blocks", "predictive-given"])
def test_regression_file_equals_the_in_memory_one(tmp_path, given):
    tasks = _regression()
    post = _posterior(LINEAR, 2, 7, extra={"noise": np.random.default_rng(2).uniform(0.3, 0.6, (2, 7))})
    reference = tasks.take(np.arange(2))
    # blocks of 5 flat draws straddle the two chains of 7. (XLA may round the last bit of a block's outputs
    # differently for other block shapes, so the in-memory predictive is sampled with the same ones.)
    pred = hb.sample_predictive(post, tasks, key=jax.random.split(jax.random.key(5))[0], draw_chunk=5, task_chunk=3)
    hb.save_netcdf(hb.to_arviz(post, tasks, reference=reference, key=5, predictive=pred), tmp_path / "memory.nc")
    small = hb.to_netcdf(post, tasks, tmp_path / "stream.nc", reference=reference, key=5, draw_chunk=5,
                         task_chunk=3, predictive=pred if given else None)
    _assert_same_file(tmp_path / "memory.nc", tmp_path / "stream.nc")
    assert "posterior_predictive" not in _group_names(small) and "posterior" in _group_names(small)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []  # written under a temporary name


def test_classification_and_the_task_level_option(tmp_path):
    rng = np.random.default_rng(3)
    xs, xq = rng.normal(size=(5, 6, 2)), rng.normal(size=(5, 4, 2))
    tasks = hb.make_tasks(xs, rng.integers(0, 3, (5, 6)), xq, rng.integers(0, 3, (5, 4)))
    net = hb.mlp((2, 3))
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, loss="cross_entropy", step_size=0.1), net.init(jax.random.key(0)),
                        likelihood=hb.CategoricalLikelihood())
    post = _posterior(spec, 3, 4)
    pred = hb.sample_predictive(post, tasks, key=jax.random.split(jax.random.key(1))[0], draw_chunk=5, task_chunk=2)
    hb.save_netcdf(hb.to_arviz(post, tasks, key=1, predictive=pred), tmp_path / "memory.nc")
    hb.to_netcdf(post, tasks, tmp_path / "stream.nc", key=1, draw_chunk=5, task_chunk=2)
    _assert_same_file(tmp_path / "memory.nc", tmp_path / "stream.nc")

    # regression with the linearised task posterior: a per-point predictive sd, NaN at masked points
    task_level = hb.ModelSpec(LINEAR.rule, LINEAR.params, likelihood=hb.NormalLikelihood(noise=0.4),
                              task_posterior=hb.TaskPosterior(tau=0.7))
    tasks = _regression(seed=4)
    post = _posterior(task_level, 2, 3)
    pred = hb.sample_predictive(post, tasks, key=jax.random.split(jax.random.key(2))[0], draw_chunk=4, task_chunk=4)
    hb.save_netcdf(hb.to_arviz(post, tasks, key=2, predictive=pred), tmp_path / "memory-tl.nc")
    hb.to_netcdf(post, tasks, tmp_path / "stream-tl.nc", key=2, draw_chunk=4, task_chunk=4)
    _assert_same_file(tmp_path / "memory-tl.nc", tmp_path / "stream-tl.nc")


def test_the_predictive_is_never_held_whole(tmp_path):
    """400 draws × 300 tasks × 50 points: y alone is 24 MB in float32 (the log-likelihood's float64
    temporaries five times more); numpy's allocations while writing stay under 6 MB."""
    tasks = _regression(num_tasks=300, seed=5, masked=False)
    rng = np.random.default_rng(6)
    xq = rng.normal(size=(300, 50, 2))
    tasks = tasks._replace(x_query=jnp.asarray(xq, jnp.float32), y_query=jnp.zeros((300, 50, 1), jnp.float32))
    post = _posterior(LINEAR, 2, 200, extra={"noise": np.full((2, 200), 0.5, np.float32)})
    hb.to_netcdf(post, tasks.take(np.arange(2)), tmp_path / "warm.nc", key=0)  # compile first
    tracemalloc.start()
    try:
        hb.to_netcdf(post, tasks, tmp_path / "big.nc", key=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full = 4 * 400 * 300 * 50
    assert peak < 6e6 < full, (peak, full)
    data = hb.load_netcdf(tmp_path / "big.nc")
    y = data.posterior_predictive["y"].values
    assert y.shape == (2, 200, 300, 50, 1) and np.isfinite(y).all()
    ll = data.log_likelihood["y"].values
    assert ll.shape == (2, 200, 300) and np.isfinite(ll).all()


def test_bad_arguments_are_named_before_any_file_is_written(tmp_path):
    tasks = _regression()
    post = _posterior(LINEAR, 1, 2, extra={"noise": np.full((1, 2), 0.5)})
    with pytest.raises(ValueError, match="draw_chunk"):
        hb.to_netcdf(post, tasks, tmp_path / "a.nc", draw_chunk=0)
    wrong = hb.sample_predictive(post, tasks.take(np.arange(3)), key=0)
    with pytest.raises(ValueError, match="predictive has y of shape"):
        hb.to_netcdf(post, tasks, tmp_path / "a.nc", predictive=wrong)
    with pytest.raises(ValueError, match="tasks is a str"):
        hb.to_netcdf(post, "tasks", tmp_path / "a.nc")
    assert os.listdir(tmp_path) == []
