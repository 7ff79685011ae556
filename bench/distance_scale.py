"""The per-point factor by distance to the support (issue 9) against one scale for every point: development draws.

``holdout_task_scale`` now fits, last, a factor c_b on every member's predictive variance for each of five
quantile bins of the query point's distance to its task's nearest support point: the second-moment rule in each
bin, floored at 0.3 (:mod:`hbmeta.inference.distance_scale`), applied linearly in d between the bins' midpoints
(:func:`hbmeta.model.support_distance.distance_factor`). This script trains the default ensemble (12
members, |T| = 100, held-out folds) on development draws (``DEV_SEED`` of ``calibration_gap.py``: never a
reported result) and scores each draw's 600 held-out tasks with the library's fit and with the same fit with
one scale for every point (``distance_bins=1``: everything else is fitted before the factor, so it is the same).
Columns: the factors, calibration error, 90% coverage overall, near (d < 0.22) and far (d ≥ 0.88) from the
support, the lowest of the thirds of the tasks ranked by support spread, NLL and MSE.

With ``--floors``, the factors are also recomputed from the same fit's per-bin moments with other floors
(c_b = max((r²_b − 2v_b(M − 1)/M)/V̄_b, floor)), one row per floor in every draw and in the summary. With
``--bins``, the library's fit is repeated with other numbers of quantile bins (``distance_bins``), one row
per number. With ``--steps``, the library's fit is also scored with the factor constant within each bin
(:func:`step_factor`, the library's until 2026-12-06) instead of linear in d between the bins' midpoints.

With ``--defensive F:EPS …`` (2026-12-06), a defensive mixture: (1 − ε) × the same fit with the factors floored
at F instead of 0.3, plus ε × the library's predictive (floored at 0.3), so that the points next to the support
can be narrower without a point outside every narrow member costing more than −log ε nats over the library's
NLL. The rule for adopting it, written down before the run: among the candidates, the one with calibration
error ≤ 0.02 on the most draws, provided it is more than the library's (9 of 14), its mean calibration error
is lower than the library's, its mean NLL is at most 0.01 above the library's and its largest NLL at most 0.80,
and its 90% coverage is in [0.88, 0.92] and every third ≥ 0.85 on at least as many draws as the library's;
on a tie the larger ε, then the larger F.

Usage:
    python bench/distance_scale.py --members 12            # 14 draws, about 50 s a draw on 2 cores
    python bench/distance_scale.py --members 12 --defensive 0.05:0.1 0.05:0.25 0.1:0.1 0.1:0.25
    python bench/distance_scale.py --members 12 --floors 0.01 0.05 0.1 0.2 0.3
    python bench/distance_scale.py --members 12 --setup sinusoid_line --first 4 --draws 4
    python bench/distance_scale.py --members 12 --bins 3 5 8
    python bench/distance_scale.py --members 12 --steps
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

from hbmeta.inference.distance_scale import DISTANCE_BINS
from hbmeta.inference.holdout import holdout_task_scale
from hbmeta.model.support_distance import distance_factor as library_factor
from hbmeta.model.support_distance import support_distance
from hbmeta.model.support_spread import support_spread

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import calibration_gap
from calibration_gap import calibration_error, coverage, held_out_mixture, mixture_logpdf, trained_draws
from pair_covariance import print_summary


def score(spec_task, theta, held, fit):
    _, _, _, cdf, nll, mse = held_out_mixture(spec_task, theta, held, fit)
    return scores_of(held, cdf, nll, mse)


def defensive_score(spec_task, theta, held, narrow, wide, eps):
    """:func:`score` of (1 − ε) × the predictive of ``narrow`` + ε × that of ``wide`` (the same members)."""
    a, b = (held_out_mixture(spec_task, theta, held, f) for f in (narrow, wide))
    cdf = (1 - eps) * a[3] + eps * b[3]
    pdf = (1 - eps) * np.exp(mixture_logpdf(*a[:3], narrow.tail_nodes)) + eps * np.exp(mixture_logpdf(*b[:3], wide.tail_nodes))
    return scores_of(held, cdf, float(-np.mean(np.log(pdf[..., 0]))), a[5])


def scores_of(held, cdf, nll, mse):
    """The columns of the tables from each point's F(y), the NLL and the MSE."""
    d = np.asarray(jax.vmap(support_distance)(held.x_support, held.x_query))
    s2 = np.asarray(support_spread(held.y_support, held.support_mask), np.float64)
    thirds = [coverage(cdf[g], 0.9) for g in np.array_split(np.argsort(s2, kind="stable"), 3)]
    return (calibration_error(cdf), coverage(cdf, 0.9), coverage(cdf[d < 0.22], 0.9), coverage(cdf[d >= 0.88], 0.9),
            *thirds, nll, mse)


def refloored(fit, floor, members):
    """``fit`` with its per-point factors recomputed from the same per-bin moments with another floor."""
    dist = fit.distance_fit
    scales = np.maximum((dist.member_mse - 2 * dist.spread * (members - 1) / members) / dist.mean_var, floor)
    return fit._replace(distance_scales=scales)


def step_factor(d, edges, scales):
    """c_b of each distance's bin, constant within the bin (``scales[number of edges ≤ d]``): the step factor."""
    d = np.asarray(d, np.float64)
    return np.asarray(scales, np.float64)[np.sum(d[..., None] >= np.asarray(edges, np.float64), axis=-1)]


def scored(spec_task, theta, held, fit, steps):
    """:func:`score` with the library's factor, or with :func:`step_factor` in its place."""
    if not steps:
        return score(spec_task, theta, held, fit)
    calibration_gap.distance_factor = step_factor
    try:
        return score(spec_task, theta, held, fit)
    finally:
        calibration_gap.distance_factor = library_factor


def list_option(argv, flag, kind):
    """``(values, rest)``: the values after ``flag`` up to the next option (None without it), and the other args."""
    if flag not in argv:
        return None, argv
    i = argv.index(flag)
    j = next((k for k in range(i + 1, len(argv)) if argv[k].startswith("--")), len(argv))
    return [kind(x) for x in argv[i + 1:j]], argv[:i] + argv[j:]


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    floors, argv = list_option(argv, "--floors", float)
    bins, argv = list_option(argv, "--bins", int)
    defensive, argv = list_option(argv, "--defensive", lambda x: tuple(float(v) for v in x.split(":")))
    steps = "--steps" in argv
    argv = [a for a in argv if a != "--steps"]
    print("| draw | per-point scale | c_b (near → far) | calib. error | cov 90 | near / far | lowest third | NLL | MSE |\n"
          "|---|---|---|---|---|---|---|---|---|")
    totals: dict = {}
    for draw, spec_task, train, held, theta, index in trained_draws(argv, __doc__.splitlines()[0]):
        fit = holdout_task_scale(spec_task, theta, train, index)
        one = fit._replace(distance_edges=np.zeros(0), distance_scales=np.ones(1), distance_fit=None)
        fits = [("one scale", one), ("by distance", fit)]
        if floors:
            fits = [("one scale", one)] + [(f"floor {x:g}", refloored(fit, x, theta.shape[0])) for x in floors]
        if bins:
            fits = [("one scale", one)] + [(f"{b} bins", fit if b == DISTANCE_BINS else
                                            holdout_task_scale(spec_task, theta, train, index, distance_bins=b))
                                           for b in bins]
        if steps:
            fits.append(("steps in d", fit))
        for floor, eps in defensive or ():
            fits.append((f"defensive {floor:g}:{eps:g}", (refloored(fit, floor, theta.shape[0]), eps)))
        for name, f in fits:
            if type(f) is tuple:  # (the narrow fit, ε): the defensive mixture with the library's fit
                f, eps = f
                r = defensive_score(spec_task, theta, held, f, fit, eps)
            else:
                r = scored(spec_task, theta, held, f, name == "steps in d")
            totals.setdefault(name, []).append(r)
            cb = "/".join(f"{c:.2f}" for c in f.distance_scales) if f.distance_fit is not None else "-"
            print(f"| {draw} | {name} | {cb} | {r[0]:.4f} | {r[1]:.3f} | {r[2]:.3f} / {r[3]:.3f} | {min(r[4:7]):.3f} | "
                  f"{r[7]:.4f} | {r[8]:.4f} |", flush=True)
    print_summary(totals, "per-point scale")

if __name__ == "__main__":
    main()
