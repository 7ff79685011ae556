"""Peak memory of the ArviZ conversion (per-task log-likelihood for LOO) and the NetCDF file, against draws × tasks × points.

Each case runs in a fresh process: fit a quick SVI posterior on the linear-Gaussian
family, then ``to_arviz`` (the per-task log-likelihood, computed 16 tasks at a
time) and ``save_netcdf``. It prints the peak resident memory of the process
(``ru_maxrss``), the peak before the conversion (the fit), their difference, and
the size of the log-likelihood array itself (8 · draws · tasks bytes): the
difference should stay near that size, not grow with draws × tasks × points.

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


def one(draws: int, tasks: int, points: int) -> dict:
    import jax

    import hbmeta as hb

    fam = hb.LinearGaussian(dim=2, num_support=points, num_query=points)
    train = fam.sample(jax.random.key(0), tasks)
    spec = hb.ModelSpec(hb.GradientSteps(hb.linear().apply, step_size=0.1), {"w": jax.numpy.zeros(2)},
                        likelihood=hb.NormalLikelihood(noise=0.5))
    post = hb.run_svi(spec, train, key=jax.random.key(1), num_steps=20, num_draws=draws, progress=False)
    before = _rss_mb()
    idata = hb.to_arviz(post, train, key=2)
    with tempfile.TemporaryDirectory() as d:
        path = hb.save_netcdf(idata, os.path.join(d, "posterior.nc"))
        file_mb = os.path.getsize(path) / 2**20
    return {"draws": draws, "tasks": tasks, "points": points, "before_mb": before, "peak_mb": _rss_mb(),
            "loglik_mb": 8 * draws * tasks / 2**20, "file_mb": file_mb}


CASES = [(1000, 100, 10), (1000, 100, 100), (1000, 1000, 10), (1000, 1000, 100), (4000, 1000, 100)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--one", type=int, nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one is not None:
        print("RESULT", json.dumps(one(*a.one)), flush=True)
        return 0
    print("to_arviz (log-likelihood) + save_netcdf, linear-Gaussian tasks, one fresh process per case")
    print(f"{'draws':>6} {'tasks':>6} {'points':>6} {'D·T·M (M)':>10} {'fit MB':>7} {'peak MB':>8} {'added MB':>9} "
          f"{'loglik MB':>10} {'file MB':>8}")
    for case in CASES:
        cmd = [sys.executable, __file__, "--one", *map(str, case)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1][7:])
        print(f"{r['draws']:>6} {r['tasks']:>6} {r['points']:>6} {r['draws'] * r['tasks'] * r['points'] / 1e6:>10.1f} "
              f"{r['before_mb']:>7.0f} {r['peak_mb']:>8.0f} {r['peak_mb'] - r['before_mb']:>9.0f} "
              f"{r['loglik_mb']:>10.1f} {r['file_mb']:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
