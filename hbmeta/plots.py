"""Pictures of a posterior and its predictive, written as PNG files (matplotlib, Agg).

- :func:`plot_trace`, :func:`plot_rank`: scalar sites and invariant functionals.
- :func:`plot_predictive_band`: predictive band per task with sampled adapted functions.
- :func:`plot_calibration`: observed frequency against confidence level (regression).
- :func:`plot_reliability`: reliability diagram (classification).

Figures are built on ``matplotlib.figure.Figure`` (no pyplot, no global
backend state) and written atomically. Every function returns the path.
The numbers printed on the pictures (calibration error, ECE) come from
:mod:`hbmeta.predict.metrics`, so they equal the run's metrics.
"""

from __future__ import annotations

import math
import os

import numpy as np

from hbmeta.base.files import atomic_write
from hbmeta.base.validate import check_positive_int, check_type
from hbmeta.predict.metrics import (
    calibration_curve,
    calibration_error,
    calibration_standard_errors,
    expected_calibration_error,
    reliability_curve,
)
from hbmeta.predict.predictive import Predictive, sample_predictive
from hbmeta.predict.summary import summarize
from hbmeta.tasks.batch import TaskBatch, with_query_inputs

__all__ = ["plot_calibration", "plot_predictive_band", "plot_rank", "plot_reliability", "plot_trace"]

_BAND = "#1f77b4"


def _figure(rows, cols, *, width=3.4, height=2.6, **kwargs):
    from matplotlib.figure import Figure  # matplotlib (and ArviZ below) only when drawing: hbmeta.plots stays light

    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    return fig, axes


def _save(fig, path) -> str:
    path = os.fspath(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    return path


def _check_path(path):
    if not str(os.fspath(path)).lower().endswith(".png"):
        raise ValueError(f"path={os.fspath(path)!r}; expected a file name ending in .png")


def _quantities(source, tasks, reference, key, max_quantities):
    from hbmeta.diagnostics.diagnose import diagnostic_draws  # imports ArviZ: only when a trace or rank is drawn

    check_positive_int("max_quantities", max_quantities)
    draws = diagnostic_draws(source, tasks=tasks, reference=reference, key=key)
    names = list(draws)[: int(max_quantities)]
    if not names:
        raise ValueError("nothing to plot: no scalar sites and no reference predictions; pass tasks= or reference=")
    return {n: np.asarray(draws[n], dtype=float) for n in names}


def plot_trace(source, path, *, tasks=None, reference=None, key=None, max_quantities: int = 6) -> str:
    """Trace (right) and per-chain histogram (left) of scalar sites and invariant functionals.

    ``source``: a :class:`~hbmeta.Posterior` or ArviZ data from
    :func:`~hbmeta.to_arviz`; with a Posterior, ``tasks`` or ``reference``
    give the reference predictions ``f[task, point, output]`` (raw weights
    are not plotted: they are not identifiable).
    """
    _check_path(path)
    q = _quantities(source, tasks, reference, key, max_quantities)
    fig, axes = _figure(len(q), 2, width=4.0, height=1.7)
    for row, (name, v) in enumerate(q.items()):
        for c in range(v.shape[0]):
            axes[row, 0].hist(v[c], bins=30, histtype="step", color=f"C{c}", density=True)
            axes[row, 1].plot(v[c], color=f"C{c}", lw=0.6, alpha=0.8, label=f"chain {c}")
        axes[row, 0].set_ylabel(name, fontsize=9)
        axes[row, 0].set_yticks([])
    axes[0, 1].set_title("trace")
    axes[0, 0].set_title("density per chain")
    handles, labels = axes[0, 1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 8), fontsize=8, frameon=False)
    axes[-1, 1].set_xlabel("draw")
    return _save(fig, path)


def plot_rank(source, path, *, tasks=None, reference=None, key=None, max_quantities: int = 6) -> str:
    """Rank plots: histograms of each chain's ranks among all draws; flat bars mean the chains agree.

    The dashed line is the count expected when chains mix (uniform ranks).
    """
    _check_path(path)
    q = _quantities(source, tasks, reference, key, max_quantities)
    cols = min(3, len(q))
    rows = math.ceil(len(q) / cols)
    fig, axes = _figure(rows, cols)
    for ax, (name, v) in zip(axes.ravel(), q.items()):
        chains, draws = v.shape
        ranks = np.argsort(np.argsort(v.ravel(), kind="stable"), kind="stable").reshape(v.shape)
        num_bins = min(20, max(draws // 5, 2))
        bins = np.linspace(0, chains * draws, num_bins + 1)
        width = bins[1] - bins[0]
        for c in range(chains):
            counts, _ = np.histogram(ranks[c], bins=bins)
            height = 0.4 * counts / (draws / num_bins)  # uniform ranks give 0.4
            ax.bar(bins[:-1] + width / 2, height, width=width * 0.95, bottom=c, color=f"C{c}", alpha=0.75)
            ax.axhline(c + 0.4, color="k", ls="--", lw=0.7)
        ax.set_title(name, fontsize=9)
        ax.set_yticks(np.arange(chains) + 0.4, [f"chain {c}" for c in range(chains)], fontsize=8)
        ax.set_xlabel("rank among all draws", fontsize=8)
    for ax in axes.ravel()[len(q):]:
        ax.set_visible(False)
    return _save(fig, path)


def _truth_values(truth, j, x, num_tasks):
    if truth is None:
        return None
    if callable(truth):
        return np.asarray(truth(j, x)).reshape(-1)
    t = np.asarray(truth)
    if t.shape[0] != num_tasks or t.reshape(num_tasks, -1).shape[1] != x.shape[0]:
        raise ValueError(f"truth has shape {t.shape}; expected ({num_tasks}, {x.shape[0]}) values on the grid x, "
                         "or a callable truth(task_index, x)")
    return t.reshape(num_tasks, -1)[j]


def plot_predictive_band(posterior, tasks, path, *, x, key, truth=None, num_tasks: int = 6, num_functions: int = 5,
                         levels=(0.5, 0.9), title=None) -> str:
    """Posterior-predictive band per task on a dense grid ``x`` (1-D inputs, one output).

    Each panel shows the predictive mean, the central intervals at ``levels``
    (the mixture's quantiles, noise included), ``num_functions`` sampled
    adapted functions f_φ̂ˢ (thin lines), the support points and, when
    ``truth`` is given (array ``(T, G)`` on the grid or a callable
    ``truth(task_index, x)``), the true function (dashed).
    """
    _check_path(path)
    check_type("tasks", tasks, TaskBatch)
    if tasks.x_support.shape[-1] != 1 or tasks.y_support.ndim != 3 or tasks.y_support.shape[-1] != 1:
        raise ValueError(f"tasks have inputs {tasks.x_support.shape} and targets {tasks.y_support.shape}; "
                         "expected one input feature and one real output for a band plot")
    xs = np.asarray(x, dtype=float).reshape(-1)
    if xs.size < 2:
        raise ValueError(f"x has {xs.size} value(s); expected a grid of at least 2 inputs")
    n = min(int(num_tasks), tasks.num_tasks)
    shown = tasks.take(np.arange(n))
    pred = sample_predictive(posterior, with_query_inputs(shown, xs[:, None]), key=key)
    summary = summarize(pred, levels=levels)
    mu = pred.mean.reshape((-1,) + pred.mean.shape[2:])
    pick = np.unique(np.linspace(0, mu.shape[0] - 1, min(int(num_functions), mu.shape[0])).astype(int))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = _figure(rows, cols)
    for j, ax in enumerate(axes.ravel()[:n]):
        for i, level in enumerate(sorted(summary.intervals, reverse=True)):
            lo, hi = summary.intervals[level]
            ax.fill_between(xs, lo[j, :, 0], hi[j, :, 0], color=_BAND, alpha=0.18 + 0.17 * i, lw=0,
                            label=f"{int(round(100 * level))}% interval")
        for k, s in enumerate(pick):
            ax.plot(xs, mu[s, j, :, 0], color="C1", lw=0.8, alpha=0.7, label="sampled adapted f" if k == 0 else None)
        ax.plot(xs, summary.mean[j, :, 0], color="navy", lw=1.6, label="predictive mean")
        t = _truth_values(truth, j, xs, tasks.num_tasks)
        if t is not None:
            ax.plot(xs, t, color="k", ls="--", lw=1.2, label="true function")
        keep = slice(None) if shown.support_mask is None else np.asarray(shown.support_mask[j])
        ax.scatter(np.asarray(shown.x_support[j, keep, 0]), np.asarray(shown.y_support[j, keep, 0]), color="red",
                   zorder=5, s=22, edgecolor="k", label="support points")
        ax.set_title(f"task {j}", fontsize=9)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _as_dict(predictives):
    if isinstance(predictives, Predictive):
        return {None: predictives}
    if isinstance(predictives, dict) and predictives and all(isinstance(p, Predictive) for p in predictives.values()):
        return predictives
    raise ValueError(f"predictive is a {type(predictives).__name__}; expected hbmeta.Predictive or a dict "
                     "label -> Predictive")


def plot_calibration(predictive, tasks, path, *, levels=None, title=None) -> str:
    """Calibration curve: observed frequency of F(y) ≤ q against the confidence level q.

    ``predictive``: a :class:`~hbmeta.Predictive` of ``tasks`` or a dict
    label → Predictive to compare several; the diagonal is perfect
    calibration, curves below it are overconfident in the lower tail. With
    two or more tasks the grey band is ±2 standard errors of each level's
    frequency over the tasks (of the first predictive,
    :func:`~hbmeta.predict.metrics.calibration_standard_errors`): how far a
    calibrated predictive's curve strays by chance.
    """
    _check_path(path)
    fig, axes = _figure(1, 1, width=4.2, height=3.8)
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], color="k", ls="--", lw=1, label="perfect calibration")
    for i, (label, pred) in enumerate(_as_dict(predictive).items()):
        if not pred.regression:
            raise ValueError("plot_calibration needs a regression predictive; use plot_reliability for classes")
        if i == 0 and tasks.num_tasks >= 2:  # the band a calibrated predictive stays in, from sampling the tasks
            q, se = (np.asarray(a) for a in calibration_standard_errors(pred.mean, pred.noise, tasks.y_query,
                                                                           tasks.query_mask, levels=levels))
            ax.fill_between(q, q - 2 * se, q + 2 * se, color="0.85", lw=0,
                            label=f"±2 s.e. over the {tasks.num_tasks} tasks")
        q, freq = calibration_curve(pred.mean, pred.noise, tasks.y_query, tasks.query_mask, levels=levels)
        q, freq = np.asarray(q), np.asarray(freq)
        err = float(calibration_error(pred.mean, pred.noise, tasks.y_query, tasks.query_mask, levels=levels))
        name = f"{label}: " if label is not None else ""
        ax.plot(q, freq, marker="o", ms=3, color=f"C{i}", label=f"{name}calibration error {err:.3f}")
    ax.set_xlabel("confidence level q")
    ax.set_ylabel("observed frequency of F(y) ≤ q")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title or "calibration curve", fontsize=10)
    return _save(fig, path)


def plot_reliability(predictive, tasks, path, *, num_bins: int = 15, title=None) -> str:
    """Reliability diagram (classification): accuracy against confidence in equal-width bins, with counts."""
    _check_path(path)
    pred = _as_dict(predictive)
    if len(pred) != 1 or next(iter(pred.values())).regression:
        raise ValueError("plot_reliability needs one classification predictive")
    pred = next(iter(pred.values()))
    conf, acc, count = (np.asarray(a) for a in reliability_curve(pred.probs, tasks.y_query, tasks.query_mask,
                                                                   num_bins=num_bins))
    edges = np.linspace(0, 1, num_bins + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, 1 / num_bins
    ece = float(expected_calibration_error(pred.probs, tasks.y_query, tasks.query_mask, num_bins=num_bins))
    fig, axes = _figure(2, 1, width=4.6, height=2.3, sharex=True, height_ratios=[3, 1])
    ax = axes[0, 0]
    ax.bar(centres, np.nan_to_num(acc), width=width * 0.95, color=_BAND, alpha=0.8, label="accuracy")
    ax.bar(centres, np.nan_to_num(np.abs(conf - acc)), bottom=np.nan_to_num(np.minimum(acc, conf)),
           width=width * 0.95, facecolor="none", edgecolor="C3", hatch="///", lw=0.8, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], color="k", ls="--", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title or f"reliability diagram (ECE {ece:.3f})", fontsize=10)
    axes[1, 0].bar(centres, count, width=width * 0.95, color="grey")
    axes[1, 0].set_xlabel("confidence (max class probability)")
    axes[1, 0].set_ylabel("points")
    axes[1, 0].set_xlim(0, 1)
    return _save(fig, path)
