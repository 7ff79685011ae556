"""A task's scale read off its support targets: the per-task factor on the task-level posterior's (τ², σ²).

The linearised task posterior is Gaussian, so its predictive variance does not
depend on the support targets y_S at all (conditioning a Gaussian moves its
mean, not its covariance). On a family whose tasks differ in scale (a
sinusoid's amplitude) one (τ, σ) is then too wide for the small tasks and too
narrow for the large ones. With

    s_j² = (1/o) Σ_o  the variance of task j's support targets of output o over its valid support points,

a power of it, relative to the mean s̄² of the training tasks, scales the task:

    h_j = ((s_j² / s̄² + κ) / (1 + κ))^p,   κ = 0.1,   p ≥ 0,

and (τ², σ²) → h_j (τ², σ²). That leaves the linearised predictive mean
unchanged (it depends on τ² and σ² through τ²(τ²K + σ²I)⁻¹ only) and
multiplies its covariance by exactly h_j. p = 0 is the model without it
(h_j = 1); κ keeps a tenth of the average factor for a task whose support
targets are all equal (one support point, say). p and s̄² are fitted on the
training tasks (:func:`hbmeta.inference.spread_power.fit_spread_power`).
"""

from __future__ import annotations

import jax.numpy as jnp

SPREAD_FLOOR = 0.1  # κ


def support_spread(y_support, support_mask=None):
    """``s²``: the variance of the support targets over the valid support points, averaged over outputs.

    ``y_support`` ``(..., K, o)``; ``support_mask`` ``(..., K)`` booleans or None. Returns ``(...,)``;
    0 for a task with fewer than two valid support points.

    Example:
        >>> import numpy as np
        >>> ys = np.array([[[1.0], [3.0], [9.0]]])  # one task, three support points, one output
        >>> round(float(support_spread(ys)[0]), 4), float(support_spread(ys, np.array([[True, True, False]]))[0])
        (11.5556, 1.0)
    """
    ys = jnp.asarray(y_support)
    w = jnp.ones(ys.shape[:-1], ys.dtype) if support_mask is None else jnp.asarray(support_mask, ys.dtype)
    w = w[..., None]
    n = jnp.maximum(jnp.sum(w, axis=-2), 1.0)
    mean = jnp.sum(w * ys, axis=-2) / n
    var = jnp.sum(w * jnp.square(ys - mean[..., None, :]), axis=-2) / n
    return jnp.mean(var, axis=-1)


def spread_factor(s2, power, ref):
    """``h = ((s² / s̄² + κ) / (1 + κ))^p`` (module docstring); ``ref`` is s̄² > 0, ``power`` p ≥ 0.

    Example:
        >>> float(spread_factor(4.0, 0.0, 1.0)), round(float(spread_factor(4.0, 1.0, 1.0)), 4)
        (1.0, 3.7273)
    """
    s2 = jnp.asarray(s2)
    return jnp.power((s2 / ref + SPREAD_FLOOR) / (1.0 + SPREAD_FLOOR), power)
