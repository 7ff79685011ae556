"""SVI over T tasks with task subsampling: milliseconds per step and peak memory as T grows.

Each ELBO step scores ``--subsample`` random tasks (NumPyro's subsampled plate,
scaled by T / B), so the compute per step should not grow with T. Two ways to
hold the T tasks: ``generated`` (``family.generated(key, T)``: task j is made
from ``fold_in(key, j)`` when a step takes it, so nothing is stored) and
``stored`` (all T tasks as arrays on the device, ``family.sample(key, T)``). Each T runs
in a fresh process so that its peak resident memory (``ru_maxrss``) is its own.
The time per step is the difference of two runs of different lengths divided
by the difference in steps (each length run once before, to compile), so
start-up costs cancel. The baseline,
measured in the same run, is the smallest T; the table gives each T's ratio to
it (target: within 1.2 from 10³ to 10⁶).

Model: the default sinusoid network (1–40–40–1 ReLU, one inner step α = 0.01),
5 support + 10 query points per task, mean-field SVI with Adam.

Usage:
    python bench/scale_tasks.py                       # T = 10^3 ... 10^6
    python bench/scale_tasks.py --tasks 1000 10000 --stores generated   # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(num_tasks: int, store: str, subsample: int, short: int, long: int) -> dict:
    import jax

    import hbmeta as hb

    net = hb.mlp((1, 40, 40, 1))
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, step_size=0.01), net.init(jax.random.key(0)))
    family = hb.Sinusoid(num_support=5, num_query=10)
    if store == "generated":
        tasks = family.generated(jax.random.key(1), num_tasks)
    else:
        tasks = family.sample(jax.random.key(1), num_tasks)
    jax.block_until_ready(tasks)
    walls = {}
    for steps in (short, long, short, long):  # the first two compile; the last two are timed
        t = time.perf_counter()
        post = hb.run_svi(spec, tasks, key=jax.random.key(2), num_steps=steps, num_draws=10,
                          subsample_size=subsample, progress=False)
        jax.block_until_ready(post.samples["theta"])
        walls[steps] = time.perf_counter() - t
    ms = 1e3 * (walls[long] - walls[short]) / (long - short)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    task_mb = sum(a.nbytes for a in jax.tree.leaves(tasks)) / 2**20
    return {"tasks": num_tasks, "store": store, "ms_per_step": ms, "peak_rss_mb": rss, "tasks_mb": task_mb}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, nargs="+", default=[10**3, 10**4, 10**5, 10**6])
    p.add_argument("--subsample", type=int, default=100, help="tasks per ELBO step (B)")
    p.add_argument("--steps", type=int, nargs=2, default=[200, 1200], metavar=("SHORT", "LONG"))
    p.add_argument("--stores", nargs="+", default=["generated", "stored"], choices=["generated", "stored"])
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--store", default="generated", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one is not None:
        print("RESULT", json.dumps(one(a.one, a.store, a.subsample, *a.steps)), flush=True)
        return 0
    for store in a.stores:
        rows = []
        for t in a.tasks:
            cmd = [sys.executable, __file__, "--one", str(t), "--store", store, "--subsample", str(a.subsample),
                   "--steps", *map(str, a.steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1][7:]))
            print(f"  {store}, T = {t:>9,}: {rows[-1]['ms_per_step']:.3f} ms/step", file=sys.stderr, flush=True)
        base = rows[0]["ms_per_step"]
        print(f"\nSVI, mean-field, B = {a.subsample} tasks per step, sinusoid 1-40-40-1, tasks {store} "
              f"(baseline: T = {rows[0]['tasks']:,}, same run; target: ratio within 1.2)")
        print(f"{'T':>10} {'ms/step':>9} {'ratio':>7} {'peak RSS MB':>12} {'task arrays MB':>15}")
        for r in rows:
            print(f"{r['tasks']:>10,} {r['ms_per_step']:>9.3f} {r['ms_per_step'] / base:>7.2f} "
                  f"{r['peak_rss_mb']:>12.0f} {r['tasks_mb']:>15.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
