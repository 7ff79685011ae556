"""Is a gradient step on the support loss stable at θ? Curvature by power iteration on Hessian–vector products.

One inner step ``φ ← φ − α∇L(φ)`` near a minimum with Hessian ``H`` multiplies
the error by ``I − αH``; it shrinks in every direction only when
``0 < αλ < 2`` for each eigenvalue ``λ`` of ``H`` (the classical stability
condition of gradient descent on a quadratic: the error along an eigenvector
is multiplied by ``1 − αλ`` per step; see docs/reliability.md).
So when ``α·λ_max ≥ 2`` on a task's support set, repeated fine-tuning steps
from θ grow the error along the top eigenvector instead of reducing it, and
the loss can explode after a few steps: the fix is ``α < 2/λ_max``.

:func:`check_step_size` estimates ``λ_max`` of every task's support loss at
θ with a few steps of power iteration on Hessian–vector products (forward-over-
reverse ``jax.jvp`` of ``jax.grad``; the Hessian is never formed), vmapped over
tasks. Power iteration converges to the eigenvalue of largest magnitude; when
that one is negative, a second power iteration on ``H − λ₁I`` finds the largest
positive one. With per-parameter step sizes (Meta-SGD) the condition is on the
eigenvalues of ``A^{1/2} H A^{1/2}``, ``A = diag(α)``, which is what is iterated.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from hbmeta import GradientSteps, linear, make_tasks
    >>> x = jnp.array([[[1.0, 0.0], [0.0, 2.0]]]); y = jnp.zeros((1, 2, 1))
    >>> tasks = make_tasks(x, y, x, y)           # L = mean((xᵀw)²) has H = diag(1, 4)
    >>> check = check_step_size({"w": jnp.ones(2)}, tasks, rule=GradientSteps(linear().apply, step_size=0.6))
    >>> round(float(check.curvature[0]), 3), round(check.max_stable_step_size, 3), check.stable
    (4.0, 0.5, False)
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from hbmeta.base.validate import check_positive_int


class NonFiniteError(ValueError):
    """A computation produced NaN or infinite values; the message says where (stage, task, step) and what to change."""


class StepSizeCheck(NamedTuple):
    """The result of :func:`check_step_size`.

    - ``curvature``: ``(T,)`` λ_max, the largest eigenvalue of each task's support-loss Hessian at θ
      (for a pytree α: of ``A^{1/2} H A^{1/2}`` divided by the largest α).
    - ``scaled_curvature``: ``(T,)`` α·λ_max (for a pytree α: λ_max of ``A^{1/2} H A^{1/2}``); stable below 2.
    - ``step_size``: α as checked (a float; for a pytree α, its largest value).
    - ``max_stable_step_size``: ``2/max(curvature)`` for a scalar α (the largest stable α); for a
      pytree α, the factor ``2/max(curvature)`` by which α can be scaled.
    - ``unstable``: indices of the tasks with ``α·λ_max ≥ 2``.
    - ``stable``: no task is unstable.
    - ``message``: one line saying what was found and what to change ("" when stable).
    """

    curvature: np.ndarray
    scaled_curvature: np.ndarray
    step_size: float
    max_stable_step_size: float
    unstable: np.ndarray
    stable: bool
    message: str


def _power_iteration(hvp, v0, num_iterations, shift):
    """The Rayleigh quotient after ``num_iterations`` steps of power iteration on ``hvp(v) - shift·v``."""
    def body(_, v):
        w = hvp(v) - shift * v
        return w / jnp.maximum(jnp.linalg.norm(w), 1e-30)

    v = jax.lax.fori_loop(0, num_iterations, body, v0 / jnp.linalg.norm(v0))
    return jnp.vdot(v, hvp(v)) / jnp.vdot(v, v)


def support_curvature(params, tasks, *, rule, step_size=None, num_iterations: int = 20, key=None):
    """``(T,)`` the largest eigenvalue of ``A^{1/2} ∇²L(S_j; θ) A^{1/2}`` per task (``A = α``; pure, jit-able).

    For a scalar ``α`` this is ``α·λ_max(H_j)``. See the module docstring.
    """
    alpha = rule.step_size if step_size is None else step_size
    flat, unravel = ravel_pytree(params)
    if jax.tree.leaves(alpha) and jax.tree.structure(alpha) == jax.tree.structure(params):
        scale = jnp.sqrt(ravel_pytree(alpha)[0])
    else:
        scale = jnp.sqrt(jnp.asarray(alpha, flat.dtype)) * jnp.ones_like(flat)
    key = jax.random.key(0) if key is None else key
    v0 = jax.random.normal(key, flat.shape, flat.dtype)
    loss_fn = rule.loss_fn

    def one(xs, ys, ms):
        grad = jax.grad(lambda f: loss_fn(rule.apply(unravel(f), xs), ys, ms))

        def hvp(v):
            return scale * jax.jvp(grad, (flat,), (scale * v,))[1]

        first = _power_iteration(hvp, v0, num_iterations, 0.0)
        second = _power_iteration(hvp, v0, num_iterations, jnp.minimum(first, 0.0))
        return jnp.maximum(first, second)

    return jax.vmap(one)(*tasks.support())


def check_step_size(params, tasks, *, rule, step_size=None, num_iterations: int = 20, key=None,
                    warn: bool = False, what: str = "adaptation.step_size") -> StepSizeCheck:
    """Check ``α·λ_max < 2`` on every task's support loss at θ; see the module docstring.

    Args:
        params: θ (pytree). tasks: a :class:`~hbmeta.TaskBatch`. rule: the :class:`~hbmeta.GradientSteps`.
        step_size: α (default the rule's). num_iterations: power-iteration steps (each one HVP per task).
        warn: also ``warnings.warn`` the message when unstable. what: the setting named in the message.
    """
    check_positive_int("num_iterations", num_iterations)
    kappa = np.asarray(jax.jit(lambda p, t: support_curvature(p, t, rule=rule, step_size=step_size,
                                                              num_iterations=num_iterations, key=key))(params, tasks))
    alpha = rule.step_size if step_size is None else step_size
    scalar = not jax.tree.structure(alpha).num_leaves > 1 and np.ndim(jax.tree.leaves(alpha)[0]) == 0
    a = float(np.max([np.max(np.asarray(x)) for x in jax.tree.leaves(alpha)]))
    worst = float(np.nanmax(kappa)) if np.isfinite(kappa).any() else float("nan")
    limit = (2.0 * a / worst if scalar else 2.0 / worst) if worst > 0 else float("inf")
    unstable = np.flatnonzero(~(kappa < 2.0))  # NaN curvature counts as unstable
    message = ""
    if len(unstable):
        j = int(unstable[np.argmax(np.nan_to_num(kappa[unstable], nan=np.inf))])
        fix = (f"set {what} below {limit:.3g} (2/λ_max)" if scalar else
               f"scale the step sizes by less than {limit:.3g}")
        message = (f"gradient steps on the support loss cannot be stable at θ for {len(unstable)} of {len(kappa)} "
                   f"tasks: α·λ_max reaches {kappa[j]:.3g} ≥ 2 (task {j}, α = {a:.3g}); the error grows along "
                   f"the top curvature direction with each step; {fix}, or use fewer steps")
        if warn:
            warnings.warn(message, UserWarning, stacklevel=2)
    return StepSizeCheck(kappa / a, kappa, a, limit, unstable, not len(unstable), message)
