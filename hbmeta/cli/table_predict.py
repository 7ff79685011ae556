"""``hbmeta predict RUN --support FILE`` for a run on a ``[data]`` table: a new group's rows in, original units out.

The support file is a table (``.csv`` or ``.parquet``) with the run's input
columns and its target column: the rows of one new group (a task column, if
present, is ignored). The query file, if given, has the input columns; by
default the support rows' inputs are predicted. The rows are encoded with the
run's own standardisation (fitted on its training groups), every posterior
draw is adapted to the support rows, and the predictive mean, standard
deviation and central 50% and 90% intervals come back in the target's
original units, one line per query row after its input columns.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

from hbmeta.cli.userdata import write_csv
from hbmeta.predict.predictive import sample_predictive
from hbmeta.predict.summary import summarize
from hbmeta.run.table_data import plot_groups
from hbmeta.tasks.batch import make_tasks, with_query_inputs
from hbmeta.tasks.table import read_table


def _read(path, what):
    try:
        return read_table(path)
    except ValueError as err:
        raise ValueError(f"{what} {err}") from None


def predict_table(loaded, *, support, query=None, out=None, plot=None, seed: int = 0, stream=None) -> np.ndarray:
    """Predict a new group of a table run (module docstring); returns the numeric table written."""
    scaler = loaded.scaler
    sup = _read(support, "support")
    try:
        xs, ys = scaler.encode(sup), scaler.encode_y(sup)
    except ValueError as err:
        raise ValueError(f"support file {support}: {err}") from None
    qry = sup if query is None else _read(query, "query")
    try:
        xq = scaler.encode(qry)
    except ValueError as err:
        raise ValueError(f"query file {query}: {err}") from None
    if len(xs) == 0:
        raise ValueError(f"support file {support} has no rows; expected the rows of one group")
    tasks = with_query_inputs(make_tasks(xs[None], ys[None, :, None], xs[None], ys[None, :, None]), xq)
    key = jax.random.key(seed)
    summary = summarize(sample_predictive(loaded.posterior, tasks, key=key), levels=(0.5, 0.9))
    to, sd = scaler.y_to_original, scaler.sd_to_original
    cols = [to(summary.mean[0, :, 0]), sd(summary.sd[0, :, 0])]
    for level in (0.5, 0.9):
        lo, hi = summary.intervals[level]
        cols += [to(lo[0, :, 0]), to(hi[0, :, 0])]
    header = list(scaler.x_columns) + ["mean", "sd", "lo_50", "hi_50", "lo_90", "hi_90"]
    inputs = [qry[c].tolist() for c in scaler.x_columns]
    rows = [[*(v if isinstance(v, str) else float(v) for v in xs_row), *(float(c[i]) for c in cols)]
            for i, xs_row in enumerate(zip(*inputs))]
    write_csv(out if out is not None else (sys.stdout if stream is None else stream), header, rows)
    if plot is not None:
        if scaler.num_features != 1 or scaler.categories:
            raise ValueError(f"--plot draws one numeric input against the target; this run has inputs "
                             f"{list(scaler.x_columns)} ({scaler.num_features} features)")
        c = scaler.x_columns[0]
        order = np.argsort(qry[c].to_numpy(dtype=float))
        x = qry[c].to_numpy(dtype=float)[order]
        group = {"name": "your group", "x_support": sup[c].to_numpy(dtype=float),
                 "y_support": sup[scaler.y_column].to_numpy(dtype=float), "x_query": [], "y_query": []}
        plot_groups(plot, [group], {loaded.posterior.method: [(x, cols[0][order], cols[4][order], cols[5][order])]},
                    xlabel=c, ylabel=scaler.y_column, title=f"{loaded.config.model.name}: predictive for your group")
    if out is not None:
        print(f"hbmeta: wrote {len(rows)} predictions to {out}" + (f" and the picture {plot}" if plot else ""),
              file=sys.stderr)
    return np.column_stack(cols)
