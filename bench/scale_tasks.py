"""SVI over T tasks with task subsampling: milliseconds per step and peak memory as T grows.

Each ELBO step scores ``--subsample`` random tasks (NumPyro's subsampled plate,
scaled by T / B), so the compute per step should not grow with T. Two ways to
hold the T tasks: ``generated`` (``family.generated(key, T)``: task j is made
from ``fold_in(key, j)`` when a step takes it, so nothing is stored) and
``stored`` (all T tasks as arrays on the device, ``family.sample(key, T)``), plus
``disk`` (the same generated tasks written to a memory-mapped task store,
``hb.save_task_store``, 10⁵ at a time, by a process of its own before anything
is timed; the timed process only opens it, ``hb.open_task_store``, and each
step reads its B tasks from the files). Each T runs
in a fresh process so that its peak resident memory (``ru_maxrss``) is its own.
The ELBO step is the one ``run_svi`` takes (hbmeta's model and mean-field
guide, NumPyro's ``SVI.stable_update``), compiled once as a scan of
``--chunk`` steps; after two untimed calls the median of ``--repeats`` timed
calls gives the time per step, so compilation is never timed. Every (store, T)
process runs once in each of ``--rounds`` rounds, in alternating order, and the
table gives the median over rounds (with the smallest and largest): at about
2 ms a step, a busy spell of the machine otherwise lands on one T alone. The baseline,
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
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def write_store(num_tasks: int, directory: str) -> None:
    """The generated tasks of ``one`` written to a task store, 10⁵ at a time (run in its own process)."""
    import jax

    import hbmeta as hb

    gen = hb.Sinusoid(num_support=5, num_query=10).generated(jax.random.key(1), num_tasks)
    parts = (gen.take(jax.numpy.arange(a, min(a + 10**5, num_tasks))) for a in range(0, num_tasks, 10**5))
    hb.save_task_store(directory, parts)


def one(num_tasks: int, store: str, subsample: int, chunk: int, repeats: int, store_dir: str | None = None) -> dict:
    import jax
    import numpy as np
    from numpyro.infer import SVI, Trace_ELBO, init_to_uniform

    import hbmeta as hb
    from hbmeta.inference.common import default_optimizer
    from hbmeta.inference.svi import make_guide
    from hbmeta.model.hierarchical import build_model

    net = hb.mlp((1, 40, 40, 1))
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, step_size=0.01), net.init(jax.random.key(0)))
    family = hb.Sinusoid(num_support=5, num_query=10)
    if store == "generated":
        tasks = family.generated(jax.random.key(1), num_tasks)
    elif store == "disk":  # the store was written by another process (write_store): this one only reads it
        import os

        tasks = hb.open_task_store(store_dir)
        assert tasks.num_tasks == num_tasks, (tasks.num_tasks, num_tasks)
        disk_mb = sum(os.path.getsize(os.path.join(tasks.directory, f)) for f in os.listdir(tasks.directory)) / 2**20
    else:
        tasks = family.sample(jax.random.key(1), num_tasks)
    jax.block_until_ready(tasks)
    # the ELBO step run_svi takes (hbmeta's model and guide, NumPyro's SVI, stable_update), compiled once
    model = build_model(spec)
    guide = make_guide(model, "mean_field", init_loc_fn=init_to_uniform)
    svi = SVI(model, guide, default_optimizer("svi")[0], loss=Trace_ELBO())
    state = svi.init(jax.random.key(2), tasks, subsample_size=subsample)

    @jax.jit
    def steps(state, tasks):
        return jax.lax.scan(lambda s, _: svi.stable_update(s, tasks, subsample_size=subsample), state, None,
                            length=chunk)

    for _ in range(2):  # compile, then one more untimed chunk
        state, losses = steps(state, tasks)
        jax.block_until_ready(losses)
    walls = []
    for _ in range(repeats):
        t = time.perf_counter()
        state, losses = steps(state, tasks)
        jax.block_until_ready(losses)
        walls.append(time.perf_counter() - t)
    assert np.isfinite(np.asarray(losses)).any()
    ms = 1e3 * float(np.median(walls)) / chunk
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    task_mb = disk_mb if store == "disk" else sum(a.nbytes for a in jax.tree.leaves(tasks)) / 2**20
    return {"tasks": num_tasks, "store": store, "ms_per_step": ms, "peak_rss_mb": rss, "tasks_mb": task_mb}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, nargs="+", default=[10**3, 10**4, 10**5, 10**6])
    p.add_argument("--subsample", type=int, default=100, help="tasks per ELBO step (B)")
    p.add_argument("--chunk", type=int, default=200, help="ELBO steps per timed compiled call")
    p.add_argument("--repeats", type=int, default=5, help="timed calls (the median is reported)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every (store, T) (median reported)")
    p.add_argument("--stores", nargs="+", default=["generated", "stored", "disk"], choices=["generated", "stored", "disk"])
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--store", default="generated", help=argparse.SUPPRESS)
    p.add_argument("--store-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--write-store", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one is not None and a.write_store:
        write_store(a.one, a.store_dir)
        return 0
    if a.one is not None:
        print("RESULT", json.dumps(one(a.one, a.store, a.subsample, a.chunk, a.repeats, a.store_dir)), flush=True)
        return 0
    tmp = tempfile.TemporaryDirectory()
    store_dirs = {}
    if "disk" in a.stores:  # written once per T, each by a process of its own, before anything is timed
        for t in a.tasks:
            store_dirs[t] = os.path.join(tmp.name, f"store-{t}")
            subprocess.run([sys.executable, __file__, "--one", str(t), "--write-store", "--store-dir", store_dirs[t]],
                           check=True)
    # Every (store, T) runs once per round, in an order that alternates between rounds, so that a slow spell
    # of the machine falls on all T alike; each row is the median over rounds (min and max beside it).
    combos = [(store, t) for store in a.stores for t in a.tasks]
    runs: dict = {c: [] for c in combos}
    for r in range(a.rounds):
        for store, t in combos if r % 2 == 0 else combos[::-1]:
            cmd = [sys.executable, __file__, "--one", str(t), "--store", store, "--subsample", str(a.subsample),
                   "--chunk", str(a.chunk), "--repeats", str(a.repeats)]
            if store == "disk":
                cmd += ["--store-dir", store_dirs[t]]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[store, t].append(json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1][7:]))
            print(f"  round {r + 1}/{a.rounds}, {store}, T = {t:>9,}: {runs[store, t][-1]['ms_per_step']:.3f} ms/step",
                  file=sys.stderr, flush=True)
    for store in a.stores:
        rows = []
        for t in a.tasks:
            ms = [x["ms_per_step"] for x in runs[store, t]]
            rows.append({**runs[store, t][0], "ms_per_step": float(np.median(ms)), "ms_min": min(ms),
                         "ms_max": max(ms), "peak_rss_mb": max(x["peak_rss_mb"] for x in runs[store, t])})
        base = rows[0]["ms_per_step"]
        print(f"\nSVI, mean-field, B = {a.subsample} tasks per step, sinusoid 1-40-40-1, tasks {store} "
              f"(baseline: T = {rows[0]['tasks']:,}, same run; median of {a.rounds} interleaved rounds; target: ratio "
              "within 1.2)")
        what = "task files MB" if store == "disk" else "task arrays MB"
        print(f"{'T':>10} {'ms/step':>9} {'min..max':>15} {'ratio':>7} {'peak RSS MB':>12} {what:>15}")
        for r in rows:
            print(f"{r['tasks']:>10,} {r['ms_per_step']:>9.3f} {r['ms_min']:>7.3f}..{r['ms_max']:<7.3f} "
                  f"{r['ms_per_step'] / base:>7.2f} {r['peak_rss_mb']:>12.0f} {r['tasks_mb']:>15.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
