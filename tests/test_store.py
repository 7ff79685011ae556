"""Task stores: tasks written to memory-mapped .npy files part by part read back exactly, row by row; SVI and MAML
over a store equal SVI and MAML over the same tasks generated on the fly; damaged stores are named, never half-read."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hbmeta as hb


def _masked_classification(num_tasks, seed=0):
    rng = np.random.default_rng(seed)
    sm = rng.random((num_tasks, 6)) < 0.8
    sm[:, 0] = True
    return hb.make_tasks(rng.normal(size=(num_tasks, 6, 2)).astype(np.float32), rng.integers(0, 3, (num_tasks, 6)),
                         rng.normal(size=(num_tasks, 4, 2)).astype(np.float32), rng.integers(0, 3, (num_tasks, 4)),
                         support_mask=sm, query_mask=np.ones((num_tasks, 4), bool))


def test_a_store_written_in_parts_reads_back_each_task_exactly(tmp_path):
    tasks = _masked_classification(23)
    parts = (tasks.take(slice(a, b)) for a, b in [(0, 10), (10, 11), (11, 23)])  # a generator: never a list
    store = hb.save_task_store(tmp_path / "store", parts)
    assert store.num_tasks == 23 and not store.regression
    assert sorted(os.listdir(tmp_path)) == ["store"]  # nothing left under a temporary name
    index = jnp.array([22, 0, 10, 10, 5])
    got = store.take(index)
    want = tasks.take(np.asarray(index))
    for name in hb.TaskBatch._fields:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
    # under jit and vmap too (a host callback reads the rows)
    twice = jax.jit(jax.vmap(lambda i: store.take(i).y_query))(jnp.array([[1, 2], [3, 4]]))
    np.testing.assert_array_equal(np.asarray(twice), np.asarray(tasks.y_query)[[[1, 2], [3, 4]]])
    full = hb.open_task_store(tmp_path / "store").materialise()
    np.testing.assert_array_equal(np.asarray(full.support_mask), np.asarray(tasks.support_mask))
    with pytest.raises(ValueError, match=r"index holds 23; expected task numbers in \[0, 23\)"):
        store.take(jnp.array([23]))


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    net = hb.mlp((1, 8, 1))
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, step_size=0.05), net.init(jax.random.key(0)),
                        likelihood=hb.NormalLikelihood(noise=0.5))
    generated = hb.Sinusoid(num_support=5, num_query=5).generated(jax.random.key(1), 40)
    tasks = generated.materialise()
    store = hb.save_task_store(tmp_path_factory.mktemp("s") / "store", [tasks.take(slice(0, 25)),
                                                                      tasks.take(slice(25, 40))])
    return net, spec, generated, store


def test_svi_and_maml_over_a_store_equal_them_over_the_same_tasks_generated(setting):
    net, spec, generated, store = setting
    assert store.regression
    kw = dict(key=jax.random.key(2), num_steps=60, num_draws=5, subsample_size=8, progress=False)
    a, b = hb.run_svi(spec, store, **kw), hb.run_svi(spec, generated, **kw)
    np.testing.assert_allclose(a.info["losses"], b.info["losses"], rtol=1e-5)
    np.testing.assert_allclose(a.samples["theta"], b.samples["theta"], rtol=1e-5, atol=1e-6)
    assert a.info["losses"][-20:].mean() < a.info["losses"][:5].mean()  # and it is fitting
    kw = dict(rule=spec.rule, key=jax.random.key(3), num_iterations=20, meta_batch_size=10, progress=False)
    m_store = hb.train_maml(net.init(jax.random.key(0)), store, **kw)
    m_gen = hb.train_maml(net.init(jax.random.key(0)), generated, **kw)
    np.testing.assert_allclose(m_store.losses, m_gen.losses, rtol=1e-5)
    with pytest.raises(ValueError, match="tasks is a StoredTasks with subsample_size=None"):
        hb.run_svi(spec, store, key=0, num_steps=2, progress=False)
    with pytest.raises(ValueError, match="tasks is a StoredTasks; expected a TaskBatch here"):
        hb.infer(spec, store, method="nuts", key=0, num_warmup=2, num_samples=2, progress=False)


def test_damaged_stores_are_named_and_bad_parts_leave_nothing(tmp_path):
    tasks = hb.Sinusoid(num_support=3, num_query=2).sample(jax.random.key(0), 6)
    with pytest.raises(ValueError, match=r"part 1 has fields .*expected those of part 0"):
        hb.save_task_store(tmp_path / "bad", [tasks, _masked_classification(2)])
    with pytest.raises(ValueError, match="parts is empty"):
        hb.save_task_store(tmp_path / "bad", [])
    assert os.listdir(tmp_path) == []
    good = tmp_path / "good"
    hb.save_task_store(good, tasks)
    with pytest.raises(ValueError, match="exists and is not empty"):
        hb.save_task_store(good, tasks)
    path = good / "y_query.npy"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])  # truncated
    with pytest.raises(hb.BadFileError, match=r"y_query.npy: is not a readable .npy file"):
        hb.open_task_store(good)
    np.save(path, np.zeros((5, 2, 1), np.float32))  # one task short
    with pytest.raises(hb.BadFileError, match=r"y_query.npy: holds float32 of shape \(5, 2, 1\); expected float32 "
                                              r"of shape \(6, 2, 1\)"):
        hb.open_task_store(good)
    (good / "store.json").write_text("{not json")
    with pytest.raises(hb.BadFileError, match="store.json: is not a task store record"):
        hb.open_task_store(good)
    (good / "store.json").write_text(json.dumps({"num_tasks": 6, "fields": [["x_support", [3, 1], "float32"]]}))
    with pytest.raises(hb.BadFileError, match="lists fields"):
        hb.open_task_store(good)
    with pytest.raises(hb.BadFileError, match="store.json: not found"):
        hb.open_task_store(tmp_path)
