"""Checkpoint and resume: a run SIGKILLed in the middle of MAML training, resumed, ends bit for bit where an
uninterrupted run with the same seed ends; a killed run never looks complete."""

import json
import os
import signal
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

from hbmeta import GradientSteps, Sinusoid, mlp, train_maml
from hbmeta.base.checkpoint import Checkpointer
from hbmeta.base.files import BadFileError
from hbmeta.run.rundir import find_partial

_SCRIPT = os.path.join(os.path.dirname(sys.executable), "hbmeta")
HBMETA = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "hbmeta.cli.main"]
# MAML long enough (10 chunks of 2000 meta-iterations, a checkpoint after each) to be killed in the middle
RUN = ["run", "linear", "--method", "maml", "maml.num_iterations=20000", "run.checkpoint_every=2000",
       "tasks.num_test=20", "maml.meta_batch_size=40"]


def _start(argv, cwd, cache, kill_at=None):
    env = dict(os.environ, CI="1", JAX_COMPILATION_CACHE_DIR=str(cache),  # quick compilation: the runs are small
               XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
    proc = subprocess.Popen(HBMETA + argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    err = []

    def read():
        for line in proc.stderr:
            err.append(line)
            if kill_at is not None and kill_at in line:
                os.killpg(proc.pid, signal.SIGKILL)  # a hard kill: no Python clean-up runs

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def wait():
        try:
            out = proc.stdout.read()
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            reader.join(timeout=10)
            proc.stdout.close()
            proc.stderr.close()
        return rc, out, "".join(err)

    return wait


def test_a_run_killed_in_maml_training_resumes_to_the_same_result(tmp_path):
    full = _start(RUN + ["--out", "full"], tmp_path, tmp_path / "cache-full")
    killed = _start(RUN + ["--out", "killed"], tmp_path, tmp_path / "cache-killed", kill_at="meta-training: 10000/20000")
    rc, _, err = killed()
    assert rc == -signal.SIGKILL, err
    assert not (tmp_path / "killed").exists()  # never looks complete: no final directory, no run.json
    final, partial = find_partial(tmp_path / "killed")
    assert final == str(tmp_path / "killed") and os.path.isfile(os.path.join(partial, "checkpoints", "maml.npz"))
    with np.load(os.path.join(partial, "checkpoints", "maml.npz")) as ck:
        done = int(ck["__done__"])
    assert 2000 <= done <= 10000 and done % 2000 == 0  # at most one interval lost
    rc, _, err = _start(["run", "--resume", partial], tmp_path, tmp_path / "cache-resume")()
    assert rc == 0, err
    assert f"meta-training: {done}/20000" in err and "resumed" in err  # it continued; it did not start again
    rc, _, err = full()
    assert rc == 0, err
    a, b = tmp_path / "full", tmp_path / "killed"
    assert not [n for n in os.listdir(tmp_path) if ".partial-" in n] and not (b / "checkpoints").exists()
    for name in ("meta_params.npz", "maml_losses.npz", "posterior.npz"):
        with np.load(a / name) as x, np.load(b / name) as y:
            assert sorted(x.files) == sorted(y.files)
            for k in x.files:
                np.testing.assert_array_equal(x[k], y[k], err_msg=f"{name}:{k}")  # bit for bit
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    ma.pop("timings_s"), mb.pop("timings_s")
    assert ma == mb


def test_train_maml_resumed_from_a_checkpoint_equals_one_uninterrupted_run(tmp_path):
    net = mlp((1, 8, 1))
    rule = GradientSteps(net.apply, step_size=0.01)
    kw = dict(rule=rule, key=jax.random.key(1), num_iterations=6, chunk_size=2, progress=False, meta_batch_size=3)
    theta = net.init(jax.random.key(0))
    whole = train_maml(theta, Sinusoid(), **kw)
    path = tmp_path / "maml.npz"
    first = train_maml(theta, Sinusoid(), **{**kw, "num_iterations": 4}, checkpoint=Checkpointer(path))
    assert first.losses.shape == (4,)
    resumed = train_maml(theta, Sinusoid(), **kw, checkpoint=Checkpointer(path))  # 4 done: 2 more
    np.testing.assert_array_equal(resumed.losses, whole.losses)
    for x, y in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(whole.params)):
        np.testing.assert_array_equal(x, y)
    # a checkpoint of another network is refused, naming the file
    other = mlp((1, 4, 1)).init(jax.random.key(0))
    with pytest.raises(BadFileError, match="maml.npz: state array .* expected"):
        train_maml(other, Sinusoid(), **kw, checkpoint=Checkpointer(path))


def test_resume_refuses_a_complete_run_and_nothing(tmp_path):
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "run.json").write_text("{}")
    with pytest.raises(ValueError, match="complete run already"):
        find_partial(tmp_path / "done")
    with pytest.raises(ValueError, match="nothing to resume"):
        find_partial(tmp_path / "never")
