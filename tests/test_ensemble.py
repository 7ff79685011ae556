"""The "ensemble" method: M MAML solutions meta-trained together under vmap, and its noise scale.

Checks: each member is exactly a single ``train_maml`` run on its own tasks with its own key and start
(vmapped equals sequential); on linear-Gaussian tasks, where the MAML objective is a convex quadratic,
every member converges to the closed-form minimiser of its training tasks' objective (the same point
for all members when they share the tasks); the held-out blocks and the noise scale against a direct
computation; bad input raises ValueError before anything is compiled.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hbmeta as hb
from hbmeta.inference.ensemble import holdout_blocks
from hbmeta.inference.holdout import holdout_noise


def _sinusoid_setup(num_tasks=12):
    net = hb.mlp((1, 8, 1))
    rule = hb.GradientSteps(net.apply, step_size=0.01)
    tasks = hb.Sinusoid(num_support=5, num_query=5).sample(jax.random.key(0), num_tasks)
    return net, rule, tasks, hb.ModelSpec(rule, net.init(jax.random.key(1)))


def test_members_equal_sequential_train_maml_and_differ():
    net, rule, tasks, spec = _sinusoid_setup()
    opt = optax.adam(1e-2)
    post = hb.run_ensemble(spec, tasks, key=jax.random.key(2), num_members=4, init=net.init, num_iterations=30,
                           meta_batch_size=4, optimizer=opt, progress=False)
    theta = post.samples["theta"][:, 0]
    assert theta.shape == (4, spec.num_params) and post.method == "ensemble"
    # the members differ from each other (different starts, tasks and meta-batch orders)
    gaps = [np.max(np.abs(theta[a] - theta[b])) for a in range(4) for b in range(a + 1, 4)]
    assert min(gaps) > 1e-2
    inits = jax.vmap(net.init)(jax.random.split(jax.random.split(jax.random.key(2), 3)[0], 4))
    for m in (0, 3):  # two members suffice (each comparison compiles a train_maml loop)
        init_m = jax.tree.map(lambda a: a[m], inits)
        single = hb.train_maml(init_m, tasks.take(post.info["train_index"][m]), rule=rule,
                               key=jax.random.wrap_key_data(post.info["member_keys"][m]), num_iterations=30,
                               meta_batch_size=4, optimizer=opt, progress=False)
        np.testing.assert_allclose(theta[m], np.asarray(spec.ravel(single.params)), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(post.info["losses"][m], single.losses, rtol=1e-4, atol=1e-5)


def test_stacked_init_is_used_as_given():
    net, rule, tasks, spec = _sinusoid_setup()
    inits = jax.vmap(net.init)(jax.random.split(jax.random.key(5), 4))
    a = hb.run_ensemble(spec, tasks, key=3, num_members=4, init=inits, num_iterations=5, meta_batch_size=4,
                        progress=False)
    single = hb.train_maml(jax.tree.map(lambda x: x[1], inits), tasks.take(a.info["train_index"][1]), rule=rule,
                           key=jax.random.wrap_key_data(a.info["member_keys"][1]), num_iterations=5,
                           meta_batch_size=4, progress=False)
    np.testing.assert_allclose(a.samples["theta"][1, 0], np.asarray(spec.ravel(single.params)), rtol=1e-4, atol=1e-6)


def _linear_setup():
    tasks = hb.LinearGaussian(dim=2, mean=1.0, noise=0.3, num_support=5, num_query=5).sample(jax.random.key(0), 12)
    spec = hb.ModelSpec(hb.GradientSteps(hb.linear().apply, step_size=0.1), {"w": jnp.zeros(2)})
    inits = {"w": 3.0 * jax.random.normal(jax.random.key(1), (4, 2))}  # far-apart starts
    return tasks, spec, inits


def _least_squares(tasks):
    """The minimiser of the MAML objective Σ_j mean_q (y − x_qᵀ φ̂_j(θ))²: the flat-prior posterior mean."""
    return hb.linear_gaussian_posterior(tasks, step_size=0.1, noise=1.0, prior_scale=1e4).mean


@pytest.mark.parametrize("holdout", ["none", "folds"])
def test_linear_gaussian_members_converge_to_their_tasks_minimiser(holdout):
    tasks, spec, inits = _linear_setup()
    batch = 12 if holdout == "none" else 6  # every training task in every meta-batch: deterministic gradient
    post = hb.run_ensemble(spec, tasks, key=0, num_members=4, init=inits, num_iterations=600, meta_batch_size=batch,
                           optimizer=optax.sgd(0.3), holdout=holdout, progress=False)
    theta = post.samples["theta"][:, 0]
    for m in range(4):
        expected = _least_squares(tasks.take(post.info["train_index"][m]))
        np.testing.assert_allclose(theta[m], expected, atol=1e-4)
    if holdout == "none":  # all members share the tasks, so they reach the same MAP from different starts
        assert np.max(np.ptp(theta, axis=0)) < 1e-4
        np.testing.assert_allclose(theta[0], _least_squares(tasks), atol=1e-4)


def test_holdout_blocks_cover_every_task_twice():
    train, held = holdout_blocks(jax.random.key(0), 100, 8)
    assert train.shape == (8, 74) and held.shape == (8, 26)
    counts = np.bincount(held.ravel(), minlength=100)
    assert counts.min() >= 2 and counts.max() <= 3  # blocks wrap around when M does not divide T
    for tr, ho in zip(train, held):
        assert not set(tr) & set(ho) and len(set(tr) | set(ho)) == 100
    none_train, none_held = holdout_blocks(jax.random.key(0), 10, 3, "none")
    assert none_held.shape == (3, 0) and (none_train == np.arange(10)).all()


def test_holdout_noise_matches_a_direct_computation():
    net, rule, tasks, spec = _sinusoid_setup(num_tasks=9)
    flat = jax.vmap(lambda k: spec.ravel(net.init(k)))(jax.random.split(jax.random.key(4), 3))
    held = np.array([[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8], [6, 7, 8, 0, 1, 2]])
    res = holdout_noise(spec, flat, tasks, held)
    mu = np.stack([np.asarray(jax.vmap(rule.apply)(rule.adapt_tasks(spec.unravel(f), tasks), tasks.x_query))
                   for f in flat])  # (M, T, Mq, 1)
    y = np.asarray(tasks.y_query)
    r2 = np.mean([np.mean((y[j] - mu[m, j]) ** 2) for m in range(3) for j in held[m]])
    pairs = [(a, b, j) for j in range(9) for a in range(3) for b in range(a + 1, 3) if j in held[a] and j in held[b]]
    v = np.mean([np.mean((mu[a, j] - mu[b, j]) ** 2) / 2 for a, b, j in pairs])
    np.testing.assert_allclose([res.member_mse, res.spread], [r2, v], rtol=1e-5)
    np.testing.assert_allclose(res.noise**2, r2 - 2 * v * 2 / 3, rtol=1e-5)
    np.testing.assert_allclose(res.mixture_mse, r2 - v * 2 / 3, rtol=1e-5)


def test_noise_from_folds_and_classification_has_none():
    net, rule, tasks, spec = _sinusoid_setup()
    post = hb.run_ensemble(spec, tasks, key=1, num_members=4, init=net.init, num_iterations=10, meta_batch_size=4,
                           progress=False)
    fitted = post.info["holdout_noise"]
    np.testing.assert_allclose(post.samples["noise"][:, 0], fitted["noise"], rtol=1e-6)
    fixed = hb.ModelSpec(rule, spec.params, likelihood=hb.NormalLikelihood(noise=0.2))
    assert "noise" not in hb.run_ensemble(fixed, tasks, key=1, num_members=4, init=net.init, num_iterations=2,
                                          meta_batch_size=4, progress=False).samples
    blobs = hb.GaussianBlobs(num_classes=2, shots=2, query_shots=2).sample(jax.random.key(0), 8)
    cnet = hb.mlp((2, 8, 2))
    cspec = hb.ModelSpec(hb.GradientSteps(cnet.apply, loss="cross_entropy", step_size=0.1), cnet.init(jax.random.key(0)),
                         likelihood=hb.CategoricalLikelihood())
    cpost = hb.run_ensemble(cspec, blobs, key=0, num_members=4, init=cnet.init, num_iterations=3, meta_batch_size=2,
                            progress=False)
    assert set(cpost.samples) == {"theta"} and cpost.info["holdout_noise"] is None
    assert hb.sample_predictive(cpost, blobs, key=0).probs.shape == (4, 1, 8, 4, 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(init=None), "init is None"),
        (dict(num_members=0), "num_members=0"),
        (dict(num_members=2), "num_members=2 for 12 tasks"),
        (dict(meta_batch_size=7), "meta_batch_size=7; expected at most 6"),
        (dict(holdout="bagging"), "holdout='bagging' is not known"),
        (dict(num_iterations=0), "num_iterations=0"),
        (dict(init={"w": jnp.zeros((4, 2))}), "tree structure"),
        (dict(init="stacked-wrong-axis"), "shape \\(3, 8\\); expected \\(4, 8\\)"),
    ],
)
def test_bad_input(kwargs, match):
    net, rule, tasks, spec = _sinusoid_setup()
    args = dict(key=0, num_members=4, init=net.init, num_iterations=3, meta_batch_size=4, progress=False)
    if kwargs.get("init") == "stacked-wrong-axis":
        kwargs = dict(init=jax.vmap(net.init)(jax.random.split(jax.random.key(0), 3)))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        hb.run_ensemble(spec, tasks, **args)
