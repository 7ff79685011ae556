"""Can the shape of the ensemble's predictive buy calibration error ≤ 0.02 (issue 9)? Development draws only.

The default ``hbmeta run`` (ensemble+task with fitted tails) sets each member's
variance by the second-moment rule and the shape of its scale mixture (a
discrete Student-t, ν) by the folds' likelihood. Its calibration error stays
near 0.03 because its per-point variance is too flat: too wide next to the
support points and too narrow far from them (``calibration_gap.py``). This
script asks whether choosing the *shape* by the folds' calibration error
instead (recalibration on training tasks, Kuleshov et al. 2018) closes the
gap, and at what price in NLL and coverage. The scale is the library's
second-moment one in every row. Shapes, each chosen on the training folds by
the calibration error of the out-of-sample members' mixture with the spread
they lack against M members, v(1/n_j − 1/M), added:

- ``library``: Student-t nodes, ν by the folds' likelihood (what ``hbmeta run`` does);
- ``t, CE``: the same nodes, ν by the folds' calibration error;
- ``log-normal, CE``: 8 nodes u_k ∝ exp(s z_k) (z_k the normal's equal-probability midpoints, mean
  1), s in 0.2 … 3.0 by the folds' calibration error, the missing spread scaled with the nodes;
- ``log-normal, CE, spread apart``: the same, with the missing spread added outside the nodes;
- ``power, CE``: each member's variance v_m(x) replaced by k·v_m(x)^p (k by the second-moment
  rule), p in 0.8 … 2.6 by the folds' calibration error (spread apart), ν by the likelihood at each p.

Scored on 600 held-out tasks of each development draw (``DEV_SEED`` of
``calibration_gap.py``; nothing here is a reported result): calibration error,
50% and 90% coverage, NLL, and whether the draw meets every sinusoid target
that does not need the thirds (calibration error ≤ 0.02, 90% coverage in
[0.88, 0.92], NLL ≤ 0.85, MSE ≤ 0.50).

``--distance DRAW ...`` instead splits the calibration error and coverage of
those draws by the query point's distance to its task's nearest support point,
for the library's shape and the log-normal one with the spread apart.

Usage:
    python bench/tail_shape.py               # 14 draws, about 12 minutes on 2 cores
    python bench/tail_shape.py --draws 2
    python bench/tail_shape.py --distance 0 3 4
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
from scipy import stats

from hbmeta.inference.holdout import TAIL_DOFS, fit_tails, out_of_sample_mask, scale_nodes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from calibration_gap import calibration_error, coverage, member_predictives, mixture_cdf
from per_layer_tau import mixture_nll

SPREADS = np.round(np.linspace(0.2, 3.0, 15), 2)
POWERS = np.round(np.arange(0.8, 2.61, 0.2), 2)
VARIANTS = ("library", "t, CE", "log-normal, CE", "log-normal, CE, spread apart", "power, CE")


def lognormal_nodes(spread: float, num_nodes: int = 8) -> np.ndarray:
    """Relative variances exp(s z_k) of a log-normal scale mixture, z_k the normal's midpoint quantiles, mean 1."""
    u = np.exp(spread * stats.norm.ppf((np.arange(num_nodes) + 0.5) / num_nodes))
    return u / u.mean()


def fold_calibration(mu, var, y, out, nodes, missing, apart):
    """Calibration error of the out-of-sample members' mixtures on the training tasks."""
    v = var[:, None] * nodes[None, :, None, None, None]
    sd = np.sqrt(v + missing) if apart else np.sqrt((var[:, None] + missing) * nodes[None, :, None, None, None])
    cdf = stats.norm.cdf(y[None, None], mu[:, None], sd).mean(axis=1)
    c = out[:, :, None, None]
    return calibration_error((cdf * c).sum(axis=0) / c.sum(axis=0))


def shapes(mu_tr, var_tr, y_tr, out, r2, v):
    """``{variant: (label, k·v^p power or None, nodes)}`` chosen on the folds; var_tr is before the scale c."""
    members = mu_tr.shape[0]
    sel = np.broadcast_to(out[:, :, None, None] > 0, var_tr.shape)
    target = r2 - 2 * v * (members - 1) / members
    missing = v * (1 / out.sum(axis=0) - 1 / members)[:, None, None]
    w = np.ones(y_tr.shape[:2])

    def scaled(p):
        return target / np.mean(var_tr[sel] ** p), p

    k, _ = scaled(1.0)
    vt = k * var_tr
    dof, nodes, _ = fit_tails(mu_tr, vt, y_tr, out, w)
    res = {"library": (f"ν = {dof:g}", (k, 1.0), nodes)}
    t = [(f"ν = {d:g}", scale_nodes(d)) for d in (*TAIL_DOFS, math.inf)]
    ln = [(f"s = {s:g}", lognormal_nodes(s)) for s in SPREADS]
    for name, cands, apart in (("t, CE", t, False), ("log-normal, CE", ln, False),
                               ("log-normal, CE, spread apart", ln, True)):
        label, u = min(cands, key=lambda c: fold_calibration(mu_tr, vt, y_tr, out, c[1], missing, apart))
        res[name] = (label, (k, 1.0), u)
    best = None
    for p in POWERS:
        kp, _ = scaled(p)
        d, u, _ = fit_tails(mu_tr, kp * var_tr**p, y_tr, out, w)
        score = fold_calibration(mu_tr, kp * var_tr**p, y_tr, out, u, missing, True)
        if best is None or score < best[0]:
            best = (score, f"p = {p:g}, ν = {d:g}", (kp, p), u)
    res["power, CE"] = best[1:]
    return res


BANDS = ((0.0, 0.22), (0.22, 0.5), (0.5, 0.88), (0.88, math.inf))  # distance to the nearest support point


def by_distance(draws):
    print("| draw | shape | all | " + " | ".join(f"[{lo:g}, {hi:g})" for lo, hi in BANDS) + " |\n"
          + "|---|---|---|" + "---|" * len(BANDS) + "\n(each cell: calibration error / 90% coverage)")
    for draw in draws:
        r = member_predictives(draw)
        s = r["scale"]
        (mu_tr, var_tr, y_tr), (mu, var, y) = r["train"], r["held"]
        out = out_of_sample_mask(r["holdout_index"], mu.shape[0], r["train_tasks"].num_tasks)
        held = r["held_tasks"]
        xs, xq = np.asarray(held.x_support)[..., 0], np.asarray(held.x_query)[..., 0]
        dist = np.abs(xq[:, :, None] - xs[:, None, :]).min(axis=-1)
        chosen = shapes(mu_tr, var_tr / s.scale, y_tr, out, s.member_mse, s.spread)
        for name in ("library", "log-normal, CE, spread apart"):
            label, (k, p), nodes = chosen[name]
            cdf = mixture_cdf(mu, k * (var / s.scale) ** p, y, 0.0, nodes)[..., 0]
            cells = [f"{calibration_error(cdf):.3f} / {coverage(cdf, 0.9):.2f}"]
            for lo, hi in BANDS:
                sel = (dist >= lo) & (dist < hi)
                cells.append(f"{calibration_error(cdf[sel]):.3f} / {coverage(cdf[sel], 0.9):.2f} ({sel.mean():.0%})")
            print(f"| {draw} | {name} ({label}) | " + " | ".join(cells) + " |", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=14, help="development draws 0 … N − 1")
    ap.add_argument("--distance", type=int, nargs="+", help="only these draws, split by distance to the support")
    args = ap.parse_args(argv)
    if args.distance:
        return by_distance(args.distance)
    print("| draw | shape | chosen | calib. error | cov 50 | cov 90 | NLL | every target |\n|---|---|---|---|---|---|---|---|")
    totals = {name: [] for name in VARIANTS}
    for draw in range(args.draws):
        r = member_predictives(draw)
        s = r["scale"]
        (mu_tr, var_tr, y_tr), (mu, var, y) = r["train"], r["held"]
        var_tr, var = var_tr / s.scale, var / s.scale
        out = out_of_sample_mask(r["holdout_index"], mu.shape[0], r["train_tasks"].num_tasks)
        mse = float(np.mean((mu.mean(axis=0) - y) ** 2))
        for name, (label, (k, p), nodes) in shapes(mu_tr, var_tr, y_tr, out, s.member_mse, s.spread).items():
            v = k * var**p
            cdf = mixture_cdf(mu, v, y, 0.0, nodes)
            ce, c50, c90, nll = (calibration_error(cdf), coverage(cdf, 0.5), coverage(cdf, 0.9),
                                 mixture_nll(mu, v, y, nodes))
            ok = ce <= 0.02 and 0.88 <= c90 <= 0.92 and nll <= 0.85 and mse <= 0.5
            totals[name].append((ce, c90, nll, ok))
            print(f"| {draw} | {name} | {label} | {ce:.4f} | {c50:.3f} | {c90:.3f} | {nll:.3f} | "
                  f"{'yes' if ok else 'no'} |", flush=True)
    print("\n| shape | mean calib. error | 90% coverage in [0.88, 0.92] | mean NLL | largest NLL | every target |\n"
          "|---|---|---|---|---|---|")
    for name, rows in totals.items():
        ce, c90, nll, ok = (np.array(a) for a in zip(*rows))
        print(f"| {name} | {ce.mean():.4f} | {int(np.sum((c90 >= 0.88) & (c90 <= 0.92)))} of {len(rows)} | "
              f"{nll.mean():.3f} | {nll.max():.3f} | {int(ok.sum())} of {len(rows)} |")


if __name__ == "__main__":
    main()
