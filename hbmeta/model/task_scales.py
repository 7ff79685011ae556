"""The task-level predictive for several (τ, σ) at once, each task linearised once (a search over scales).

The Jacobians of the support and query predictions at φ̂_j do not depend on
(τ, σ); only the conditioning on the support does, a K·o × K·o solve. An
ensemble's scale searches on the folds (the noise share, the classification
scale) therefore form the kernels once per member and task and condition once
per candidate (:func:`task_predictive_scales`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hbmeta.model.spec import ModelSpec
from hbmeta.model.task_linearised import condition_one, linearise
from hbmeta.model.task_posterior import TaskPredictive, _check, _compiled, _task_arrays


def _scales_task(spec, flat, args, alpha, taus, noises):
    """``(mean, var, probs)`` of one task for every (τ_s, σ_s): linearised once, conditioned S times."""
    xs, ys, ms, xq, _, _ = args
    lin = linearise(spec, flat, xs, ys, ms, xq, alpha, full_query=False)
    if noises is None:
        return jax.vmap(lambda t: condition_one(spec, lin, ys, ms, xq.shape[0], t, None))(taus)
    return jax.vmap(lambda t, s: condition_one(spec, lin, ys, ms, xq.shape[0], t, s))(taus, noises)


def task_predictive_scales(spec, theta, tasks, *, taus, noises=None, step_size=None, task_chunk=32) -> TaskPredictive:
    """:func:`task_predictive` for S pairs (τ_s, σ_s) at once, linearising each task only once.

    The Jacobians J_S, J_Q at φ̂_j do not depend on (τ, σ); only the
    conditioning on the support does, and it costs K·o × K·o solves. So a
    search over scales (an ensemble's noise share or class scale on the folds)
    forms the kernels once per task and conditions S times. Entry s of the
    result equals ``task_predictive(spec, theta, tasks, tau=taus[s],
    noise=noises[s])`` up to floating-point rounding.

    Args:
        spec, theta, tasks, step_size, task_chunk: as :func:`task_predictive`.
        taus: ``(S,)`` τ_s > 0.
        noises: ``(S,)`` σ_s > 0 for regression; None for classification.

    Returns:
        :class:`TaskPredictive` whose arrays have a leading ``(S,)`` axis.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import hbmeta as hb
        >>> net = hb.mlp((1, 8, 1)); theta = net.init(jax.random.key(0))
        >>> spec = hb.ModelSpec(hb.GradientSteps(net.apply), theta)
        >>> tasks = hb.Sinusoid(num_support=5).sample(jax.random.key(1), 3)
        >>> both = hb.task_predictive_scales(spec, theta, tasks, taus=jnp.array([0.1, 0.3]), noises=jnp.array([0.5, 0.2]))
        >>> one = hb.task_predictive(spec, theta, tasks, tau=0.3, noise=0.2)
        >>> both.var.shape, bool(jnp.allclose(both.var[1], one.var, rtol=1e-5))
        ((2, 3, 10, 1), True)
    """
    regression = isinstance(spec, ModelSpec) and spec.likelihood.regression
    flat = _check(spec, theta, tasks, 1.0, 1.0 if regression else None, step_size, task_chunk)
    taus = _check_scales("taus", taus)
    if regression:
        if noises is None:
            raise ValueError("noises=None; expected (S,) σ_s > 0, one for each τ_s (the likelihood is a regression one)")
        noises = _check_scales("noises", noises)
        if noises.shape != taus.shape:
            raise ValueError(f"noises has shape {noises.shape}; expected {taus.shape}, one σ_s for each τ_s")
    elif noises is not None:
        raise ValueError(f"noises={noises!r}; expected None: a categorical likelihood has no noise scale")
    out = _compiled(spec, _scales_task, task_chunk)(flat, _task_arrays(tasks), step_size, jnp.asarray(taus),
                                                    None if noises is None else jnp.asarray(noises))
    return TaskPredictive(*(None if a is None else jnp.moveaxis(a, 1, 0) for a in out))


def _check_scales(name, values):
    """``values`` as a non-empty 1-D float array of finite positive numbers, or a ValueError naming ``name``."""
    try:
        arr = np.asarray([] if isinstance(values, bool) else values, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.asarray([])
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or not np.all(arr > 0):
        raise ValueError(f"{name}={values!r}; expected a non-empty 1-D array of positive numbers")
    return arr
