"""bench/maml_sinusoid.py runs in its quick form and prints every figure issue 2 asks for."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "maml_sinusoid.py")


def _run(*args, timeout):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


def test_quick_run_prints_the_figures():
    proc = _run("--quick", "--no-progress", "--seed", "3", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for label in ("hbmeta train_maml", "baseline jit+vmap, scanned"):
        m = re.search(re.escape(label) + r"\s+([0-9.]+)", out)
        assert m and float(m.group(1)) > 0, out
    assert "baseline jit, per-step call   skipped" in out  # --quick skips one compilation
    assert re.search(r"ratio hbmeta / baseline\s+[0-9.]+", out), out
    assert re.search(r"Wall time of the 1000-iteration hbmeta run: [0-9.]+ s", out), out
    rows = re.findall(r"^\s+(\d+)\s+([0-9.]+) ± ([0-9.]+)\s+([0-9.]+)$", out, flags=re.M)
    assert [(r[0], r[3]) for r in rows] == [("1", "0.67"), ("5", "0.38"), ("10", "0.35")], out
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)


def test_help():
    proc = _run("--help", timeout=120)
    assert proc.returncode == 0
    for flag in ("--quick", "--seed", "--iterations", "--baseline-iterations"):
        assert flag in proc.stdout
