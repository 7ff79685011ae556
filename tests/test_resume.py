"""Checkpoint and resume: a run SIGKILLed in the middle of MAML training, resumed, SIGKILLed again in the middle of
SVI and resumed again, ends bit for bit where an uninterrupted run with the same seed ends, and so does a run
SIGKILLed in the middle of NUTS's warm-up or of the ensemble's meta-training; a killed run never looks complete.
SVGD, Laplace's MAP search, the ensemble and NUTS/HMC stopped in warm-up or in sampling resume through the same
loop (checked in-process)."""

import json
import os
import signal
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hbmeta import GradientSteps, LinearGaussian, ModelSpec, NormalLikelihood, Sinusoid, infer, linear, mlp, train_maml
from hbmeta.base.checkpoint import Checkpointer
from hbmeta.base.files import BadFileError
from hbmeta.base.xla import QUICK_COMPILE_FLAGS
from hbmeta.cli.main import main
from hbmeta.run.rundir import find_partial

_SCRIPT = os.path.join(os.path.dirname(sys.executable), "hbmeta")
HBMETA = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "hbmeta.cli.main"]
# MAML and SVI long enough (10 chunks of 2000 iterations, a checkpoint after each) to be killed in the middle
RUN = ["run", "linear", "--method", "svi", "maml.num_iterations=20000", "inference.svi.num_steps=20000",
       "inference.svi.num_draws=50", "run.checkpoint_every=2000", "tasks.num_test=20", "maml.meta_batch_size=40"]


_RUNNING = []  # every process started, so that a failed test leaves none behind (see _no_process_left)


@pytest.fixture(autouse=True)
def _no_process_left():
    yield
    while _RUNNING:
        proc = _RUNNING.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _start(argv, cwd, cache, kill_at=None):
    """Start ``hbmeta argv``; return ``wait() -> (rc, stdout, stderr)``. With ``kill_at``, the process group is
    SIGKILLed when a line of stderr contains it. The kill lands some milliseconds after the line is printed, and a
    chunk of these small runs takes about 10 ms, so the run may have saved a few more chunks by then: a test bounds
    the saved step count from below by the printed one (a count on screen is a saved state) and from above by the
    stage's total."""
    # Quick compilation (the runs are small), and JAX's on-disk cache of compiled code: a resumed run reads what
    # the killed run compiled. Runs that overlap in time get caches of their own (JAX's writes are not atomic).
    env = dict(os.environ, CI="1", JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               XLA_FLAGS=" ".join(QUICK_COMPILE_FLAGS))
    proc = subprocess.Popen(HBMETA + argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    _RUNNING.append(proc)
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


def _checkpoint_done(partial, stage, *, shown, total, every):
    """The step count of the stage's checkpoint: at least the count ``shown`` when the kill was sent (saved before
    shown), at most the stage's ``total``, a multiple of the interval ``every``."""
    path = os.path.join(partial, "checkpoints", f"{stage}.npz")
    assert os.path.isfile(path), os.listdir(partial)
    with np.load(path) as ck:
        done = int(ck["__done__"])
    assert shown <= done <= total and done % every == 0, done
    return done


def _assert_same_run(a, b, names=("posterior.npz",)):
    """The arrays of ``names`` equal bit for bit, and the metrics but for their timings."""
    for name in names:
        with np.load(a / name) as x, np.load(b / name) as y:
            assert sorted(x.files) == sorted(y.files)
            for k in x.files:
                np.testing.assert_array_equal(x[k], y[k], err_msg=f"{name}:{k}")  # bit for bit
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    ma.pop("timings_s"), mb.pop("timings_s")
    assert ma == mb


def test_a_run_killed_in_maml_training_and_in_svi_resumes_to_the_same_result(tmp_path, capsys):
    full = _start(RUN + ["--out", "full"], tmp_path, tmp_path / "cache-full")
    killed = _start(RUN + ["--out", "killed"], tmp_path, tmp_path / "cache-killed", kill_at="meta-training: 10000/20000")
    rc, _, err = killed()
    assert rc == -signal.SIGKILL, err
    assert not (tmp_path / "killed").exists()  # never looks complete: no final directory, no run.json
    final, partial = find_partial(tmp_path / "killed")
    assert final == str(tmp_path / "killed") and not os.path.exists(os.path.join(partial, "run.json"))
    done = _checkpoint_done(partial, "maml", shown=10000, total=20000, every=2000)
    # a partial run is not a run: predict and diagnose refuse it in one line
    support = tmp_path / "s.csv"
    support.write_text("0,0,0,1\n")
    for argv in (["predict", partial, "--support", str(support)], ["diagnose", str(tmp_path / "killed")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("hbmeta: error: ") and err.count("\n") == 1, err
    # resumed, then killed again half-way through SVI
    rc, _, err = _start(["run", "--resume", partial], tmp_path, tmp_path / "cache-killed", kill_at="SVI: 10000/20000")()
    assert rc == -signal.SIGKILL, err
    assert f"meta-training: {done}/20000" in err and "resumed" in err  # it continued; it did not start again
    assert not (tmp_path / "killed").exists()
    _, partial = find_partial(tmp_path / "killed")  # the resumed run's own partial directory
    done = _checkpoint_done(partial, "svi", shown=10000, total=20000, every=2000)
    rc, _, err = _start(["run", "--resume", partial], tmp_path, tmp_path / "cache-killed")()
    assert rc == 0, err
    assert "meta-training: 20000/20000 (100%)" in err and f"SVI: {done}/20000" in err
    assert err.count("resumed") == 2  # MAML from its final checkpoint, SVI from its last one
    rc, _, err = full()
    assert rc == 0, err
    assert not [n for n in os.listdir(tmp_path) if ".partial-" in n] and not (tmp_path / "killed" / "checkpoints").exists()
    _assert_same_run(tmp_path / "full", tmp_path / "killed", ("meta_params.npz", "maml_losses.npz", "posterior.npz"))


# NUTS long enough (20 chunks of 200 transitions, a checkpoint after each) to be killed in the middle of warm-up
RUN_NUTS = ["run", "linear", "--method", "nuts", "maml.num_iterations=500", "inference.nuts.num_warmup=3000",
            "inference.nuts.num_samples=1000", "inference.nuts.num_chains=2", "tasks.num_test=20"]


def test_a_run_killed_in_nuts_warm_up_resumes_to_the_same_result(tmp_path):
    full = _start(RUN_NUTS + ["--out", "full"], tmp_path, tmp_path / "cache-full")
    rc, _, err = _start(RUN_NUTS + ["--out", "killed"], tmp_path, tmp_path / "cache-killed",
                        kill_at="NUTS: 1600/4000")()
    assert rc == -signal.SIGKILL, err
    assert not (tmp_path / "killed").exists()
    _, partial = find_partial(tmp_path / "killed")
    # killed in warm-up but for a slow kill (test_mcmc_resumed_from_a_checkpoint_equals_one_uninterrupted_run
    # pins a stop in warm-up in-process)
    done = _checkpoint_done(partial, "nuts", shown=1600, total=4000, every=200)
    rc, _, err = _start(["run", "--resume", partial], tmp_path, tmp_path / "cache-killed")()
    assert rc == 0, err
    assert f"NUTS: {done}/4000" in err and "resumed" in err
    rc, _, err = full()
    assert rc == 0, err
    _assert_same_run(tmp_path / "full", tmp_path / "killed")


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


@pytest.mark.parametrize("method", ["svi", "svgd", "laplace", "ensemble"])
def test_a_posterior_fit_resumed_from_a_checkpoint_equals_one_uninterrupted_run(tmp_path, method):
    spec = ModelSpec(GradientSteps(linear().apply, step_size=0.1), {"w": jnp.zeros(2)},
                     likelihood=NormalLikelihood(noise=0.5))
    tasks = LinearGaussian(dim=2).sample(jax.random.key(0), 10)
    size = {"svi": {"num_draws": 5}, "svgd": {"num_particles": 4}, "laplace": {"num_draws": 5},
            "ensemble": {"num_members": 2, "meta_batch_size": 2, "holdout": "none",
                         "init": lambda k: {"w": jax.random.normal(k, (2,))}}}[method]
    steps = "num_iterations" if method == "ensemble" else "num_steps"
    kw = dict(method=method, key=jax.random.key(1), chunk_size=10, progress=False, **size)
    whole = infer(spec, tasks, **{steps: 40}, **kw)
    path = tmp_path / f"{method}.npz"
    infer(spec, tasks, **{steps: 20}, checkpoint=Checkpointer(path), **kw)  # stopped at 20: its last checkpoint
    resumed = infer(spec, tasks, **{steps: 40}, checkpoint=Checkpointer(path), **kw)  # 20 done: 20 more
    np.testing.assert_array_equal(resumed.info["losses"], whole.info["losses"])
    for name in whole.samples:
        np.testing.assert_array_equal(resumed.samples[name], whole.samples[name], err_msg=name)
    with np.load(path) as ck:
        assert int(ck["__done__"]) == 40


class _Killed(Exception):
    pass


class _KilledAfter(Checkpointer):
    """A checkpointer whose process "dies" right after its n-th save (the file then holds that state)."""

    def __init__(self, path, n):
        super().__init__(path)
        self.n = n

    def maybe_save(self, *args, **kwargs):
        super().maybe_save(*args, **kwargs)
        if self.saves == self.n:
            raise _Killed


@pytest.mark.parametrize("kernel, chain_method, saves", [("nuts", "vectorized", 2), ("hmc", "sequential", 4)])
def test_mcmc_resumed_from_a_checkpoint_equals_one_uninterrupted_run(tmp_path, kernel, chain_method, saves):
    """Stopped in warm-up (2 of 5 chunks: the adaptation state is carried) or in sampling (4 of 5)."""
    spec = ModelSpec(GradientSteps(linear().apply, step_size=0.1), {"w": jnp.zeros(2)})  # σ inferred too
    tasks = LinearGaussian(dim=2).sample(jax.random.key(0), 10)
    kw = dict(method=kernel, key=jax.random.key(1), num_chains=2, num_warmup=30, num_samples=20, chunk_size=10,
              chain_method=chain_method, progress=False, **({"max_tree_depth": 3} if kernel == "nuts" else {}))
    whole = infer(spec, tasks, **kw)
    path = tmp_path / f"{kernel}.npz"
    with pytest.raises(_Killed):
        infer(spec, tasks, **kw, checkpoint=_KilledAfter(path, saves))
    with np.load(path) as ck:
        assert int(ck["__done__"]) == 10 * saves
    resumed = infer(spec, tasks, **kw, checkpoint=Checkpointer(path))
    assert sorted(resumed.samples) == sorted(whole.samples) and "noise" in whole.samples
    for name in whole.samples:
        np.testing.assert_array_equal(resumed.samples[name], whole.samples[name], err_msg=name)
    for name in whole.sample_stats:
        np.testing.assert_array_equal(resumed.sample_stats[name], whole.sample_stats[name], err_msg=name)
    assert whole.samples["theta"].shape == (2, 20, 2) and np.ptp(whole.samples["theta"][:, :, 0]) > 0
    # a checkpoint of another configuration (three chains) is refused, naming the file
    with pytest.raises(BadFileError, match=f"{kernel}.npz: state array .* expected"):
        infer(spec, tasks, **{**kw, "num_chains": 3}, checkpoint=Checkpointer(path))


def test_mclmc_resumed_in_sampling_equals_one_uninterrupted_run(tmp_path):
    """MCLMC (blackjax) from an ensemble, stopped after 2 of 4 sampling chunks, resumes (from its saved tuned
    chains: the tuning is not repeated, and from its draws so far) to the uninterrupted draws, bit for bit."""
    pytest.importorskip("blackjax")  # MCLMC's optional dependency (in the test extra)
    from hbmeta import run_ensemble, run_mclmc

    spec = ModelSpec(GradientSteps(linear().apply, step_size=0.1), {"w": jnp.zeros(2)},
                     likelihood=NormalLikelihood(noise=0.5))
    tasks = LinearGaussian(dim=2).sample(jax.random.key(0), 10)
    ens = run_ensemble(spec, tasks, key=2, num_members=2, init=lambda k: {"w": jax.random.normal(k, (2,))},
                       num_iterations=20, meta_batch_size=4, holdout="none", progress=False)
    kw = dict(key=3, init=ens, num_samples=8, thinning=2, num_tuning_steps=30, chunk_size=2, progress=False)
    whole = run_mclmc(spec, tasks, **kw)
    path = tmp_path / "mclmc.npz"
    with pytest.raises(_Killed):
        run_mclmc(spec, tasks, **kw, checkpoint=_KilledAfter(path, 2))
    with np.load(path) as ck:
        assert int(ck["__done__"]) == 4
    assert (tmp_path / "mclmc-tuned.npz").is_file()
    resumed = run_mclmc(spec, tasks, **kw, checkpoint=Checkpointer(path))
    np.testing.assert_array_equal(resumed.samples["theta"], whole.samples["theta"])
    np.testing.assert_array_equal(resumed.sample_stats["energy_change"], whole.sample_stats["energy_change"])
    np.testing.assert_array_equal(resumed.info["step_size"], whole.info["step_size"])
    assert whole.samples["theta"].shape == (4, 8, 2) and np.ptp(whole.samples["theta"][:, :, 0]) > 0
    with pytest.raises(BadFileError, match="mclmc-tuned.npz: state array .* expected"):
        run_mclmc(spec, tasks, **{**kw, "chains_per_member": 3}, checkpoint=Checkpointer(path))


def test_resume_refuses_a_complete_run_and_nothing(tmp_path):
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "run.json").write_text("{}")
    with pytest.raises(ValueError, match="complete run already"):
        find_partial(tmp_path / "done")
    with pytest.raises(ValueError, match="nothing to resume"):
        find_partial(tmp_path / "never")


# The ensemble's meta-training (the default method): 8 chunks of 1,000 steps, a checkpoint after each. SVGD and
# Laplace's MAP search checkpoint through the same loop and are checked in-process
# (test_a_posterior_fit_resumed_from_a_checkpoint_equals_one_uninterrupted_run).
_KILL_RUNS = {
    "ensemble": (["inference.ensemble.num_iterations=8000", "inference.ensemble.num_members=3",
                  "inference.ensemble.meta_batch_size=4"],
                 "ensemble meta-training (3 members)", 2000),
}


@pytest.mark.parametrize("method", sorted(_KILL_RUNS))
def test_a_run_killed_in_its_posterior_stage_resumes_to_the_same_result(tmp_path, method):
    settings, label, shown = _KILL_RUNS[method]
    kill_at = f"{label}: {shown}/8000"
    argv = ["run", "linear", "--method", method, "maml.num_iterations=500", "run.checkpoint_every=1000",
            "tasks.num_test=20", *settings]
    full = _start(argv + ["--out", "full"], tmp_path, tmp_path / "cache-full")
    rc, _, err = _start(argv + ["--out", "killed"], tmp_path, tmp_path / "cache-killed", kill_at=kill_at)()
    assert rc == -signal.SIGKILL, err
    assert not (tmp_path / "killed").exists()  # never looks complete
    _, partial = find_partial(tmp_path / "killed")
    assert not os.path.exists(os.path.join(partial, "run.json"))
    done = _checkpoint_done(partial, method, shown=shown, total=8000, every=1000)
    rc, _, err = _start(["run", "--resume", partial], tmp_path, tmp_path / "cache-killed")()
    assert rc == 0, err
    assert f"{label}: {done}/8000" in err and "resumed" in err  # it continued; it did not start again
    rc, _, err = full()
    assert rc == 0, err
    assert not [n for n in os.listdir(tmp_path) if ".partial-" in n] and not (tmp_path / "killed" / "checkpoints").exists()
    _assert_same_run(tmp_path / "full", tmp_path / "killed")
