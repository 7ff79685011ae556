"""The per-task scale of the ensemble's task-level posteriors (issue 9): development draws only.

The linearised task posterior is Gaussian, so its variance does not depend on
the support targets: one (τ_m, σ_m) per member serves every task, too wide for
tasks of a small scale and too narrow for large ones (90% coverage by third of
the tasks ranked by their support spread, e.g. 0.94 / 0.89 / 0.81).
:func:`hbmeta.inference.holdout.holdout_task_scale` now multiplies task j's
(τ², σ²) by h_j = ((s_j²/s̄² + κ)/(1 + κ))^p, s_j² the spread of its support
targets, with p chosen on the training folds (:mod:`hbmeta.inference.spread_power`).

This script trains the default ensemble (8 members, |T| = 100, held-out folds)
on development draws (``DEV_SEED`` of ``calibration_gap.py``: never a reported
result) and scores 600 held-out tasks of each draw twice: with one scale for
every task (``spread_powers=(0.0,)``, the rule before) and with the p chosen on
the folds. Columns: p, ν, calibration error, 90% coverage (overall and by third
of the tasks ranked by support spread), NLL and MSE.

Usage:
    python bench/support_spread.py             # 14 draws, about 45 s a draw on 2 cores
    python bench/support_spread.py --draws 2
    python bench/support_spread.py --setup sinusoid_line --first 4 --draws 10
    python bench/support_spread.py --members 12    # the ensemble size of models/sinusoid.toml since 2026-12-06
"""

from __future__ import annotations

import os
import sys

import numpy as np

from hbmeta.inference.holdout import holdout_task_scale
from hbmeta.model.support_spread import support_spread

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from calibration_gap import calibration_error, coverage, held_out_mixture, trained_draws


def score(spec_task, theta, held, fit):
    """Held-out figures of the mixture with ``fit``'s τ_m, σ_m, nodes and per-task factor."""
    _, _, _, cdf, nll, mse = held_out_mixture(spec_task, theta, held, fit)
    s2 = np.asarray(support_spread(held.y_support, held.support_mask), np.float64)
    thirds = [coverage(cdf[g], 0.9) for g in np.array_split(np.argsort(s2, kind="stable"), 3)]
    return (calibration_error(cdf), coverage(cdf, 0.9), *thirds, nll, mse)


def main(argv=None):
    print("| draw | p | ν | calib. error | cov 90 | cov 90 low / mid / high third | NLL | MSE |\n"
          "|---|---|---|---|---|---|---|---|")
    totals = {"one": [], "chosen": []}
    for draw, spec_task, train, held, theta, index in trained_draws(argv, __doc__.splitlines()[0]):
        for name, powers in (("one", (0.0,)), ("chosen", None)):
            fit = holdout_task_scale(spec_task, theta, train, index, distance_bins=1,  # this study predates the factor
                                     **({} if powers is None else {"spread_powers": powers}))
            s = score(spec_task, theta, held, fit)
            totals[name].append(s)
            print(f"| {draw} | {fit.spread_power:g}{' (one scale)' if powers else ''} | {fit.tail_dof:g} | "
                  f"{s[0]:.4f} | {s[1]:.3f} | {s[2]:.3f} / {s[3]:.3f} / {s[4]:.3f} | {s[5]:.4f} | {s[6]:.4f} |",
                  flush=True)
    print("\n| per-task scale | mean calib. error | draws ≤ 0.02 | cov 90 in [0.88, 0.92] | every third ≥ 0.85 "
          "| mean NLL | largest NLL | mean MSE |\n|---|---|---|---|---|---|---|---|")
    for name, rows in totals.items():
        a = np.asarray(rows)
        n = len(a)
        print(f"| {'one scale (p = 0)' if name == 'one' else 'p chosen on the folds'} | {a[:, 0].mean():.4f} | "
              f"{int(np.sum(a[:, 0] <= 0.02))} of {n} | {int(np.sum((a[:, 1] >= 0.88) & (a[:, 1] <= 0.92)))} of {n} | "
              f"{int(np.sum(a[:, 2:5].min(axis=1) >= 0.85))} of {n} | {a[:, 5].mean():.4f} | {a[:, 5].max():.4f} | "
              f"{a[:, 6].mean():.4f} |")


if __name__ == "__main__":
    main()
