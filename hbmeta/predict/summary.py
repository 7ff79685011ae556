"""Summaries of a posterior predictive over its draws: mean, sd and central intervals per task and point.

Regression intervals are the exact quantiles of the predictive mixture (1/S) Σ_s N(μˢ, σˢ²), found by bisection
on its CDF; classification summaries are over the class probabilities pˢ.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hbmeta.base.validate import check_type
from hbmeta.predict.mixture import pit
from hbmeta.predict.predictive import Predictive


class PredictiveSummary(NamedTuple):
    """Summaries over draws of a :class:`Predictive`, per task and point.

    - ``mean``: predictive mean, ``(T, M, o)`` (regression) or the mean class
      probabilities ``(T, M, k)`` (classification).
    - ``sd``: predictive standard deviation: ``sqrt(Var_s μˢ + mean_s σˢ²)``,
      the mixture's, for regression; the spread of pˢ over draws for classification.
    - ``intervals``: dict level → ``(lo, hi)``: central intervals of the full
      predictive, the mixture's exact quantiles (noise included) for
      regression; of pˢ over draws for classification.
    - ``mean_intervals``: dict level → ``(lo, hi)`` of μˢ over draws (the band
      of adapted functions, without noise); None for classification.
    - ``probs``: mean class probabilities ``(T, M, k)`` (classification) else None.
    - ``label``: most probable class ``(T, M)`` (classification) else None.
    """

    mean: np.ndarray
    sd: np.ndarray
    intervals: dict
    mean_intervals: Any
    probs: Any
    label: Any



@jax.jit
def _mixture_quantile(mu, sd, q):
    """The q-quantile of (1/N) Σ_s N(μ_s, σ_s²) per point, by 60 bisection steps: mu ``(N, ...)``, sd (N,) or as mu."""
    sd = jnp.reshape(sd, (-1,) + (1,) * (mu.ndim - 1)) if sd.ndim == 1 else sd
    lo = jnp.min(mu - 10 * sd, axis=0)
    hi = jnp.max(mu + 10 * sd, axis=0)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = pit(mu, sd, mid) < q
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 60, body, (lo, hi))
    return 0.5 * (lo + hi)


def summarize(predictive: Predictive, *, levels=(0.5, 0.9)) -> PredictiveSummary:
    """Mean, standard deviation and central intervals per task and point.

    Regression intervals are the exact quantiles ``(1 ∓ l)/2`` of the mixture
    (1/S) Σ_s N(μˢ, σˢ²) (found by bisection on its CDF), so they are right
    even with few draws (a single MAML draw gives μ ± z σ); ``mean_intervals``
    are quantiles of μˢ alone over draws. σˢ is one value per draw or, with
    the task-level option, one per draw and point.

    Example:
        >>> import numpy as np
        >>> p = Predictive(np.zeros((1, 1, 1, 2, 1)), None, np.zeros((1, 1, 1, 2, 1)), np.ones((1, 1)), None, None)
        >>> lo, hi = summarize(p, levels=(0.9,)).intervals[0.9]
        >>> round(float(hi[0, 0, 0]), 3)
        1.645
    """
    check_type("predictive", predictive, Predictive)
    levels = tuple(float(level) for level in levels)
    if not levels or not all(0.0 < level < 1.0 for level in levels):
        raise ValueError(f"levels={levels!r}; expected one or more levels strictly between 0 and 1")
    if predictive.regression:
        mu = np.asarray(predictive.mean)
        mu = mu.reshape((-1,) + mu.shape[2:])
        sigma = np.asarray(predictive.noise)
        sigma = sigma.reshape((-1,) + sigma.shape[2:])  # (N,) σˢ, or (N, T, M, o) per-point sd (task-level)
        mean = mu.mean(axis=0)
        var = mu.var(axis=0) + np.mean(sigma**2, axis=0)
        intervals, mean_intervals = {}, {}
        for level in levels:
            lo, hi = (1 - level) / 2, (1 + level) / 2
            intervals[level] = tuple(np.asarray(_mixture_quantile(mu, sigma.astype(mu.dtype), q)) for q in (lo, hi))
            mean_intervals[level] = tuple(np.quantile(mu, [lo, hi], axis=0))
        return PredictiveSummary(mean, np.sqrt(var), intervals, mean_intervals, None, None)
    p = np.asarray(predictive.probs)
    p = p.reshape((-1,) + p.shape[2:])
    mean = p.mean(axis=0)
    intervals = {lv: tuple(np.quantile(p, [(1 - lv) / 2, (1 + lv) / 2], axis=0)) for lv in levels}
    label = np.where(np.isnan(mean).any(axis=-1), -1, np.argmax(np.nan_to_num(mean, nan=-1.0), axis=-1))
    return PredictiveSummary(mean, p.std(axis=0), intervals, None, mean, label)
