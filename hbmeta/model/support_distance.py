"""How far a query point is from its task's support set: the per-point factor on the task-level predictive variance.

Next to a support point the members of an ensemble disagree more than the
mean of all M of them errs (their errors there are nearly independent, so
averaging removes most of them), while far from every support point they
miss together. One scale for every point is then too wide near the support
and too narrow far from it. With

    d_jq = min over task j's valid support points k of ‖x_q − x_k‖   (Euclidean, on the flattened inputs)

and bin edges e_1 < … < e_{B−1} (quantiles of d over the training tasks' query
points) with a factor c_b for each bin, query point q of task j gets the factor
c(d_jq) on its linearised predictive variance (the variance of f plus σ²): c is
linear in d between the bins' midpoints m_b and constant beyond the first and
the last,

    m_1 = e_1/2,   m_b = (e_{b−1} + e_b)/2,   m_B = e_{B−1} + (e_{B−1} − e_{B−2})/2   (e_0 = 0),

so the predictive bands do not step at the bin edges. The mean is unchanged.
The edges and factors are fitted on the training tasks
(:func:`hbmeta.inference.distance_scale.fit_distance_scale`); one bin with
c = 1 is the model without it.
"""

from __future__ import annotations

import jax.numpy as jnp


def support_distance(x_support, x_query, support_mask=None):
    """``d``: each query point's Euclidean distance to the task's nearest valid support point (one task).

    ``x_support`` ``(K, *input)``, ``x_query`` ``(Q, *input)`` (inputs of any shape are flattened);
    ``support_mask`` ``(K,)`` booleans or None. Returns ``(Q,)``; ``inf`` when no support point is valid.
    ``jax.vmap`` it over tasks.

    Example:
        >>> import numpy as np
        >>> xs = np.array([[0.0], [2.0]]); xq = np.array([[0.5], [3.0], [-1.0]])
        >>> support_distance(xs, xq).tolist(), support_distance(xs, xq, np.array([False, True])).tolist()
        ([0.5, 1.0, 1.0], [1.5, 1.0, 3.0])
    """
    xs, xq = jnp.asarray(x_support), jnp.asarray(x_query)
    xs = xs.reshape(xs.shape[0], -1)
    xq = xq.reshape(xq.shape[0], -1).astype(xs.dtype)
    d2 = jnp.sum(jnp.square(xq[:, None, :] - xs[None, :, :]), axis=-1)  # (Q, K)
    if support_mask is not None:
        d2 = jnp.where(jnp.asarray(support_mask, bool)[None, :], d2, jnp.inf)
    return jnp.sqrt(jnp.min(d2, axis=-1))


def distance_factor(d, edges, scales):
    """``c(d)``: ``scales`` linear in ``d`` between the bins' midpoints (module docstring), constant beyond them.

    ``edges`` ``(B − 1,)`` increasing, ``scales`` ``(B,)``: the factor of each bin at its midpoint. With one
    bin (no edges), ``scales[0]`` everywhere. ``d`` of any shape (``inf`` gets the last bin's factor).

    Example:
        >>> import numpy as np
        >>> edges, scales = np.array([0.2, 1.0]), np.array([0.4, 1.0, 1.5])   # midpoints 0.1, 0.6, 1.4
        >>> np.round(distance_factor(np.array([0.0, 0.1, 0.35, 0.6, 1.0, 3.0]), edges, scales), 4).tolist()
        [0.4, 0.4, 0.7, 1.0, 1.25, 1.5]
    """
    d = jnp.asarray(d)
    scales = jnp.asarray(scales, d.dtype)
    if jnp.shape(edges)[-1] == 0:
        return jnp.broadcast_to(scales[0], d.shape)
    return jnp.interp(d, distance_midpoints(jnp.asarray(edges, d.dtype)), scales)


def distance_midpoints(edges):
    """``(B,)`` the bins' midpoints m_b of the module docstring, where :func:`distance_factor` takes each c_b.

    Example:
        >>> import numpy as np
        >>> np.round(distance_midpoints(np.array([0.2, 1.0])), 4).tolist()
        [0.1, 0.6, 1.4]
    """
    edges = jnp.asarray(edges)
    lower = jnp.concatenate([jnp.zeros(1, edges.dtype), edges])  # e_0 = 0, e_1, …, e_{B−1}
    upper = jnp.concatenate([edges, edges[-1:] + (edges[-1:] - lower[-2:-1])])
    return (lower + upper) / 2
