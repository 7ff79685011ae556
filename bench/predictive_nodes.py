"""The task-level predictive of an ensemble with scale-mixture nodes: linearising once per member against once per draw.

The default ``hbmeta run`` predicts with 8 members × 8 tail nodes: 64 draws that
share 8 distinct θ and differ only in (τ, σ). ``sample_predictive`` adapts and
linearises each distinct (θ, α) once per chunk and conditions per draw. The
baseline, measured in the same process, is the same posterior with every θ
moved by a relative 1e-6 (so all 64 draws are distinct and each is linearised,
as before this change); the predictive is otherwise the same computation. The
default run's sizes: the 1–40–40–1 ReLU network, 100 held-out tasks with 5
support and 50 query points. Median of ``--repeats`` timed calls after one
untimed call (compilation is not timed).

Usage:
    python bench/predictive_nodes.py
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import hbmeta as hb


def timed(post, tasks, repeats):
    hb.sample_predictive(post, tasks, key=0)  # compile
    walls = []
    for _ in range(repeats):
        t = time.perf_counter()
        hb.sample_predictive(post, tasks, key=0)
        walls.append(time.perf_counter() - t)
    return float(np.median(walls))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--nodes", type=int, default=8)
    args = p.parse_args(argv)
    net = hb.mlp((1, 40, 40, 1))
    theta = net.init(jax.random.key(0))
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, step_size=0.01), theta, likelihood=hb.NormalLikelihood(),
                        task_posterior=hb.TaskPosterior())
    rng = np.random.default_rng(0)
    members = np.asarray(spec.ravel(theta))[None] + 0.05 * rng.normal(size=(args.members, spec.num_params))
    u = np.linspace(0.3, 3.0, args.nodes)
    theta_draws = np.repeat(members[:, None], args.nodes, axis=1).astype(np.float32)
    scales = {"tau": np.outer(np.full(args.members, 0.05), np.sqrt(u)).astype(np.float32),
              "noise": np.outer(np.full(args.members, 0.2), np.sqrt(u)).astype(np.float32)}
    shared = hb.Posterior({"theta": theta_draws, **scales}, spec, "ensemble", {})
    moved = theta_draws * (1 + 1e-6 * rng.normal(size=theta_draws.shape)).astype(np.float32)
    distinct = hb.Posterior({"theta": moved, **scales}, spec, "ensemble", {})
    tasks = hb.Sinusoid(num_support=5, num_query=50).sample(jax.random.key(1), 100)
    t_shared, t_distinct = timed(shared, tasks, args.repeats), timed(distinct, tasks, args.repeats)
    a = hb.sample_predictive(shared, tasks, key=0)
    b = hb.sample_predictive(distinct, tasks, key=0)
    rel = float(np.linalg.norm(a.mean - b.mean) / np.linalg.norm(b.mean))
    n = args.members * args.nodes
    print(f"| predictive, {n} draws ({args.members} θ × {args.nodes} nodes) × 100 tasks × 50 points | seconds |")
    print("|---|---|")
    print(f"| every draw linearised (baseline: θ moved by 1e-6) | {t_distinct:.2f} |")
    print(f"| each distinct θ linearised once | {t_shared:.2f} |")
    print(f"| ratio (shared / baseline) | {t_shared / t_distinct:.3f} |")
    print(f"relative difference of the predictive means: {rel:.1e} (the 1e-6 move)")


if __name__ == "__main__":
    main()
