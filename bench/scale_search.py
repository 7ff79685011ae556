"""The ensemble's scale searches on the folds, each member linearised once (task_predictive_scales), against one
``task_predictive`` call per member and candidate scale (the code before 2026-12-06), in one process.

``holdout_task_scale`` tries several noise shares s on the members' σ_m² (regression) or several factors c on
their τ_m² (classification, ``fit_class_scale``). The Jacobians at φ̂_j do not depend on (τ, σ), so
``hbmeta.task_predictive_scales`` forms them once per member and task and conditions on the support once per
candidate. This script times both ways on the default ensembles' shapes (sinusoid: 12 members, 100 tasks ×
10 query points, 5 shares; blobs: 8 members, 100 tasks, 6 scales), checks that they agree and prints the ratio.
The members are short MAML runs (300 iterations): the time does not depend on how well they are trained.

Usage:
    python bench/scale_search.py          # about a minute on 2 cores
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import hbmeta as hb
from hbmeta.inference.class_scale import CLASS_SCALES
from hbmeta.inference.holdout import NOISE_SHARES

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from calibration import setups


def members(setup, num_members, likelihood):
    st = setups()[setup]
    net = hb.mlp(st.sizes)
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, loss=st.loss, step_size=st.alpha), net.init(jax.random.key(0)),
                        likelihood=likelihood, task_posterior=hb.TaskPosterior())
    train = st.family.fixed(jax.random.key(1), 100).tasks
    ens = hb.run_ensemble(spec, train, key=2, num_members=num_members, init=net.init, num_iterations=300,
                          progress=False)
    return spec, train, np.asarray(ens.samples["theta"][:, 0])


def timed(fn, repeats=3):
    """``(best of ``repeats`` warm seconds, result)`` after one call that compiles."""
    out = fn()
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    print("| search | one call per member and candidate (s) | each member linearised once (s) | ratio | "
          "largest difference |\n|---|---|---|---|---|")
    spec, train, theta = members("sinusoid", 12, hb.NormalLikelihood())
    tau, sigma, shares = 0.05, 0.2, np.asarray(NOISE_SHARES)

    def loop():
        return np.stack([[np.asarray(hb.task_predictive(spec, jnp.asarray(t), train, tau=tau,
                                                        noise=float(sigma * np.sqrt(s))).var) for s in shares]
                         for t in theta])

    def once():
        return np.stack([np.asarray(hb.task_predictive_scales(spec, jnp.asarray(t), train, taus=np.full(len(shares), tau),
                                                              noises=sigma * np.sqrt(shares)).var) for t in theta])

    (t_loop, a), (t_once, b) = timed(loop), timed(once)
    print(f"| sinusoid: {len(shares)} noise shares × 12 members | {t_loop:.3f} | {t_once:.3f} | "
          f"{t_loop / t_once:.1f} | {np.max(np.abs(a - b) / np.abs(a)):.1e} (relative, variance) |", flush=True)

    spec, train, theta = members("blobs", 8, hb.CategoricalLikelihood())
    scales = np.sqrt(np.asarray(CLASS_SCALES)) * 0.1

    def loop_c():
        return np.stack([[np.asarray(hb.task_predictive(spec, jnp.asarray(t), train, tau=float(s)).probs)
                          for s in scales] for t in theta])

    def once_c():
        return np.stack([np.asarray(hb.task_predictive_scales(spec, jnp.asarray(t), train, taus=scales).probs)
                         for t in theta])

    (t_loop, a), (t_once, b) = timed(loop_c), timed(once_c)
    print(f"| blobs: {len(scales)} class scales × 8 members | {t_loop:.3f} | {t_once:.3f} | {t_loop / t_once:.1f} | "
          f"{np.max(np.abs(a - b)):.1e} (probability) |")


if __name__ == "__main__":
    main()
