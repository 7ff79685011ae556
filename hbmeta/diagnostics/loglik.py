"""The per-task log-likelihood of query sets under a posterior predictive (for LOO), in float64.

For draw s and task j, ``Σ_q log p(y_q | φ̂ˢ_j)`` over the unmasked query points: Normal with the draw's σˢ (or
the task-level option's per-point sd) for regression, the class probability for classification. Computed a block
of tasks (and, for :func:`hbmeta.to_netcdf`, of draws) at a time.
"""

from __future__ import annotations

import numpy as np

from hbmeta.predict.predictive import Predictive
from hbmeta.tasks.batch import TaskBatch


def task_log_likelihood(pred: Predictive, tasks: TaskBatch, *, task_chunk: int = 16) -> np.ndarray:
    """Σ over a task's (unmasked) query points of log p(y | φ̂ˢ_j): ``(chain, draw, task)``, in float64.

    Computed ``task_chunk`` tasks at a time: the float64 temporaries take
    about ``5 · 8 · C·S·task_chunk·M·o`` bytes whatever the number of tasks
    (docs/scale.md, memory), beside the ``8 · C·S·T`` bytes of the result.
    """
    num_tasks = tasks.num_tasks
    out = np.empty(tuple(pred.y.shape[:2]) + (num_tasks,))
    sd = None if pred.noise is None else np.asarray(pred.noise)
    for j in range(0, num_tasks, task_chunk):
        part = slice(j, min(j + task_chunk, num_tasks))
        first = pred.mean[:, :, part] if pred.regression else pred.probs[:, :, part]
        block_sd = None if sd is None else (sd if sd.ndim == 2 else sd[:, :, part])
        out[:, :, part] = block_log_likelihood(first, block_sd, tasks, part)
    return out


def block_log_likelihood(first, sd, tasks: TaskBatch, part: slice) -> np.ndarray:
    """Per-task query log-likelihood ``(..., tasks in part)`` of one block of a predictive, in float64.

    ``first`` is μ ``(..., n, M, o)`` (regression, with ``sd`` either σˢ ``(...)`` per draw or the per-point sd
    shaped like μ) or p ``(..., n, M, k)`` (classification, ``sd`` None) for the tasks ``part``.
    """
    y_all = np.asarray(tasks.y_query[part])
    w = np.ones(y_all.shape[:2]) if tasks.query_mask is None else np.asarray(tasks.query_mask[part], float)
    if sd is not None:
        mu = np.asarray(first, np.float64)
        sd = np.asarray(sd, np.float64)
        sd = sd.reshape(sd.shape + (1,) * (mu.ndim - sd.ndim)) if sd.ndim < mu.ndim else sd
        y = y_all.astype(np.float64)
        logp = -0.5 * np.log(2 * np.pi * sd**2) - 0.5 * np.square((y - mu) / sd)
        per_point = np.sum(np.where(w[..., None] > 0, logp, 0.0), axis=-1)
    else:
        p = np.asarray(first, np.float64)
        y = np.where(w > 0, y_all, 0)
        py = np.take_along_axis(p, np.broadcast_to(y[..., None], p.shape[:-1] + (1,)), axis=-1)[..., 0]
        per_point = np.where(w > 0, np.log(np.maximum(py, np.finfo(np.float64).tiny)), 0.0)
    return np.sum(per_point * w, axis=-1)
