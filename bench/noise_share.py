"""The noise share of the ensemble's task-level posteriors (issue 9): development draws only.

Each member's (τ_m, σ_m) is fitted by type-II maximum likelihood on the tasks it
left out, as if that member were the whole predictive. In the equal-weight
mixture the members' spread already covers part of the error, and a smaller
σ_m² against τ_m lets each member follow its support points more closely.
:func:`hbmeta.inference.holdout.holdout_task_scale` therefore tries σ_m² × s
for s in ``NOISE_SHARES`` (τ_m kept), sets c and ν as before for each, and
keeps the s whose mixture has the best out-of-sample log-likelihood on the
training folds (the module docstring of ``hbmeta/inference/holdout.py``).

This script trains the default ensemble (8 members, |T| = 100, held-out folds)
on development draws (``DEV_SEED`` of ``calibration_gap.py``: never a reported
result) and scores 600 held-out tasks of each draw twice: with the members' own
fits (``noise_shares=(1.0,)``, the rule before this change) and with the share
chosen on the folds. Columns: the rule that set c, the share, c, ν, calibration error, 90% coverage
(overall, within 0.22 of a support point, 0.88 or further), NLL and MSE.

Usage:
    python bench/noise_share.py               # 14 draws, about 2 minutes a draw on 2 cores
    python bench/noise_share.py --draws 2
    python bench/noise_share.py --setup sinusoid_line --first 4 --draws 10   # about 2.5 minutes a draw
"""

from __future__ import annotations

import os
import sys

import numpy as np

from hbmeta.inference.holdout import holdout_task_scale

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from calibration_gap import calibration_error, coverage, held_out_mixture, trained_draws


def score(spec_task, theta, held, fit):
    """Held-out figures of the mixture with ``fit``'s τ_m, σ_m, nodes (and per-task factor)."""
    _, _, _, cdf, nll, mse = held_out_mixture(spec_task, theta, held, fit)
    xs, xq = np.asarray(held.x_support)[..., 0], np.asarray(held.x_query)[..., 0]
    dist = np.abs(xq[:, :, None] - xs[:, None, :]).min(axis=-1)
    return (calibration_error(cdf), coverage(cdf, 0.9), coverage(cdf[dist < 0.22], 0.9),
            coverage(cdf[dist >= 0.88], 0.9), nll, mse)


def main(argv=None):
    print("| draw | rule | σ² share | c | ν | calib. error | cov 90 | cov 90 near | cov 90 far | NLL | MSE |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")
    totals = {"own": [], "chosen": []}
    for draw, spec_task, train, held, theta, index in trained_draws(argv, __doc__.splitlines()[0]):
        for name, shares in (("own", (1.0,)), ("chosen", None)):
            fit = holdout_task_scale(spec_task, theta, train, index, distance_bins=1,  # this study predates the factor
                                     **({} if shares is None else {"noise_shares": shares}))
            s = score(spec_task, theta, held, fit)
            totals[name].append(s)
            print(f"| {draw} | {fit.scale_rule} | {fit.noise_share:g}{' (own fit)' if shares else ''} | {fit.scale:.3f} | "
                  f"{fit.tail_dof:g} | {s[0]:.4f} | {s[1]:.3f} | {s[2]:.3f} | {s[3]:.3f} | {s[4]:.4f} | {s[5]:.4f} |",
                  flush=True)
    print("\n| σ² share | mean calib. error | draws with calib. error ≤ 0.02 | cov 90 in [0.88, 0.92] | mean NLL "
          "| largest NLL | mean MSE |\n|---|---|---|---|---|---|---|")
    for name, rows in totals.items():
        a = np.asarray(rows)
        print(f"| {'own fit (s = 1)' if name == 'own' else 'chosen on the folds'} | {a[:, 0].mean():.4f} | "
              f"{int(np.sum(a[:, 0] <= 0.02))} of {len(a)} | {int(np.sum((a[:, 1] >= 0.88) & (a[:, 1] <= 0.92)))} of "
              f"{len(a)} | {a[:, 4].mean():.4f} | {a[:, 4].max():.4f} | {a[:, 5].mean():.4f} |")


if __name__ == "__main__":
    main()
