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

Every member is linearised once and conditioned for all the candidate c
(:func:`~hbmeta.model.task_scales.task_predictive_scales`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hbmeta.inference.fold_scores import _moments
from hbmeta.model.task_scales import task_predictive_scales

CLASS_SCALES = (0.25, 0.5, 0.7, 1.0, 2.0, 4.0)  # c on every τ_m² tried (mixture_brier)


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


def fit_class_scale(spec, flat_theta, tasks, out, taus, class_scales, w) -> tuple[float, dict]:
    """``(c, {c: minus the estimated mixture Brier score})``: the c of ``class_scales`` on every τ_m² with the lowest.

    ``flat_theta`` ``(M, P)`` the members, ``taus`` ``(M,)`` their own τ_m, ``out`` and ``w`` as in
    :func:`mixture_brier`; of equal scores the smaller c is kept.
    """
    order = sorted(class_scales)
    # each member linearised once, its predictive conditioned for every c (task_predictive_scales)
    probs = jnp.stack([task_predictive_scales(spec, jnp.asarray(flat_theta[m]), tasks,
                                              taus=float(taus[m]) * np.sqrt(order)).probs
                       for m in range(flat_theta.shape[0])], axis=1)  # (scales, M, T, Q, k)
    scores = {c: -mixture_brier(probs[i], tasks.y_query, out, w) for i, c in enumerate(order)}
    return max(scores, key=scores.get), scores
