"""The blobs ensemble's scale c chosen with cross-fitted τ_m (issue 9). Development draws only.

``holdout_task_scale`` fits each member's τ_m on the tasks it left out and then
chooses the factor c on every τ_m² by the M-member mixture's Brier score,
estimated on those same tasks (:func:`hbmeta.inference.class_scale.mixture_brier`).
Each τ_m is then in-sample on the tasks that score c, so the score leans
towards c = 1 (on development draw 2 of ``blobs_confidence.py`` it kept c = 1
and a held-out ECE of 0.046 where c = 0.25–0.5 gave 0.009–0.021).

Cross-fitting removes that lean: each member's held-out tasks are split into two
halves (alternate tasks of its fold), τ_m is fitted on each half, and a task's
prediction by member m uses the τ_m of the other half, so no prediction that
scores c used a τ fitted on its own task. c is then chosen by the same
estimated Brier score over ``CLASS_SCALES`` and applied to the τ_m fitted on
the whole fold, as the library does.

For each development draw (``DEV_SEED`` + 100 + draw, the draws of
``blobs_confidence.py``; never a reported result) the script prints the c of
the library and of the cross-fitted score, and for both the held-out (600 tasks ×
30 points) ECE, NLL, Brier and mean confidence minus accuracy.

Since 2026-12-06 the library's rule is the Brier score's c *gated* by the reliability gap
(:func:`hbmeta.inference.class_scale.fit_class_scale`): it moves to the c of ``CLASS_SCALES``
whose estimated gap is nearest zero only where the gap at the Brier score's c is more than two
standard errors (over the tasks) from zero. The row "Brier" is the rule before (the lowest
estimated Brier score, ungated), "reliability" the c of a finer grid whose gap is nearest zero,
ungated, and "library" the gated rule; the standard errors go to stderr.

Usage:
    python bench/cross_fit_scale.py --first 0 --draws 10      # about 60 s a draw on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax.numpy as jnp
import numpy as np

import hbmeta as hb
from hbmeta.inference.class_scale import CLASS_SCALES, mixture_brier
from hbmeta.inference.holdout import holdout_task_scale, out_of_sample_mask

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blobs_confidence import ece, label_loglik, train_blobs


def cross_fitted_scale(spec_task, theta, train, index, scales=CLASS_SCALES):
    """``(c, {c: estimated mixture Brier})`` with each member's τ fitted on the other half of its fold."""
    members = theta.shape[0]
    out = out_of_sample_mask(index, members, train.num_tasks)
    tau_for_task = np.zeros((members, train.num_tasks))
    for m in range(members):
        fold = np.asarray(index[m])
        halves = (fold[0::2], fold[1::2])
        for h, other in ((0, 1), (1, 0)):
            fit = hb.fit_task_hyperparameters(spec_task, jnp.asarray(theta[m]), train.take(jnp.asarray(halves[other])))
            tau_for_task[m, halves[h]] = fit.tau
    scores = {}
    for c in sorted(scales):
        probs = []
        for m in range(members):
            p = None
            for t in np.unique(tau_for_task[m][out[m] > 0]):
                pm = np.asarray(hb.task_predictive(spec_task, jnp.asarray(theta[m]), train, tau=float(t * np.sqrt(c))).probs)
                p = np.zeros_like(pm) if p is None else p
                sel = tau_for_task[m] == t
                p[sel] = pm[sel]
            probs.append(p)
        scores[c] = -mixture_brier(jnp.asarray(np.stack(probs)), train.y_query, out, jnp.ones(train.y_query.shape))
    return max(scores, key=scores.get), scores


RELIABILITY_GRID = np.geomspace(0.05, 8.0, 25)


def reliability_gap(probs, y, out):
    """E⟨e_y − p̄, p̄⟩ of the M-member mixture p̄, estimated without bias from the members that left each task out.

    ``probs`` ``(M, T, Q, k)``; zero for a calibrated predictive (E[e_y | p̄] = p̄), positive when under-confident.
    """
    M = probs.shape[0]
    o = out[:, :, None, None]
    n = out.sum(0)[:, None]
    py = np.take_along_axis(probs, np.broadcast_to(y[None, ..., None], (*probs.shape[:-1], 1)), -1)[..., 0]
    hit = (py * o[..., 0]).sum(0) / n
    sq = np.sum(probs ** 2, -1)
    own = (sq * o[..., 0]).sum(0) / n
    tot = (probs * o).sum(0)
    cross = (np.sum(tot ** 2, -1) - (sq * o[..., 0]).sum(0)) / (n * (n - 1))
    return float(np.mean(hit - own / M - (1 - 1 / M) * cross))


def reliability_scale(spec_task, theta, train, index, own, grid=RELIABILITY_GRID):
    """The c of ``grid`` whose estimated mixture reliability gap is nearest zero; ``(c, {c: gap})``."""
    out = out_of_sample_mask(index, theta.shape[0], train.num_tasks)
    y = np.asarray(train.y_query)
    gaps = {}
    for c in grid:
        probs = np.stack([np.asarray(hb.task_predictive(spec_task, jnp.asarray(theta[m]), train,
                                                        tau=float(own[m] * np.sqrt(c))).probs)
                          for m in range(theta.shape[0])])
        gaps[float(c)] = reliability_gap(probs, y, out)
    return min(gaps, key=lambda c: abs(gaps[c])), gaps


def held_scores(spec_task, theta, held, taus):
    p = np.mean([np.asarray(hb.task_predictive(spec_task, jnp.asarray(theta[m]), held, tau=float(taus[m])).probs)
                 for m in range(theta.shape[0])], axis=0)
    y = np.asarray(held.y_query)
    brier = float(np.mean(np.sum((np.eye(p.shape[-1])[y] - p) ** 2, -1)))
    return ece(p, y), -label_loglik(p, y), brier, float(p.max(-1).mean() - (p.argmax(-1) == y).mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--cross-fit", action="store_true", help="also the cross-fitted Brier rule")
    args = ap.parse_args(argv)
    print("| draw | rule: c | ECE | NLL | Brier | confidence − accuracy |\n|---|---|---|---|---|---|")
    totals: dict = {}
    for draw in range(args.first, args.first + args.draws):
        t0 = time.perf_counter()
        spec_task, train, held, theta, index = train_blobs(draw, args.members)
        lib = holdout_task_scale(spec_task, theta, train, index)
        own = np.asarray(lib.tau) / np.sqrt(lib.scale)
        chosen = {"Brier": max(sorted(lib.scale_scores), key=lib.scale_scores.get)}
        if args.cross_fit:
            chosen["cross-fitted"] = cross_fitted_scale(spec_task, theta, train, index)[0]
        chosen["reliability"] = reliability_scale(spec_task, theta, train, index, own)[0]
        chosen["library"] = lib.scale
        print(f"(draw {draw}: {lib.scale_rule}; gap ± s.e. by c: "
              + ", ".join(f"{k:g}: {g:+.4f} ± {e:.4f}" for k, (g, e) in lib.reliability_gaps.items()) + ")",
              file=sys.stderr, flush=True)
        for name, c in chosen.items():
            r = held_scores(spec_task, theta, held, own * np.sqrt(c))
            totals.setdefault(name, []).append(r)
            print(f"| {draw} | {name}: {c:.3g} | {r[0]:.4f} | {r[1]:.4f} | {r[2]:.4f} | {r[3]:+.4f} |", flush=True)
        print(f"(draw {draw}: {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    print("\n| c chosen | mean ECE | draws with ECE ≤ 0.03 | mean NLL | mean Brier |\n|---|---|---|---|---|")
    for name, rows in totals.items():
        a = np.asarray(rows)
        print(f"| {name} | {a[:, 0].mean():.4f} | {int(np.sum(a[:, 0] <= 0.03))} of {len(a)} | {a[:, 1].mean():.4f} | "
              f"{a[:, 2].mean():.4f} |")


if __name__ == "__main__":
    main()
