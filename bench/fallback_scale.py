"""The ensemble's scale when the members' spread exceeds their error (issue 9), on development draws only.

:func:`hbmeta.inference.holdout.choose_scale` sets the mixture scale c by the
second-moment rule, ``V = r² − 2v(M − 1)/M``. When ``V ≤ 0`` it falls back to
the folds' out-of-sample likelihood over a grid of c (and ν). A fold's mixture
has only the ``n_j`` members that left task j out, so this script compares the
variance added to every member's variance there:

- ``floor``: no fallback, c from ``V`` floored at ``0.05²·r²`` (before 2026-12-05);
- ``+0``: the folds' likelihood as it is (2026-12-05, first version);
- ``+v``: ``v(1/n_j − 1/M)``, the spread the ``n_j`` members lack against M (the library now);
- ``+2v``: ``2v(1/n_j − 1/M)``, the spread and the M-member mean's better accuracy.

Each rule is applied to the same members' out-of-sample predictives on the training
tasks and scored on 600 held-out tasks of the same development draw: calibration
error, 90% coverage and NLL of the mixture. ``V/r²`` says which regime the draw is
in (the fallback applies where it is ≤ 0.0025). The members are the default
sinusoid ensemble, with one τ (the library's task-level posterior) or one τ per
layer (``per_layer_tau.py``, where ``V ≤ 0`` on most draws), and the default
``sinusoid_line`` ensemble. The ``+v`` row is checked against the library's
``choose_scale`` wherever the fallback applies.

Development draws only (``DEV_SEED`` of ``calibration_gap.py``): nothing here is
a reported result.

Usage:
    python bench/fallback_scale.py                     # draws 0-3, one τ per layer (about 6 minutes)
    python bench/fallback_scale.py --tau one --draws 2
    python bench/fallback_scale.py --setup sinusoid_line --tau one
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import jax.numpy as jnp
import numpy as np

from hbmeta.inference.holdout import (
    _FLOOR,
    SCALE_GRID,
    TAIL_DOFS,
    _fold_loglik,
    _fold_moments,
    choose_scale,
    fit_tails,
    out_of_sample_mask,
    scale_nodes,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from calibration_gap import calibration_error, coverage, member_predictives, mixture_cdf
from per_layer_tau import fit_member, group_index, mixture_nll, predict

RULES = {"+0": 0.0, "+v": 1.0, "+2v": 2.0}


def fold_rule(mu, var, y, out, factor):
    """c and ν by the folds' likelihood with ``factor · v(1/n_j − 1/M)`` added to every member's variance."""
    members = mu.shape[0]
    w = np.ones(y.shape[:2])
    r2, v, mean_var = _fold_moments(jnp.asarray(mu), jnp.asarray(var), y, out, w)
    n = out.sum(0)
    missing = (factor * v * (1 / np.maximum(n, 1) - 1 / members))[None, :, None, None]
    best = None
    for dof in (*TAIL_DOFS, math.inf):
        u = jnp.asarray(scale_nodes(dof))
        for g in SCALE_GRID:
            c = r2 / mean_var * float(g)
            value = float(_fold_loglik(jnp.asarray(mu), jnp.asarray(var * c + missing), jnp.asarray(y),
                                       jnp.asarray(out), jnp.asarray(w), u))
            if best is None or value > best[0]:
                best = (value, c, dof)
    return best[1], best[2]


def members(draw, setup, tau):
    """Every member's (mean, variance before the scale c) on the training and the held-out tasks, and the mask."""
    r = member_predictives(draw, setup=setup)
    scale = r["scale"].scale
    out = out_of_sample_mask(r["holdout_index"], r["theta"].shape[0], r["train_tasks"].num_tasks)
    (mu_tr, var_tr, y_tr), (mu, var, y) = r["train"], r["held"]
    if tau == "one":
        return mu_tr, var_tr / scale, y_tr, mu, var / scale, y, out
    spec, net, theta, hold = r["spec"], r["net"], r["theta"], r["holdout_index"]
    groups, num_groups = group_index(spec.unravel(jnp.asarray(theta[0])), "layer")
    tr, he = [], []
    for m in range(theta.shape[0]):
        u, _ = fit_member(spec, net, jnp.asarray(theta[m]), r["train_tasks"].take(jnp.asarray(hold[m])), groups,
                          num_groups)
        tr.append(predict(spec, net, jnp.asarray(theta[m]), r["train_tasks"], u, groups, num_groups))
        he.append(predict(spec, net, jnp.asarray(theta[m]), r["held_tasks"], u, groups, num_groups))
    (mu_tr, var_tr), (mu, var) = (tuple(np.stack(a) for a in zip(*p)) for p in (tr, he))
    return mu_tr, var_tr, y_tr, mu, var, y, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=4, help="development draws 0 … N − 1")
    p.add_argument("--setup", choices=("sinusoid", "sinusoid_line"), default="sinusoid")
    p.add_argument("--tau", choices=("one", "layer"), default="layer")
    args = p.parse_args(argv)
    print(f"\n{args.setup}, τ: {args.tau}\n\n| draw | V/r² | rule | c | ν | calib. error | cov 90 | NLL |\n"
          "|---|---|---|---|---|---|---|---|")
    for draw in range(args.draws):
        mu_tr, var_tr, y_tr, mu, var, y, out = members(draw, args.setup, args.tau)
        m = mu.shape[0]
        r2, v, mean_var = _fold_moments(jnp.asarray(mu_tr), jnp.asarray(var_tr), y_tr, out, np.ones(y_tr.shape[:2]))
        target = r2 - 2 * v * (m - 1) / m
        c_floor = max(target, _FLOOR * r2) / mean_var
        rows = [("floor", c_floor, fit_tails(mu_tr, var_tr * c_floor, y_tr, out, np.ones(y_tr.shape[:2]))[0])]
        rows += [(name, *fold_rule(mu_tr, var_tr, y_tr, out, factor)) for name, factor in RULES.items()]
        lib = choose_scale(mu_tr, var_tr, y_tr, out, np.ones(y_tr.shape[:2]))
        if lib[1] == "folds' likelihood":
            assert math.isclose(lib[0], rows[2][1], rel_tol=1e-4) and lib[2] == rows[2][2], (lib[:3], rows[2])
        for name, c, dof in rows:
            nodes = scale_nodes(dof)
            cdf = mixture_cdf(mu, var * c, y, dof, nodes)
            print(f"| {draw} | {target / r2:+.2f} | {name} | {c:.3f} | {dof:g} | {calibration_error(cdf):.4f} | "
                  f"{coverage(cdf, 0.9):.3f} | {mixture_nll(mu, var * c, y, nodes):.3f} |", flush=True)


if __name__ == "__main__":
    main()
