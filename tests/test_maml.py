"""MAML meta-training and evaluation: reproducibility, resuming, compile-once, convergence to
the known optimum on linear-Gaussian tasks, learning on sinusoids, Meta-SGD, and the
evaluation's confidence interval."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hbmeta as hb
from hbmeta import GradientSteps, train_maml

LIN = hb.linear()
FAM = hb.LinearGaussian(dim=2, mean=1.5, scale=1.0, noise=0.1)
SGD = optax.sgd(0.02)
TRACES = {"n": 0}


def _counting_apply(p, x):
    TRACES["n"] += 1  # runs while tracing only, so it counts traces, not executions
    return LIN.apply(p, x)


RULE = GradientSteps(_counting_apply, step_size=0.1)


def _train(n, key=2, state=None):
    return train_maml({"w": jnp.zeros(2)}, FAM, rule=RULE, key=jax.random.key(key), num_iterations=n,
                      optimizer=SGD, meta_batch_size=100, chunk_size=500, progress=False, state=state)


def test_linear_gaussian_converges_to_the_task_mean():
    """For w ~ N(μ, τ²I) and x ~ N(0, I), the expected one-step MAML loss is minimised at θ* = μ
    (φ̂ − w = A(θ − w) + noise with A independent of w), here μ = (1.5, 1.5)."""
    res = _train(1000)
    np.testing.assert_allclose(res.params["w"], [1.5, 1.5], atol=0.06)
    assert res.losses.shape == (1000,) and isinstance(res.losses, np.ndarray)
    # Without adaptation no θ does better than τ²·d + σ² = 2.01 on these tasks; MAML's adapted loss does.
    assert res.losses[-200:].mean() < 0.75 * 2.01
    assert res.losses[:5].mean() > 2 * res.losses[-200:].mean()  # it started far from the optimum


def test_reproducible_resumable_and_compiled_once():
    a = _train(1000)
    traces = TRACES["n"]
    assert traces > 0
    b = _train(1000)
    np.testing.assert_array_equal(a.losses, b.losses)
    np.testing.assert_array_equal(a.params["w"], b.params["w"])
    c = _train(1000, key=3)
    assert not np.array_equal(a.losses, c.losses)
    # 500 iterations, then 500 more from the saved state, is the same run as 1000 at once.
    first = _train(500)
    rest = _train(500, key=99, state=first.state)  # the key of a resumed run comes from the state
    np.testing.assert_array_equal(np.concatenate([first.losses, rest.losses]), a.losses)
    np.testing.assert_array_equal(rest.params["w"], a.params["w"])
    assert int(rest.state.iteration) == 1000
    # Four more calls with the same shapes and configuration: no retracing, no recompilation.
    assert TRACES["n"] == traces


def test_meta_sgd_learns_per_parameter_step_sizes():
    """Learned α: starting from a too-small step size, meta-learning raises it and lowers the meta-loss."""
    alpha0 = {"w": jnp.full(2, 0.01)}
    rule = GradientSteps(LIN.apply, step_size=alpha0)
    opt = optax.adam(0.01)
    learned = train_maml({"w": jnp.zeros(2)}, FAM, rule=rule, key=jax.random.key(2), num_iterations=600,
                         meta_batch_size=50, optimizer=opt, learn_step_size=True, progress=False)
    assert jax.tree.structure(learned.step_size) == jax.tree.structure(alpha0)
    a = np.asarray(learned.step_size["w"])
    assert np.all(a > 0.05) and np.all(a < 1.0)  # moved well up from 0.01, stays a sane step
    # At the learned θ, the learned step sizes give a clearly lower meta-loss than the initial ones.
    tasks = FAM.sample(jax.random.key(11), 200)
    loss = jax.jit(lambda alpha: hb.meta_loss(learned.params, tasks, rule=rule, step_size=alpha))
    assert float(loss(learned.step_size)) < 0.8 * float(loss(alpha0))
    # A scalar step size is learnable too, and remains a scalar: one meta-step moves it up by about
    # Adam's learning rate (the meta-gradient in α is negative when α is too small).
    state = hb.init_maml({"w": jnp.zeros(2)}, optimizer=opt, step_size=0.01, key=jax.random.key(0),
                         learn_step_size=True)
    update = jax.jit(lambda s, t: hb.maml_update(s, t, rule=GradientSteps(LIN.apply), optimizer=opt,
                                                 learn_step_size=True))
    state, _ = update(state, tasks)
    assert np.shape(state.step_size) == () and abs(float(state.step_size) - 0.02) < 1e-4


def test_sinusoid_maml_learns_to_adapt():
    """A short run on the MAML sinusoids: one step of adaptation from the learned θ beats any
    non-adapting predictor, whose MSE is at least E[y²] − E[E[y|x]²] ≈ 3.0 on these tasks."""
    net = hb.mlp((1, 40, 40, 1), init="normal", init_scale=0.01)
    rule = GradientSteps(net.apply, step_size=0.01)
    res = train_maml(net.init(jax.random.key(0)), hb.Sinusoid(), rule=rule, key=jax.random.key(2),
                     num_iterations=1500, meta_batch_size=10, chunk_size=1500, optimizer=optax.adam(0.01),
                     progress=False)
    ea2 = (5.0**3 - 0.1**3) / (3 * 4.9)  # E[A²], A ~ U[0.1, 5]
    ea = 2.55
    no_adapt_floor = ea2 / 2 - (2 * ea / math.pi) ** 2 * (0.5 + math.sin(10) / 20)  # ≈ 3.00
    ev = hb.evaluate(res.params, hb.Sinusoid().sample(jax.random.key(9), 300), rule=rule, num_steps=1)
    assert ev.mean[0] > 0.8 * no_adapt_floor  # the learned θ alone is not a good predictor …
    assert ev.mean[1] < 0.6 * no_adapt_floor  # … but one gradient step from it is (new tasks)
    assert ev.mean[1] < 0.5 * ev.mean[0]
    assert res.losses[-200:].mean() < 0.5 * no_adapt_floor  # the meta-loss on the training stream


def test_evaluate_matches_adaptation_and_ci_formula(rng):
    tasks = FAM.sample(jax.random.key(4), 200)  # the same sampler shapes as above: compiled once
    theta = {"w": jnp.array([1.0, -0.5])}
    rule = GradientSteps(LIN.apply, step_size=0.1)
    ev = hb.evaluate(theta, tasks, rule=rule, num_steps=3)
    assert ev.steps.tolist() == [0, 1, 2, 3] and ev.per_task.shape == (200, 4)
    expected = jax.jit(lambda p, t: [GradientSteps(LIN.apply, step_size=0.1, num_steps=s).query_losses(p, t)
                                     for s in range(4)])(theta, tasks)
    for s in range(4):
        np.testing.assert_allclose(ev.per_task[:, s], np.asarray(expected[s]), rtol=1e-5)
    pt = ev.per_task
    np.testing.assert_allclose(ev.mean, pt.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(ev.ci95, 1.96 * pt.std(axis=0, ddof=1) / math.sqrt(200), rtol=1e-6)
    assert ev.at(2) == (float(ev.mean[2]), float(ev.ci95[2]))
    assert np.all(np.diff(ev.mean) < 0)  # each step helps on these well-conditioned tasks
    # A second evaluation with the same rule and shapes reuses the compiled fine-tuning.
    hb.evaluate(theta, tasks, rule=RULE, num_steps=3)
    traces = TRACES["n"]
    again = hb.evaluate({"w": jnp.array([0.0, 2.0])}, tasks, rule=RULE, num_steps=3)
    assert TRACES["n"] == traces and not np.allclose(again.mean, ev.mean)
    with pytest.raises(ValueError, match="num_steps=-1"):
        hb.evaluate(theta, tasks, rule=rule, num_steps=-1)


def test_fixed_task_sets_and_bad_arguments():
    fixed = FAM.fixed(jax.random.key(0), 20)
    rule = GradientSteps(LIN.apply, step_size=0.1)
    # A plain TaskBatch is a finite set too; meta-batches are drawn from it.
    res = train_maml({"w": jnp.zeros(2)}, fixed.tasks, rule=rule, key=jax.random.key(1), num_iterations=50,
                     meta_batch_size=10, optimizer=SGD, progress=False)
    assert res.losses.shape == (50,) and np.all(np.isfinite(res.losses))
    with pytest.raises(ValueError, match="meta_batch_size=21; expected at most the 20 tasks"):
        train_maml({"w": jnp.zeros(2)}, fixed, rule=rule, key=jax.random.key(1), num_iterations=5,
                   meta_batch_size=21, progress=False)
    with pytest.raises(ValueError, match="num_iterations=0; expected a positive integer"):
        train_maml({"w": jnp.zeros(2)}, FAM, rule=rule, key=jax.random.key(1), num_iterations=0, progress=False)
    with pytest.raises(ValueError, match="meta_batch_size=0"):
        train_maml({"w": jnp.zeros(2)}, FAM, rule=rule, key=jax.random.key(1), num_iterations=5,
                   meta_batch_size=0, progress=False)
    with pytest.raises(ValueError, match="tasks is a int; expected a task family"):
        train_maml({"w": jnp.zeros(2)}, 42, rule=rule, key=jax.random.key(1), num_iterations=5, progress=False)
