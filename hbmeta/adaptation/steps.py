"""The gradient-step estimator φ̂ = θ − α∇L(θ): MAML's inner loop.

One step maps task-general parameters ``θ`` to task-specific ones,
``φ̂ = θ − α ⊙ ∇_θ L(S; θ)`` on the support set ``S``; ``n`` steps apply it
``n`` times. ``α`` is a scalar or a pytree like ``θ`` (Meta-SGD). For a
quadratic loss with Hessian ``H`` and minimiser ``φ*``, ``n`` steps give
``φ* + (I − αH)ⁿ(θ − φ*)``, the MAP estimate of ``φ`` under the Gaussian prior
``N(θ, H⁻¹[(I − αH)⁻ⁿ − I])`` (Santos 1996; Grant et al. 2018).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from hbmeta.adaptation.losses import get_loss


def _scaled_step(params, grads, step_size):
    if isinstance(step_size, (int, float)) or (hasattr(step_size, "ndim") and step_size.ndim == 0):
        return jax.tree.map(lambda p, g: p - step_size * g, params, grads)
    return jax.tree.map(lambda p, g, a: p - a * g, params, grads, step_size)


def adapt(
    params,
    x_support,
    y_support,
    support_mask=None,
    *,
    apply: Callable,
    loss: Callable | str = "mse",
    step_size: Any = 0.01,
    num_steps: int = 1,
    first_order: bool = False,
):
    """Adapt ``params`` to one task's support set by ``num_steps`` gradient steps.

    ``φ_0 = θ``, ``φ_{i+1} = φ_i − α ⊙ ∇_φ L(S; φ_i)`` where
    ``L(S; φ) = loss(apply(φ, x_support), y_support, support_mask)``.

    Args:
        params: θ, any pytree of arrays.
        x_support, y_support, support_mask: one task's support set (no task
            axis); ``vmap`` this function over tasks.
        apply: ``apply(params, x) -> predictions``.
        loss: ``loss(predictions, targets, mask) -> scalar`` or a name
            (``"mse"``, ``"cross_entropy"``).
        step_size: α, a scalar or a pytree with the structure of ``params``
            (per-parameter step sizes, Meta-SGD). May be traced (learned or
            inferred).
        num_steps: n ≥ 0, compiled as a loop (``lax.fori_loop``), not unrolled.
        first_order: if True, gradients do not flow through ``∇L`` (first-order
            MAML): ``∂φ̂/∂θ`` becomes the identity.

    Returns:
        φ̂, with the structure of ``params``. Differentiable to any order
        (unless ``first_order``), ``jit``- and ``vmap``-able.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from hbmeta import adapt, mlp
        >>> net = mlp((1, 8, 1)); theta = net.init(jax.random.key(0))
        >>> x = jnp.linspace(-1, 1, 5)[:, None]; y = jnp.sin(x)
        >>> phi = adapt(theta, x, y, apply=net.apply, step_size=0.1, num_steps=3)
        >>> jax.tree.structure(phi) == jax.tree.structure(theta)
        True
    """
    loss_fn = get_loss(loss)
    num_steps = int(num_steps)
    if num_steps < 0:
        raise ValueError(f"num_steps={num_steps}; expected a non-negative integer")

    def support_loss(p):
        return loss_fn(apply(p, x_support), y_support, support_mask)

    grad_fn = jax.grad(support_loss)

    def body(_, p):
        g = grad_fn(p)
        if first_order:
            g = jax.lax.stop_gradient(g)
        return _scaled_step(p, g, step_size)

    if num_steps == 0:
        return params
    if num_steps == 1:
        return body(0, params)
    return jax.lax.fori_loop(0, num_steps, body, params)


@dataclass(frozen=True)
class GradientSteps:
    """The gradient-step adaptation rule as configuration: a thin shell over :func:`adapt`.

    ``rule(params, x, y, mask, step_size=None)`` calls :func:`adapt` with the
    stored ``apply``, ``loss``, ``num_steps`` and ``first_order``; ``step_size``
    overrides the stored one (for learned or inferred α).

    Example:
        >>> import jax
        >>> from hbmeta import GradientSteps, mlp
        >>> net = mlp((1, 8, 1))
        >>> rule = GradientSteps(net.apply, loss="mse", step_size=0.01, num_steps=1)
        >>> rule.num_steps
        1
    """

    apply: Callable
    loss: Callable | str = "mse"
    step_size: Any = 0.01
    num_steps: int = 1
    first_order: bool = False

    def __post_init__(self):
        get_loss(self.loss)
        if int(self.num_steps) != self.num_steps or self.num_steps < 0:
            raise ValueError(f"num_steps={self.num_steps!r}; expected a non-negative integer")
        for leaf in jax.tree.leaves(self.step_size):
            if isinstance(leaf, (int, float)) and not leaf > 0:
                raise ValueError(f"step_size={self.step_size!r}; expected positive step sizes")
            if not isinstance(leaf, jax.core.Tracer) and hasattr(leaf, "shape"):
                if not bool(jnp.all(jnp.asarray(leaf) > 0)):
                    raise ValueError("step_size has non-positive entries; expected positive step sizes")

    @property
    def loss_fn(self) -> Callable:
        """The loss as a callable."""
        return get_loss(self.loss)

    def __call__(self, params, x, y, mask=None, step_size=None):
        return adapt(
            params,
            x,
            y,
            mask,
            apply=self.apply,
            loss=self.loss,
            step_size=self.step_size if step_size is None else step_size,
            num_steps=self.num_steps,
            first_order=self.first_order,
        )

    def adapt_tasks(self, params, tasks, step_size=None):
        """φ̂_j for every task of a :class:`~hbmeta.TaskBatch` (vmapped over the task axis)."""
        return jax.vmap(lambda x, y, m: self(params, x, y, m, step_size))(*tasks.support())

    def query_losses(self, params, tasks, step_size=None):
        """``L_j(Q_j; φ̂_j(θ))`` for every task: a ``(T,)`` array."""
        loss_fn = self.loss_fn

        def one(xs, ys, ms, xq, yq, mq):
            phi = self(params, xs, ys, ms, step_size)
            return loss_fn(self.apply(phi, xq), yq, mq)

        return jax.vmap(one)(*tasks.support(), *tasks.query())
