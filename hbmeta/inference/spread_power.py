"""The power p of the per-task scale h_j = ((s_j²/s̄² + κ)/(1 + κ))^p, chosen on the training folds.

:mod:`hbmeta.model.support_spread` defines the factor: (τ², σ²) of task j are
multiplied by h_j, a power of the spread s_j² of its support targets, so that
tasks of a larger scale get wider intervals. An ensemble's members, scaled as
:func:`~hbmeta.inference.holdout.holdout_task_scale` scales them, give
out-of-sample predictions on every training task; for each p in
:data:`SPREAD_POWERS`, every member's variance on task j becomes ``k_p h_j
v_m``, with ``k_p`` the constant that keeps the mean out-of-sample variance
where c put it (the second-moment rule still holds on average, the variance
moves between tasks), ν is chosen again by the folds' likelihood
(:func:`~hbmeta.inference.fold_scores.fit_tails`), and the p whose mixture has the best out-of-sample
log-likelihood on the folds is kept (:func:`~hbmeta.inference.fold_scores.mixture_fold_score`,
with the spread the folds' members lack against M added). p = 0 is the model
without the factor, so it is kept when no power does better. No held-out task
is used.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from hbmeta.inference.fold_scores import fit_tails, mixture_fold_score, scale_nodes
from hbmeta.model.support_spread import spread_factor

SPREAD_POWERS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)  # the p tried (0: one scale for every task)


class SpreadFit(NamedTuple):
    """The per-task scale chosen on the folds (:func:`fit_spread_power`).

    - ``power``: p; ``ref``: s̄², the mean support spread of the training tasks.
    - ``norm``: k_p, the factor on every member's (τ², σ²) that keeps the mean out-of-sample variance.
    - ``tail_dof``, ``tail_nodes``, ``tail_scores``: ν chosen again at this p (as :func:`fit_tails` returns them).
    - ``scores``: ``{p: the folds' mixture log-likelihood per point}`` for every p tried.
    """

    power: float
    ref: float
    norm: float
    tail_dof: float
    tail_nodes: np.ndarray
    tail_scores: dict | None
    scores: dict


def fit_spread_power(mu, var, y, out, w, s2, spread, *, powers=SPREAD_POWERS, tails: bool = True,
                     base_tails=None) -> SpreadFit:
    """p, s̄² and k_p of the per-task scale by the folds' out-of-sample log-likelihood (module docstring).

    Args:
        mu, var: ``(M, T, Q, o)`` every member's predictive mean and variance on every training task, after c.
        y: ``(T, Q, o)`` the query targets; ``out``: ``(M, T)`` 1 where member m did not train on task j;
            ``w``: ``(T, Q)`` point weights.
        s2: ``(T,)`` the support spread s_j² of every training task
            (:func:`~hbmeta.model.support_spread.support_spread`).
        spread: v, half the mean squared gap of two members on the folds (added as in
            :func:`~hbmeta.inference.fold_scores.mixture_fold_score`).
        powers: the p tried; must include 0.
        tails: choose ν at every p (else one Gaussian per member).
        base_tails: ``(ν, u, scores)`` already chosen at p = 0 (with c), used there as they are, so that
            p = 0 reproduces the fit without the factor exactly; None chooses ν at p = 0 too.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> amp = rng.uniform(0.5, 3.0, 80)  # task scales; the errors grow with them
        >>> y = amp[:, None, None] * rng.normal(size=(80, 10, 1))
        >>> mu = y + 0.3 * amp[:, None, None] * rng.normal(size=(4, 80, 10, 1))
        >>> out = np.zeros((4, 80)); out[[0, 1], ::2] = 1; out[[2, 3], 1::2] = 1
        >>> fit = fit_spread_power(mu, np.full(mu.shape, 0.1), y, out, np.ones((80, 10)), amp**2, 0.0, tails=False)
        >>> bool(fit.power >= 0.75), sorted(fit.scores) == sorted(SPREAD_POWERS)
        (True, True)
    """
    if 0.0 not in tuple(float(p) for p in powers) or any(float(p) < 0 for p in powers):
        raise ValueError(f"powers={powers!r}; expected powers p ≥ 0 that include 0 (one scale for every task)")
    mu, var = jnp.asarray(mu), jnp.asarray(var)
    s2 = np.asarray(s2, dtype=np.float64)
    ref = float(np.mean(s2))
    c = jnp.asarray(out, var.dtype)[:, :, None, None] * jnp.asarray(w, var.dtype)[None, :, :, None]
    total = float(jnp.sum(c * var))
    best, scores = None, {}
    for p in sorted(float(x) for x in powers):
        if p > 0 and not ref > 0:
            continue  # every support set flat: nothing to scale by
        h = jnp.asarray(spread_factor(s2, p, ref if ref > 0 else 1.0), var.dtype)[None, :, None, None]
        norm = total / float(jnp.sum(c * var * h))
        scaled = var * (h * norm)
        if p == 0 and base_tails is not None:
            dof, nodes, tail_scores = base_tails
        elif tails:
            dof, nodes, tail_scores = fit_tails(mu, scaled, y, out, w)
        else:
            dof, nodes, tail_scores = math.inf, scale_nodes(math.inf), None
        scores[p] = mixture_fold_score(mu, scaled, y, out, w, nodes, spread)
        if best is None or scores[p] > best[0] + 1e-9:
            best = (scores[p], SpreadFit(p, ref, norm, dof, nodes, tail_scores, scores))
    return best[1]._replace(scores=scores)
