"""``hbmeta predict``: adapted predictions of a finished run for a user's own support set.

Every posterior draw θˢ of the run is adapted to the support set by the run's
rule (φ̂ˢ = θˢ − α∇L(S; θˢ), as many steps as configured) and predicts the
query inputs; the output has one line per query input: the predictive mean,
standard deviation and central 50% and 90% intervals (regression, the
mixture over draws with its noise), or the class probabilities and the most
probable class (classification).
"""

from __future__ import annotations

import sys

import jax
import numpy as np

from hbmeta.cli.table_predict import predict_table
from hbmeta.cli.userdata import read_query, read_support, write_csv
from hbmeta.plots import plot_predictive_band
from hbmeta.predict.predictive import sample_predictive
from hbmeta.predict.summary import summarize
from hbmeta.run import build as _build
from hbmeta.run.rundir import load_run
from hbmeta.tasks.batch import make_tasks, with_query_inputs


def predict_command(run, *, support, query=None, out=None, plot=None, seed: int = 0, stream=None) -> np.ndarray:
    """Read the run and the files, predict, write CSV (``out`` or ``stream``); returns the table."""
    loaded = load_run(run)
    if loaded.scaler is not None:  # a run on a [data] table: the support file is a table of the run's columns
        return predict_table(loaded, support=support, query=query, out=out, plot=plot, seed=seed, stream=stream)
    cfg = loaded.config
    d = cfg.family.input_dim
    x, y = read_support(support, input_dim=d, regression=cfg.regression,
                        num_classes=None if cfg.regression else cfg.family.output_dim)
    if plot is not None and (d != 1 or not cfg.regression):
        raise ValueError(f"--plot draws a band for one input and a real target; this model has {d} input(s)"
                         + ("" if cfg.regression else " and class labels"))
    if query is not None:
        xq = read_query(query, input_dim=d)
    elif d == 1 and hasattr(family := _build.train_family(cfg), "x_range"):
        lo, hi = family.x_range
        xq = np.linspace(lo, hi, 101, dtype=np.float32)[:, None]
    else:
        xq = x
    tasks = make_tasks(x[None], y[None], x[None], y[None])
    tasks = with_query_inputs(tasks, xq)
    key = jax.random.key(seed)
    pred = sample_predictive(loaded.posterior, tasks, key=key)
    summary = summarize(pred, levels=(0.5, 0.9))
    xcols = ["x"] if d == 1 else [f"x{i}" for i in range(d)]
    if cfg.regression:
        header = xcols + ["mean", "sd", "lo_50", "hi_50", "lo_90", "hi_90"]
        cols = [summary.mean[0, :, 0], summary.sd[0, :, 0], *summary.intervals[0.5], *summary.intervals[0.9]]
        cols = [cols[0], cols[1], cols[2][0, :, 0], cols[3][0, :, 0], cols[4][0, :, 0], cols[5][0, :, 0]]
    else:
        k = summary.probs.shape[-1]
        header = xcols + ["label"] + [f"p_{c}" for c in range(k)]
        cols = [summary.label[0].astype(float)] + [summary.probs[0, :, c] for c in range(k)]
    table = np.column_stack([xq] + [np.asarray(c, dtype=np.float64) for c in cols])
    rows = [[float(v) if j != d or cfg.regression else int(v) for j, v in enumerate(r)] for r in table]
    write_csv(out if out is not None else (sys.stdout if stream is None else stream), header, rows)
    if plot is not None:
        band_x = np.linspace(float(xq.min()), float(xq.max()), max(len(xq), 2))
        plot_predictive_band(loaded.posterior, tasks, plot, x=band_x, key=key, num_tasks=1,
                             title=f"{cfg.model.name}: predictive for your support set")
    if out is not None:
        print(f"hbmeta: wrote {len(rows)} predictions to {out}" + (f" and the picture {plot}" if plot else ""),
              file=sys.stderr)
    return table
