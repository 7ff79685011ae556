"""The per-point factor c_b of the ensemble's predictive variance by distance to the support, on the folds.

:mod:`hbmeta.model.support_distance` defines the factor: a query point at
distance d from its task's nearest support point gets the factor c(d) on every
member's predictive variance, linear in d between the bins' factors c_b placed
at the bins' midpoints. The scale rule of
:mod:`hbmeta.inference.holdout` matches the M-member mixture's variance to the
estimated error of its mean over all points; the identity it rests on,

    mean_m ‖y − f_m‖² = ‖y − f̄‖² + mean_m ‖f_m − f̄‖²,

holds for any set of points, so it is applied in each bin: with r²_b, v_b and
V̄_b the members' out-of-sample squared error, half the squared gap of two of
them and their mean predictive variance over the training tasks' query points
in bin b (the members that did not train on each task),

    c_b = max((r²_b − 2 v_b (M − 1)/M) / V̄_b, floor).

The bins are the quantiles of d over the training tasks' query points, so each
holds about the same share of them. Next to the support points the members'
spread alone can exceed the estimated error of their mean (r²_b ≤ 2v_b(M − 1)/M):
no variance of the members matches there, and the floor keeps each member a
share of its own variance. No held-out task is used. The identity is exact for
a factor constant within each bin; the interpolation keeps c_b at the bin's
midpoint and moves towards the neighbours' factors on either side (on the
development draws it lowered the NLL and left the calibration error as it was:
``docs/benchmarks.md``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from hbmeta.inference.fold_scores import _moments

DISTANCE_BINS = 5  # B: quantile bins of the distance to the nearest support point
DISTANCE_FLOOR = 0.3  # the least c_b, a share of the members' own variance


class DistanceFit(NamedTuple):
    """The per-point factor by distance to the support (:func:`fit_distance_scale`).

    - ``edges``: ``(B − 1,)`` increasing bin edges of the distance; ``scales``: ``(B,)`` the factors c_b.
    - ``member_mse``, ``spread``, ``mean_var``: ``(B,)`` r²_b, v_b and V̄_b of each bin.
    """

    edges: np.ndarray
    scales: np.ndarray
    member_mse: np.ndarray
    spread: np.ndarray
    mean_var: np.ndarray


def fit_distance_scale(mu, var, y, out, w, d, *, num_bins: int = DISTANCE_BINS,
                       floor: float = DISTANCE_FLOOR) -> DistanceFit:
    """Bin edges and factors c_b by the second-moment rule in each bin (module docstring).

    Args:
        mu, var: ``(M, T, Q, o)`` every member's predictive mean and variance on every training task, as the
            predictive will use them (after c and the per-task factor).
        y: ``(T, Q, o)`` the query targets; ``out``: ``(M, T)`` 1 where member m did not train on task j;
            ``w``: ``(T, Q)`` point weights (0 for masked points).
        d: ``(T, Q)`` each query point's distance to its task's nearest support point
            (:func:`~hbmeta.model.support_distance.support_distance`).
        num_bins: B ≥ 1; 1 gives one factor from the whole-set rule (c_1 = 1 when c already matches it).
        floor: the least c_b, in (0, 1].

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> d = rng.uniform(0, 2, (60, 10))              # the error grows with the distance, the variance does not
        >>> y = d[..., None] * rng.normal(size=(60, 10, 1))
        >>> mu = np.zeros((4, 60, 10, 1)); out = np.ones((4, 60))
        >>> fit = fit_distance_scale(mu, np.ones(mu.shape), y, out, np.ones((60, 10)), d, num_bins=4, floor=0.01)
        >>> bool(np.all(np.diff(fit.scales) > 0)), fit.edges.shape
        (True, (3,))
    """
    if isinstance(num_bins, bool) or int(num_bins) != num_bins or num_bins < 1:
        raise ValueError(f"num_bins={num_bins!r}; expected a positive integer")
    if not 0 < float(floor) <= 1:
        raise ValueError(f"floor={floor!r}; expected a number in (0, 1]")
    mu = jnp.asarray(mu)
    y = jnp.asarray(y, mu.dtype)
    out = np.asarray(out, np.float64)
    w = np.asarray(w, np.float64)
    d = np.asarray(d, np.float64)
    valid = (w > 0) & np.isfinite(d)
    edges = np.unique(np.quantile(d[valid], np.arange(1, num_bins) / num_bins)) if num_bins > 1 else np.zeros(0)
    bins = np.sum(d[..., None] >= edges, axis=-1)
    m = mu.shape[0]
    member_var = np.mean(np.asarray(var, np.float64), axis=-1)  # (M, T, Q)
    r2, v, vbar = (np.zeros(len(edges) + 1) for _ in range(3))
    for b in range(len(edges) + 1):
        wb = np.where(valid & (bins == b), w, 0.0)
        r2[b], v[b] = (float(a) for a in _moments(mu, y, jnp.asarray(out, mu.dtype), jnp.asarray(wb, mu.dtype)))
        cw = out[:, :, None] * wb[None]
        vbar[b] = float(np.sum(cw * member_var) / np.sum(cw))
    scales = np.maximum((r2 - 2 * v * (m - 1) / m) / vbar, float(floor))
    return DistanceFit(edges, scales, r2, v, vbar)
