"""Generated task sets: task j is the family's draw from fold_in(key, j); SVI over them equals SVI over the stored set."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hbmeta as hb
from hbmeta.tasks.generated import distinct_indices


def test_task_j_is_the_familys_draw_from_the_folded_key():
    family = hb.Sinusoid(num_support=4, num_query=3, noise=0.1)
    key = jax.random.key(5)
    tasks = family.generated(key, 10**6)
    index = jnp.array([0, 17, 999_999, 17])
    got = tasks.take(index)
    for row, j in enumerate(index.tolist()):
        want = family.sample(jax.random.fold_in(key, j), 1)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(a[row]), np.asarray(b[0]))
    np.testing.assert_array_equal(got.y_query[1], got.y_query[3])  # the same j: the same task
    assert got.x_support.shape == (4, 4, 1) and got.x_query.shape == (4, 3, 1)
    # the whole set is one key: it costs nothing to pass it through jit
    assert [a.size for a in jax.tree.leaves(tasks)] == [1]
    small = family.generated(key, 6, num_support=2, num_query=5)
    assert small.materialise().x_query.shape == (6, 5, 1)


def test_distinct_indices_are_distinct_and_uniform():
    draws = jax.vmap(lambda k: distinct_indices(k, 5, 2))(jax.random.split(jax.random.key(0), 20_000))
    draws = np.asarray(draws)
    assert (draws[:, 0] != draws[:, 1]).all() and draws.min() >= 0 and draws.max() <= 4
    # every index is in a draw with probability 2/5; binomial standard error of the frequency
    freq = np.bincount(draws.ravel(), minlength=5) / len(draws)
    se = np.sqrt(0.4 * 0.6 / len(draws))
    assert np.abs(freq - 0.4).max() < 5 * se, freq
    # and every ordered pair is equally likely (20 of them, 1/20 each)
    pairs = np.bincount(draws[:, 0] * 5 + draws[:, 1], minlength=25).reshape(5, 5)
    off = pairs[~np.eye(5, dtype=bool)] / len(draws)
    assert np.abs(off - 0.05).max() < 5 * np.sqrt(0.05 * 0.95 / len(draws)), off
    with pytest.raises(ValueError, match=r"size=6; expected an integer in \[1, 5\]"):
        distinct_indices(jax.random.key(0), 5, 6)


@pytest.fixture(scope="module")
def small():
    net = hb.mlp((1, 8, 1))
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, step_size=0.05), net.init(jax.random.key(0)),
                        likelihood=hb.NormalLikelihood(noise=0.5))
    return net, spec, hb.Sinusoid(num_support=5, num_query=5).generated(jax.random.key(1), 40)


def test_subsampled_svi_over_generated_tasks_equals_svi_over_the_stored_set(small):
    net, spec, generated = small
    kw = dict(key=jax.random.key(2), num_steps=60, num_draws=5, subsample_size=8, progress=False)
    a = hb.run_svi(spec, generated, **kw)
    b = hb.run_svi(spec, generated.materialise(), **kw)
    np.testing.assert_allclose(a.info["losses"], b.info["losses"], rtol=1e-5)
    np.testing.assert_allclose(a.samples["theta"], b.samples["theta"], rtol=1e-5, atol=1e-6)
    assert a.info["losses"][-20:].mean() < a.info["losses"][:5].mean()  # and it is fitting
    # MAML takes the set as it takes a family: meta-batches of distinct generated tasks
    maml = hb.train_maml(net.init(jax.random.key(0)), generated, rule=spec.rule, key=jax.random.key(3),
                         num_iterations=20, meta_batch_size=10, progress=False)
    assert np.isfinite(maml.losses).all()
    with pytest.raises(ValueError, match="expected at most the 40 tasks"):
        generated.sample(jax.random.key(0), 41)


def test_generated_tasks_are_refused_where_they_cannot_work(small):
    _, spec, generated = small
    with pytest.raises(ValueError, match="GeneratedTasks with subsample_size=None; expected a subsample_size"):
        hb.run_svi(spec, generated, key=0, num_steps=2, progress=False)
    with pytest.raises(ValueError, match="devices=2 with GeneratedTasks; expected devices=None"):
        hb.run_svi(spec, generated, key=0, num_steps=2, subsample_size=4, devices=2, progress=False)
    with pytest.raises(ValueError, match="tasks is a GeneratedTasks; expected a TaskBatch here"):
        hb.infer(spec, generated, method="nuts", key=0, num_warmup=2, num_samples=2, progress=False)
    with pytest.raises(ValueError, match="num_tasks=0"):
        hb.Sinusoid().generated(jax.random.key(0), 0)
    with pytest.raises(ValueError, match="expected one jax.random.key"):
        hb.Sinusoid().generated(jax.random.split(jax.random.key(0)), 10)
