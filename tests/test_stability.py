"""The step-size stability check against closed-form curvatures, and divergence found and explained."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hbmeta import GradientSteps, NonFiniteError, Sinusoid, check_step_size, evaluate, linear, make_tasks, train_maml
from hbmeta.maml.evaluate import divergence_message


def _linear_tasks(rng, t=4, k=6, d=3):
    x = rng.normal(size=(t, k, d)) * rng.uniform(0.5, 3, size=(t, 1, 1))
    y = rng.normal(size=(t, k, 1))
    return make_tasks(x, y, x, y), x


def test_curvature_is_the_top_eigenvalue_of_the_support_hessian(rng):
    tasks, x = _linear_tasks(rng)
    exact = np.array([np.linalg.eigvalsh(2 / x.shape[1] * xj.T @ xj).max() for xj in x])  # H = (2/K) XᵀX
    alpha = 1.5 / exact.max() * 1.6  # unstable on the stiffest task(s), α·λ = 2.4 there
    check = check_step_size({"w": jnp.zeros(3)}, tasks, rule=GradientSteps(linear().apply, step_size=alpha),
                            num_iterations=100)
    np.testing.assert_allclose(check.curvature, exact, rtol=1e-4)
    np.testing.assert_allclose(check.scaled_curvature, alpha * exact, rtol=1e-4)
    assert check.max_stable_step_size == pytest.approx(2 / exact.max(), rel=1e-4)
    assert list(check.unstable) == list(np.flatnonzero(alpha * exact >= 2)) and not check.stable
    assert "set adaptation.step_size below" in check.message
    with pytest.warns(UserWarning, match="cannot be stable"):
        check_step_size({"w": jnp.zeros(3)}, tasks, rule=GradientSteps(linear().apply, step_size=alpha), warn=True)
    fine = check_step_size({"w": jnp.zeros(3)}, tasks, rule=GradientSteps(linear().apply, step_size=alpha / 2))
    assert fine.stable and fine.message == ""


def test_per_parameter_step_sizes_use_the_scaled_hessian(rng):
    tasks, x = _linear_tasks(rng, t=2)
    a = np.array([0.05, 0.2, 0.01])
    exact = [np.linalg.eigvalsh(np.sqrt(a)[:, None] * (2 / 6 * xj.T @ xj) * np.sqrt(a)[None]).max() for xj in x]
    rule = GradientSteps(linear().apply, step_size={"w": jnp.asarray(a, jnp.float32)})
    check = check_step_size({"w": jnp.zeros(3)}, tasks, rule=rule, num_iterations=100)
    np.testing.assert_allclose(check.scaled_curvature, exact, rtol=1e-4)


def test_a_step_size_above_the_limit_diverges_and_below_it_does_not(rng):
    """The check predicts what fine-tuning does: at 1.05× the limit the loss grows, at 0.95× it shrinks."""
    tasks, _ = _linear_tasks(rng, t=1)
    rule = GradientSteps(linear().apply, step_size=1.0)
    limit = check_step_size({"w": jnp.zeros(3)}, tasks, rule=rule, num_iterations=100).max_stable_step_size
    losses = {f: evaluate({"w": jnp.zeros(3)}, tasks, rule=rule, num_steps=200, step_size=f * limit).per_task[0]
              for f in (0.95, 1.05)}
    assert losses[0.95][-1] < losses[0.95][0] and losses[1.05][-1] > 1e3 * losses[1.05][0]
    ev = evaluate({"w": jnp.zeros(3)}, tasks, rule=rule, num_steps=400, step_size=1.5 * limit, diverged_above=1e6)
    task, step = ev.first_diverged
    assert task == 0 and ev.per_task[0, step] > 1e6 and (ev.per_task[0, :step] <= 1e6).all()
    assert f"task 0 after step {step}" in divergence_message(ev) and "lower adaptation.step_size" in divergence_message(ev)


def test_diverging_meta_training_names_the_iteration():
    rule = GradientSteps(linear().apply, step_size=1e30)  # far beyond 2/λ_max: squared errors overflow float32
    with pytest.raises(NonFiniteError, match=r"meta-training diverged: the meta-loss is (nan|inf) at iteration 0 "
                                             r"\(the one before: not known\); lower maml.learning_rate"):
        train_maml({"w": jnp.ones(1)}, Sinusoid(), rule=rule, key=jax.random.key(1), num_iterations=5,
                   progress=False)
