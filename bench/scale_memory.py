"""Peak memory of writing the NetCDF file (predictive, per-task log-likelihood for LOO), against draws × tasks × points.

Each case runs twice, each time in a fresh process: fit a quick SVI posterior on
the linear-Gaussian family, then write ``posterior.nc`` either from memory
(``save_netcdf(to_arviz(...))``: the whole predictive and log-likelihood in
memory, the baseline) or block by block (``to_netcdf``: 64 draws × 32 tasks at
a time). It prints the peak resident memory of the process (``ru_maxrss``)
above the peak before the writing (the fit), for both, and their ratio; and the
size of the log-likelihood array itself (8 · draws · tasks bytes). Streamed, the
added memory should not grow with draws × tasks × points.

Usage:
    python bench/scale_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(draws: int, tasks: int, points: int, streamed: bool) -> dict:
    import jax

    import hbmeta as hb

    fam = hb.LinearGaussian(dim=2, num_support=points, num_query=points)
    train = fam.sample(jax.random.key(0), tasks)
    spec = hb.ModelSpec(hb.GradientSteps(hb.linear().apply, step_size=0.1), {"w": jax.numpy.zeros(2)},
                        likelihood=hb.NormalLikelihood(noise=0.5))
    post = hb.run_svi(spec, train, key=jax.random.key(1), num_steps=20, num_draws=draws, progress=False)
    before = _rss_mb()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "posterior.nc")
        if streamed:
            hb.to_netcdf(post, train, path, key=2)
        else:
            hb.save_netcdf(hb.to_arviz(post, train, key=2), path)
        file_mb = os.path.getsize(path) / 2**20
    return {"draws": draws, "tasks": tasks, "points": points, "before_mb": before, "peak_mb": _rss_mb(),
            "loglik_mb": 8 * draws * tasks / 2**20, "file_mb": file_mb}


CASES = [(1000, 100, 10), (1000, 100, 100), (1000, 1000, 10), (1000, 1000, 100), (4000, 1000, 100)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--one", type=int, nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one is not None:
        print("RESULT", json.dumps(one(*a.one[:3], bool(a.one[3]))), flush=True)
        return 0
    print("posterior.nc from memory (save_netcdf(to_arviz)) against block by block (to_netcdf), linear-Gaussian "
          "tasks, one fresh process per case and way")
    print(f"{'draws':>6} {'tasks':>6} {'points':>6} {'D·T·M (M)':>10} {'fit MB':>7} {'added, memory':>14} "
          f"{'added, blocks':>14} {'ratio':>6} {'loglik MB':>10} {'file MB':>8}")
    for case in CASES:
        rows = []
        for streamed in (0, 1):
            cmd = [sys.executable, __file__, "--one", *map(str, case), str(streamed)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1][7:]))
        mem, blk = (r["peak_mb"] - r["before_mb"] for r in rows)
        r = rows[1]
        print(f"{r['draws']:>6} {r['tasks']:>6} {r['points']:>6} {r['draws'] * r['tasks'] * r['points'] / 1e6:>10.1f} "
              f"{r['before_mb']:>7.0f} {mem:>14.0f} {blk:>14.0f} {blk / max(mem, 1e-9):>6.2f} "
              f"{r['loglik_mb']:>10.1f} {r['file_mb']:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
