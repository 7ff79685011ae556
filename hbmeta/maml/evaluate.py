"""Few-shot evaluation: query loss after 0..n fine-tuning steps, with 95% intervals.

For each new task, θ is fine-tuned on the support set by repeated gradient
steps with the rule's α, and the query loss is recorded after every step
(the MAML sinusoid protocol of docs/references.md: 600 tasks, loss after 1, 5
and 10 steps).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hbmeta.adaptation.steps import GradientSteps, adapt
from hbmeta.tasks.batch import TaskBatch


class Evaluation(NamedTuple):
    """Query losses after fine-tuning.

    - ``steps``: ``(n+1,)`` step counts 0..n.
    - ``mean``: ``(n+1,)`` mean query loss over tasks.
    - ``ci95``: ``(n+1,)`` half-width of the 95% confidence interval of the mean,
      ``1.96 · sd / sqrt(T)``.
    - ``per_task``: ``(T, n+1)`` losses per task.
    - ``diverged``: ``(n+1,)`` tasks left out of ``mean`` and ``ci95`` after
      each step because fine-tuning diverged there (a loss that is not finite
      or above ``diverged_above``).
    - ``first_diverged``: ``(task, step)`` of the first divergence (the earliest step, then the
      lowest task index), or None; :func:`divergence_message` explains it.
    """

    steps: np.ndarray
    mean: np.ndarray
    ci95: np.ndarray
    per_task: np.ndarray
    diverged: np.ndarray
    first_diverged: tuple | None = None

    def at(self, step: int) -> tuple[float, float]:
        """``(mean, ci95)`` after ``step`` fine-tuning steps."""
        return float(self.mean[step]), float(self.ci95[step])


def finetune_losses(params, tasks: TaskBatch, *, rule: GradientSteps, num_steps: int, step_size=None):
    """``(T, num_steps+1)`` query losses after 0..num_steps gradient steps. Pure and jit-able."""
    loss_fn = rule.loss_fn
    alpha = rule.step_size if step_size is None else step_size

    def one(xs, ys, ms, xq, yq, mq):
        def step(p, _):
            q = loss_fn(rule.apply(p, xq), yq, mq)
            p = adapt(p, xs, ys, ms, apply=rule.apply, loss=loss_fn, step_size=alpha, num_steps=1)
            return p, q

        p, qs = jax.lax.scan(step, params, None, length=num_steps)
        last = loss_fn(rule.apply(p, xq), yq, mq)
        return jnp.concatenate([qs, last[None]])

    return jax.vmap(one)(*tasks.support(), *tasks.query())


def _jit_finetune(rule, num_steps):
    return jax.jit(lambda p, t, a: finetune_losses(p, t, rule=rule, num_steps=num_steps, step_size=a))


_cached_finetune = lru_cache(maxsize=16)(_jit_finetune)


def _compiled_finetune(rule, num_steps):
    """The jitted fine-tuning, reused across calls with the same rule (so a second call does not recompile)."""
    try:
        hash(rule)
    except TypeError:  # e.g. a pytree of step sizes in the rule
        return _jit_finetune(rule, num_steps)
    return _cached_finetune(rule, num_steps)


def evaluate(params, tasks: TaskBatch, *, rule: GradientSteps, num_steps: int = 10, step_size=None,
             diverged_above: float = math.inf) -> Evaluation:
    """Fine-tune θ on each task's support set and score the query set after each step.

    A task whose query loss after a step is not finite, or above
    ``diverged_above``, has diverged there: it is counted in
    ``Evaluation.diverged`` and left out of that step's mean and interval
    (``per_task`` keeps every value).

    Example:
        >>> import jax
        >>> from hbmeta import GradientSteps, Sinusoid, evaluate, mlp
        >>> net = mlp((1, 40, 40, 1)); theta = net.init(jax.random.key(0))
        >>> ev = evaluate(theta, Sinusoid(num_support=5).sample(jax.random.key(1), 50),
        ...               rule=GradientSteps(net.apply), num_steps=2)
        >>> ev.mean.shape
        (3,)
    """
    if int(num_steps) != num_steps or num_steps < 0:
        raise ValueError(f"num_steps={num_steps!r}; expected a non-negative integer")
    fn = _compiled_finetune(rule, int(num_steps))
    per_task = np.asarray(fn(params, tasks, rule.step_size if step_size is None else step_size))
    ok = np.isfinite(per_task) & (per_task <= diverged_above)
    n = ok.sum(axis=0)
    kept = np.where(ok, per_task, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, kept.sum(axis=0) / np.maximum(n, 1), np.nan)
        var = np.where(ok, (per_task - mean) ** 2, 0.0).sum(axis=0) / np.maximum(n - 1, 1)
        ci95 = np.where(n > 1, 1.96 * np.sqrt(var) / np.sqrt(np.maximum(n, 1)), np.where(n == 1, 0.0, np.nan))
    first = None
    if not ok.all():
        step = int(np.flatnonzero(~ok.all(axis=0))[0])
        first = (int(np.flatnonzero(~ok[:, step])[0]), step)
    return Evaluation(np.arange(num_steps + 1), mean, ci95, per_task, (~ok).sum(axis=0), first)


def divergence_message(ev: Evaluation, *, what: str = "adaptation.step_size") -> str:
    """One line on where fine-tuning diverged and what to change ("" if it did not).

    Example:
        >>> import numpy as np
        >>> ev = Evaluation(np.arange(3), None, None, np.array([[1.0, 5.0, np.inf]]), np.array([0, 0, 1]), (0, 2))
        >>> divergence_message(ev)
        'fine-tuning diverged on 1 of 1 tasks (first: task 0 after step 2, query loss inf, ...'
    """
    if ev.first_diverged is None:
        return ""
    task, step = ev.first_diverged
    value = ev.per_task[task, step]
    return (f"fine-tuning diverged on {int(ev.diverged.max())} of {ev.per_task.shape[0]} tasks (first: task {task} "
            f"after step {step}, query loss {value:.3g}, {'not finite' if not np.isfinite(value) else 'too large'}); "
            f"each gradient step overshoots where α·λ_max ≥ 2 (hbmeta.check_step_size): lower {what} "
            "or fine-tune fewer steps")
