"""The scale of a classification ensemble's task-level posteriors, chosen on the folds.

The second-moment identity of :mod:`hbmeta.inference.holdout` holds for class probabilities
too: with e_y the one-hot label, ``mean_m ‖e_y − p_m‖² = ‖e_y − p̄‖² +
mean_m ‖p_m − p̄‖²``, so the Brier score of the M-member mixture on a new task
is ``B_1 − d(M − 1)/M``, ``B_1`` a member's Brier score on the tasks it left
out and ``d`` half the mean squared gap of two members' probabilities there
(:func:`mixture_brier`). Each τ_m is fitted for its member alone, and mixed
over M members the predictive is under-confident; so every τ_m² is
multiplied by the c of :data:`CLASS_SCALES` whose estimated mixture Brier
score is lowest (a proper score of the mixture itself, with no M-member
prediction needed). c = 1 keeps the members' own fits. Near its minimum the
mixture's Brier score changes little with c (on development draws of
``blobs``, by under 0.001 between c = 0.5 and 1 while the ECE changed by
0.02–0.03), so the choice is noisy; fitting each τ_m on one half of its
fold and scoring c on the other half did not change it.

So the Brier score's c is then checked against the mixture's reliability gap
(:func:`reliability_gaps`): for a calibrated predictive, E[e_y | p̄] = p̄, so
E⟨e_y − p̄, p̄⟩ = 0; it is positive when p̄ is under-confident and negative
when over-confident. Both terms are estimated without bias from the members
that left each task out, as the Brier score is. If the gap at the Brier
score's c is more than :data:`RELIABILITY_Z` standard errors (over the tasks)
from zero, the c of the grid whose estimated gap is nearest zero is taken
instead; otherwise the Brier score's c stays. Moving c only on that evidence
matters: choosing c by the gap alone also moved it where the gap was small
and its estimate noisy, and made well-calibrated mixtures over-confident.

Every member is linearised once and conditioned for all the candidate c
(:func:`~hbmeta.model.task_scales.task_predictive_scales`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hbmeta.inference.fold_scores import _moments
from hbmeta.model.task_scales import task_predictive_scales

CLASS_SCALES = (0.25, 0.5, 0.7, 1.0, 2.0, 4.0)  # c on every τ_m² tried (mixture_brier)
RELIABILITY_Z = 2.0  # standard errors of the reliability gap at the Brier score's c before c moves (reliability_gaps)


class ClassScale(NamedTuple):
    """The c on every τ_m² of a classification ensemble (:func:`fit_class_scale`).

    - ``scale``: c; ``rule``: ``"mixture Brier"`` (the lowest estimated Brier score) or ``"mixture
      reliability"`` (the Brier score's c had a reliability gap over :data:`RELIABILITY_Z` standard errors
      from zero, so the c whose gap is nearest zero).
    - ``brier_scores``: ``{c: minus the estimated mixture Brier score}`` (:func:`mixture_brier`).
    - ``gaps``: ``{c: (estimated reliability gap, its standard error over the tasks)}`` (:func:`reliability_gaps`).
    """

    scale: float
    rule: str
    brier_scores: dict
    gaps: dict


def mixture_brier(probs, y, out, w) -> float:
    """The Brier score of the M-member mixture on new tasks, from the members' out-of-sample predictions.

    ``probs`` ``(M, T, Q, k)``: each member's class probabilities on every
    training task; ``y`` ``(T, Q)`` integer labels; ``out`` ``(M, T)`` 1 where
    member m did not train on task j; ``w`` ``(T, Q)`` point weights. With e_y
    one-hot, ``mean_m ‖e_y − p_m‖² = ‖e_y − p̄‖² + mean_m ‖p_m − p̄‖²`` and M
    members spread by ``d(M − 1)/M`` in expectation, so

        B_M = B_1 − d (M − 1)/M,

    ``B_1`` the out-of-sample members' mean Brier score ``Σ_i (e_y,i − p_m,i)²``
    and ``d`` half the mean squared gap of two of them (the r² and v of
    :func:`~hbmeta.inference.fold_scores._moments` on probabilities, times k).

    Example:
        >>> import numpy as np
        >>> p = np.tile(np.array([0.6, 0.4]), (2, 1, 1, 1))   # two identical members, one task, one point
        >>> round(mixture_brier(p, np.array([[0]]), np.ones((2, 1)), np.ones((1, 1))), 6)  # 0.4² + 0.4²
        0.32
    """
    probs = jnp.asarray(probs)
    k = probs.shape[-1]
    onehot = jax.nn.one_hot(jnp.asarray(y), k, dtype=probs.dtype)
    r2, v = _moments(probs, onehot, jnp.asarray(out), jnp.asarray(w, probs.dtype))
    m = probs.shape[0]
    return float(k * (r2 - v * (m - 1) / m))


def reliability_gaps(probs, y, out, w) -> np.ndarray:
    """The M-member mixture's reliability gap ⟨e_y − p̄, p̄⟩ on new tasks, one estimate per training task.

    ``probs`` ``(M, T, Q, k)``, ``y``, ``out`` and ``w`` as in :func:`mixture_brier`. For a calibrated
    predictive (E[e_y | p̄] = p̄) the gap's expectation is zero; it is positive when p̄ is under-confident.
    With p̄ the mean of M members, E p̄_y = E p_m,y and E‖p̄‖² = E‖p_m‖²/M + (1 − 1/M) E⟨p_a, p_b⟩ (a ≠ b),
    so from the n ≥ 2 members that left task j out, per point

        g = mean_a p_a,y − mean_a ‖p_a‖² / M − (1 − 1/M) mean_{a≠b} ⟨p_a, p_b⟩,

    averaged over the task's points with weights ``w``. Returns ``(T',)``: the tasks with two or more
    out-of-sample members. With every member out of sample it is the mixture's own gap exactly.

    Example:
        >>> import numpy as np
        >>> p = np.tile(np.array([0.6, 0.4]), (2, 1, 1, 1))   # two identical members, one task, one point
        >>> reliability_gaps(p, np.array([[0]]), np.ones((2, 1)), np.ones((1, 1)))  # 0.6 − (0.6² + 0.4²)
        array([0.08])
    """
    probs = np.asarray(probs, np.float64)
    out = np.asarray(out, np.float64)
    w = np.asarray(w, np.float64)
    m = probs.shape[0]
    n = out.sum(0)  # (T,)
    keep = n >= 2
    o = out[:, :, None]  # (M, T, 1)
    py = np.take_along_axis(probs, np.broadcast_to(np.asarray(y)[None, ..., None], (*probs.shape[:-1], 1)), -1)[..., 0]
    sq = np.sum(probs ** 2, -1)  # (M, T, Q)
    hit = (py * o).sum(0) / np.maximum(n, 1)[:, None]
    own = (sq * o).sum(0) / np.maximum(n, 1)[:, None]
    total = (probs * o[..., None]).sum(0)  # (T, Q, k)
    cross = (np.sum(total ** 2, -1) - (sq * o).sum(0)) / np.maximum(n * (n - 1), 1)[:, None]
    g = hit - own / m - (1 - 1 / m) * cross  # (T, Q)
    return (np.sum(g * w, -1) / np.sum(w, -1))[keep]


def fit_class_scale(spec, flat_theta, tasks, out, taus, class_scales, w) -> ClassScale:
    """The c of ``class_scales`` on every τ_m²: the lowest estimated mixture Brier score, checked by the reliability gap.

    ``flat_theta`` ``(M, P)`` the members, ``taus`` ``(M,)`` their own τ_m, ``out`` and ``w`` as in
    :func:`mixture_brier`; of equal scores the smaller c is kept. If the estimated reliability gap
    (:func:`reliability_gaps`, its mean over the tasks) at that c is more than :data:`RELIABILITY_Z`
    standard errors from zero, the c whose gap is nearest zero is taken instead (module docstring).
    """
    order = sorted(class_scales)
    # each member linearised once, its predictive conditioned for every c (task_predictive_scales)
    probs = jnp.stack([task_predictive_scales(spec, jnp.asarray(flat_theta[m]), tasks,
                                              taus=float(taus[m]) * np.sqrt(order)).probs
                       for m in range(flat_theta.shape[0])], axis=1)  # (scales, M, T, Q, k)
    scores = {c: -mixture_brier(probs[i], tasks.y_query, out, w) for i, c in enumerate(order)}
    gaps = {}
    for i, c in enumerate(order):
        g = reliability_gaps(probs[i], tasks.y_query, out, w)
        se = float(np.std(g, ddof=1) / np.sqrt(len(g))) if len(g) > 1 else float("inf")
        gaps[c] = (float(np.mean(g)) if len(g) else float("nan"), se)
    return ClassScale(*choose_class_scale(scores, gaps), scores, gaps)


def choose_class_scale(brier_scores: dict, gaps: dict, *, z: float = RELIABILITY_Z) -> tuple[float, str]:
    """``(c, rule)`` from ``{c: minus the estimated Brier score}`` and ``{c: (gap, standard error)}``.

    The c with the highest score (the smaller of equal ones), unless its gap is more than ``z`` standard
    errors from zero; then the c whose gap is nearest zero (``rule`` ``"mixture reliability"``).

    Example:
        >>> scores = {0.5: -0.34, 1.0: -0.33}
        >>> choose_class_scale(scores, {0.5: (0.001, 0.007), 1.0: (0.010, 0.007)})   # 1.4 s.e.: kept
        (1.0, 'mixture Brier')
        >>> choose_class_scale(scores, {0.5: (0.001, 0.007), 1.0: (0.016, 0.007)})   # 2.3 s.e.: moved
        (0.5, 'mixture reliability')
    """
    best = max(sorted(brier_scores), key=brier_scores.get)
    gap, se = gaps[best]
    if len(brier_scores) > 1 and abs(gap) > z * se:
        return min(sorted(gaps), key=lambda c: abs(gaps[c][0])), "mixture reliability"
    return best, "mixture Brier"
