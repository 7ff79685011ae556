"""The command line end to end: every ready-made model at toy size, predict, diagnose, errors, interruption.

(A run SIGKILLed while it trains or fits, and resumed: tests/test_resume.py.)

The model runs start together when the module begins, in a few processes (toy runs are compile-bound
and single-threaded, so they overlap well on two cores): `hbmeta run` with no argument as a real
console-script process, and the other models through
``main([...])`` in sequence inside two Python processes (one import, shared compilation caches; the
second run of a configuration is then compiled from JAX's on-disk cache). The other tests run in this
process meanwhile and wait only for the runs they read.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import hbmeta as hb
from hbmeta.base.xla import QUICK_COMPILE_FLAGS
from hbmeta.cli.main import main
from hbmeta.models import names as model_names
from hbmeta.run.config import load_config

_SCRIPT = os.path.join(os.path.dirname(sys.executable), "hbmeta")
HBMETA = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "hbmeta.cli.main"]
TIMEOUT = 300
FAST_XLA = " ".join(QUICK_COMPILE_FLAGS)

# Runs `main(argv)` for each (name, argv) in turn and prints one JSON line per command.
_SEQUENCE = r"""
import contextlib, io, json, sys
from hbmeta.cli.main import main
for name, argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    print(json.dumps({"name": name, "rc": rc, "out": out.getvalue(), "err": err.getvalue()}), flush=True)
"""


class _Process:
    """A process started now, its output read by threads; with ``kill_at``, SIGKILLed when stderr shows it."""

    def __init__(self, argv, cwd, env, kill_at=None):
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.out, self.err = [], []
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out, None), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.err, kill_at), daemon=True)]
        for t in self._threads:
            t.start()

    def _read(self, stream, lines, kill_at):
        for line in stream:
            lines.append(line)
            if kill_at and kill_at in line:
                os.killpg(self.proc.pid, signal.SIGKILL)  # a hard kill: no Python clean-up runs
                kill_at = None

    def wait(self):
        try:
            rc = self.proc.wait(timeout=TIMEOUT)
        finally:
            self.stop()
        return rc, "".join(self.out), "".join(self.err)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for t in self._threads:
            t.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


class _Jobs:
    """The runs of this module; ``result(name)`` waits for a run and returns (status, stdout, stderr)."""

    def __init__(self, base):
        self.base = base
        env = dict(os.environ, CI="1", JAX_COMPILATION_CACHE_DIR=str(base / "jax-cache"),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
        env.pop("XLA_FLAGS", None)  # `--toy` asks for quick compilation itself
        fast = dict(env, XLA_FLAGS=FAST_XLA)  # and so does this, for the runs inside one Python process
        q = ["--toy", "-q"]
        self.single = {
            # `hbmeta run` with no model: the built-in sinusoid, written under ./runs/
            "sinusoid": _Process(HBMETA + ["run", *q], base / "default", env),
        }
        groups = [
            # linear, then the same run again from its config.toml, a fit on our own tasks, blobs
            [("linear", ["run", "linear", *q, "--out", "linear"]),
             ("linear_again", ["run", "linear/config.toml", "-q", "--out", "linear_again"]),
             ("fit", ["fit", "linear", *q, "--method", "maml", "--tasks", "tasks.npz", "--out", "fit"]),
             ("blobs", ["run", "blobs", *q, "--out", "blobs"])],
            # its model file runs the ensemble, as the default does; here NUTS, for the samplers' diagnostics
            [("sinusoid_line", ["run", "sinusoid_line", *q, "--method", "nuts", "--out", "sinusoid_line"]),
             # its model file's NUTS: chains from ensemble members in the last-layer subspace
             ("sinusoid_nuts", ["run", "sinusoid", *q, "--method", "nuts", "--out", "sinusoid_nuts"])],
        ]
        self.grouped = {}
        for i, group in enumerate(groups):  # one cache per process: concurrent writers never share one
            genv = dict(fast, JAX_COMPILATION_CACHE_DIR=str(base / f"jax-cache-{i}"))
            proc = _Process([sys.executable, "-c", _SEQUENCE, json.dumps(group)], base, genv)
            self.grouped.update({name: proc for name, _ in group})
        self._done = {}

    def result(self, name):
        if name in self.single:
            return self.single[name].wait()
        proc = self.grouped[name]
        if proc not in self._done:
            self._done[proc] = proc.wait()
        rc, out, err = self._done[proc]
        for line in out.splitlines():
            record = json.loads(line)
            if record["name"] == name:
                return record["rc"], record["out"], record["err"]
        raise AssertionError(f"{name} did not finish: status {rc}\n{err[-4000:]}")

    def stop(self):
        for proc in [*self.single.values(), *self.grouped.values()]:
            proc.stop()


def _tasks_file(path):
    """Linear-regression tasks (3 inputs) as the .npz that `hbmeta fit --tasks` reads."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(12, 3, 1))
    xs, xq = rng.normal(size=(12, 5, 3)), rng.normal(size=(12, 10, 3))
    np.savez(path, x_support=xs, y_support=xs @ w, x_query=xq, y_query=xq @ w)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    (base / "default").mkdir()
    _tasks_file(base / "tasks.npz")
    started = _Jobs(base)
    yield started
    started.stop()


def _finished(jobs, name):
    base = jobs.base
    rc, out, err = jobs.result(name)
    assert rc == 0, f"{name} failed with {rc}:\n{out}\n{err}"
    assert "Traceback" not in err and "Warning" not in err, err
    return base, out, err


def _run_dir(base, name):
    if name == "sinusoid":
        (found,) = (base / "default" / "runs").iterdir()
        assert found.name.startswith("sinusoid-")
        return found
    return base / name


RUN_FILES = {"config.toml", "meta_params.npz", "posterior.npz", "posterior.nc", "heldout.nc", "metrics.json",
             "summary.txt", "maml_losses.npz", "run.json", "trace.png", "rank.png"}


@pytest.mark.parametrize("name", ["sinusoid", "sinusoid_line", "linear", "blobs"])
def test_every_model_runs_end_to_end_at_toy_size(jobs, name):
    assert set(model_names()) == {"sinusoid", "sinusoid_line", "linear", "blobs", "radon", "sleepstudy"}
    base, out, err = _finished(jobs, name)
    run = _run_dir(base, name)
    files = set(os.listdir(run))
    method = "ensemble" if name in ("sinusoid", "blobs") else "nuts"  # as their model files say
    expected = RUN_FILES | ({"calibration.png"} if name != "blobs" else {"reliability.png"})
    if method == "ensemble":
        expected -= {"rank.png"}  # one draw per member: no chains to rank
    if name in ("sinusoid", "sinusoid_line"):
        expected |= {"predictive.png", "predictive_maml.png"}
    assert expected <= files, expected - files
    marker = json.loads((run / "run.json").read_text())
    assert marker["complete"] and set(marker["files"]) == files and marker["method"] == method
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["held_out"]) == {method, "maml"} and metrics["toy"] is True
    assert metrics["task_posterior"] == ("adapted" if method == "ensemble" else "off")
    for scores in metrics["held_out"].values():
        if name == "blobs":
            assert 0 <= scores["accuracy"] <= 1 and 0 <= scores["ece"] <= 1 and 0 <= scores["brier"] <= 2
        else:
            assert scores["mse"] > 0 and np.isfinite(scores["nll"]) and 0 <= scores["coverage_90"] <= 1
    for png in (f for f in files if f.endswith(".png")):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the final table and the file list are printed; the written config is the resolved one
    assert "held-out metric" in out and "files in" in out and "config.toml" in out
    cfg = load_config(str(run / "config.toml"))
    assert cfg == load_config(name, ["run.progress=false"], toy=True, method=method)
    idata = hb.load_netcdf(run / "posterior.nc")
    chains, draws = 2, 10  # toy sizes: 2 chains × 10 draws, or 4 members × the nodes of their tails
    if method == "ensemble":
        fold = metrics.get("holdout_fit")
        assert fold is not None  # regression: σ, τ and the tails fitted on the folds; classification: τ and c
        chains, draws = 4, 1 if fold["tail_dof"] is None else 8
        if name == "blobs":  # c on every τ_m² by the mixture's Brier score estimated on the folds
            assert fold["noise"] is None and fold["scale_rule"] == "mixture Brier"
            scores = fold["scale_scores"]
            assert set(scores) == {"0.25", "0.5", "0.7", "1.0", "2.0", "4.0"}
            assert fold["scale"] == float(max(scores, key=scores.get))
            assert "each member's τ_m² × c with c = " in (run / "summary.txt").read_text()
        else:
            assert set(fold["tail_scores"]) == {"2.5", "3.0", "4.0", "6.0", "10.0", "30.0", "inf"}
            shares = fold["share_scores"]  # 1 always; the others where the second-moment rule applies
            assert "1.0" in shares and set(shares) <= {"1.0", "0.5", "0.25", "0.1", "0.05"}
            assert fold["noise_share"] == float(max(shares, key=shares.get))
            powers = fold["spread_scores"]  # the per-task scale's p: 0 (one scale) is always scored
            assert set(powers) == {"0.0", "0.25", "0.5", "0.75", "1.0", "1.25", "1.5"}
            assert fold["spread_power"] == float(max(powers, key=powers.get))
            assert ("spread_power" in idata.posterior) == (fold["spread_power"] > 0)
            # the per-point factor by distance to the support: five bins, floored, carried to the predictive;
            # not fitted under the folds'-likelihood fallback
            if fold["scale_rule"] == "second moment":
                assert len(fold["distance_scales"]) == 5 and len(fold["distance_edges"]) == 4
                assert min(fold["distance_scales"]) >= 0.3 * (1 - 1e-6)
                assert fold["distance_edges"] == sorted(fold["distance_edges"])
                assert "per-point scale by distance d to the nearest support point" in (run / "summary.txt").read_text()
                assert idata.posterior["distance_scales"].shape == (chains, draws, 5)  # kept with the draws
            else:
                assert fold["distance_scales"] == [1.0] and "distance_scales" not in idata.posterior
    assert dict(idata.log_likelihood["y"].sizes) == {"chain": chains, "draw": draws, "task": 8}
    held = hb.load_netcdf(run / "heldout.nc")
    assert held.observed_data["y"].shape[0] == 8  # the held-out tasks are in it too


def test_no_argument_runs_the_sinusoid_model(jobs):
    base, out, _ = _finished(jobs, "sinusoid")
    assert out.startswith("hbmeta: sinusoid with ensemble and task-level posteriors (adapted): 1761 parameters, "
                          "8 training tasks (toy size)")


def test_linear_reports_the_distance_to_the_exact_posterior_and_reruns_identically(jobs):
    base, out, _ = _finished(jobs, "linear")
    assert "fitted vs exact posterior over θ: max |mean diff|/sd =" in out
    metrics = json.loads((base / "linear" / "metrics.json").read_text())
    exact = metrics["exact_posterior"]
    assert exact["num_draws"] == 20 and 0 < exact["sd_ratio_min"] <= exact["sd_ratio_max"]
    # recompute the exact posterior from the run's own training tasks and compare
    loaded = hb.load_run(base / "linear")
    cfg = loaded.config.effective()
    from hbmeta.run import build as _build

    train = _build.draw_tasks(_build.train_family(cfg), _build.keys(cfg.run.seed)["train"], cfg.tasks.num_train)[0]
    ref = hb.linear_gaussian_posterior(train, step_size=0.25, num_steps=2, noise=0.8)
    np.testing.assert_allclose(exact["exact_mean"], ref.mean, rtol=1e-5, atol=1e-6)
    draws = loaded.posterior.flat("theta")
    assert exact["max_mean_diff_sd"] == pytest.approx(np.max(np.abs(draws.mean(0) - ref.mean) / ref.sd), rel=1e-3)
    # `hbmeta run RUN/config.toml` reproduces the run exactly
    again = json.loads((base / "linear_again" / "metrics.json").read_text())
    assert again["held_out"] == metrics["held_out"] and again["exact_posterior"] == exact
    with np.load(base / "linear" / "posterior.npz") as a, np.load(base / "linear_again" / "posterior.npz") as b:
        np.testing.assert_array_equal(a["theta"], b["theta"])


def test_fit_on_your_own_tasks_then_predict(jobs, capsys):
    base, out, _ = _finished(jobs, "linear")
    fit = base / "fit"
    assert "held_out" not in json.loads((fit / "metrics.json").read_text())
    assert not (fit / "heldout.nc").exists() and (fit / "posterior.nc").exists()
    assert json.loads((fit / "run.json").read_text())["method"] == "maml"
    (base / "support3.csv").write_text("1.0,0.0,0.0,2.0\n0.0,1.0,0.0,-1.0\n0.0,0.0,1.0,0.5\n")
    assert main(["predict", str(fit), "--support", str(base / "support3.csv")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "x0,x1,x2,mean,sd,lo_50,hi_50,lo_90,hi_90" and len(lines) == 4  # predicted at the support inputs


def test_predict_on_a_csv_support_set_matches_the_adapted_draws(jobs, tmp_path, capsys):
    base, _, _ = _finished(jobs, "sinusoid")
    run = _run_dir(base, "sinusoid")
    support = tmp_path / "mine.csv"
    support.write_text("x,y\n-3.0,0.8\n-1.2,-1.9\n0.5,-2.4\n2.2,0.3\n4.0,2.1\n")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), "--support", str(support), "--out", str(out), "--plot",
                 str(tmp_path / "band.png")]) == 0
    assert "wrote 101 predictions" in capsys.readouterr().err
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 101 and list(rows[0]) == ["x", "mean", "sd", "lo_50", "hi_50", "lo_90", "hi_90"]
    table = {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}
    assert np.all(table["lo_90"] < table["lo_50"]) and np.all(table["lo_50"] < table["hi_50"])
    assert np.all(table["hi_50"] < table["hi_90"]) and np.all(table["sd"] > 0)
    # the mean is the average over the members of each one's linearised task-level predictive mean
    # given the support set (φ_j ~ N(φ̂_j, τ_m²I) conditioned on S_j), and the sd covers the members' σ_m
    loaded = hb.load_run(run)
    assert loaded.spec.task_posterior is not None and loaded.posterior.method == "ensemble"
    xs = np.array([[-3.0], [-1.2], [0.5], [2.2], [4.0]], np.float32)
    ys = np.array([[0.8], [-1.9], [-2.4], [0.3], [2.1]], np.float32)
    xq = table["x"].astype(np.float32)[:, None]
    mine = hb.make_tasks(xs[None], ys[None], xq[None], np.zeros((1, len(xq), 1), np.float32))
    post = loaded.posterior
    thetas, taus, sigmas = post.flat("theta"), post.flat("tau"), post.flat("noise")
    means = [hb.task_predictive(loaded.spec, thetas[m], mine, tau=float(taus[m]), noise=float(sigmas[m])).mean
             for m in range(len(thetas))]
    np.testing.assert_allclose(table["mean"], np.mean(np.asarray(means), axis=0)[0, :, 0], rtol=1e-4, atol=1e-4)
    assert np.all(table["sd"] >= np.min(sigmas) * (1 - 1e-5))
    assert (tmp_path / "band.png").read_bytes()[:4] == b"\x89PNG"


def test_predict_classification_with_npz_support_and_csv_query(jobs, tmp_path, capsys):
    base, _, _ = _finished(jobs, "blobs")
    np.savez(tmp_path / "s.npz", x=np.array([[0.0, 0.0], [0.1, 0.2], [3.0, 3.0], [3.1, 2.9], [-3.0, 3.0], [-2.9, 3.1]]),
             y=np.array([0, 0, 1, 1, 2, 2]))
    (tmp_path / "q.csv").write_text("x0,x1\n0.05,0.1\n3.0,3.05\n")
    assert main(["predict", str(base / "blobs"), "--support", str(tmp_path / "s.npz"),
                 "--query", str(tmp_path / "q.csv")]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [list(r) for r in rows][0] == ["x0", "x1", "label", "p_0", "p_1", "p_2"] and len(rows) == 2
    for r in rows:
        p = np.array([float(r[f"p_{c}"]) for c in range(3)])
        assert abs(p.sum() - 1) < 1e-5 and int(r["label"]) == int(np.argmax(p))


def test_nuts_from_members_in_the_last_layer_is_diagnosed_per_mode(jobs):
    base, _, _ = _finished(jobs, "sinusoid_nuts")
    run = base / "sinusoid_nuts"
    metrics = json.loads((run / "metrics.json").read_text())
    d = metrics["diagnostics"]
    assert d["scope"] == "within modes" and d["num_modes"] == 2  # toy: 2 members, one chain each
    assert d["min_ess_bulk"] > 0 and d["min_ess_mixture"] > 0  # R-hat may not be computable from 10 toy draws
    theta = np.load(run / "posterior.npz")["theta"]  # (chains, draws, P): the output layer is the last 41
    hidden, last = theta[..., :-41], theta[..., -41:]
    assert theta.shape[:2] == (2, 10) and np.all(hidden == hidden[:, :1])  # held at each chain's member
    assert not np.allclose(hidden[0, 0], hidden[1, 0]) and np.all(last.std(axis=1).max(axis=-1) > 0)
    text = (run / "summary.txt").read_text()
    assert "subspace=last_layer, members=2" in text and "Within modes: largest R-hat" in text


def test_diagnose_prints_the_summary_and_writes_pictures(jobs, tmp_path, capsys):
    base, _, _ = _finished(jobs, "sinusoid_line")
    assert main(["diagnose", str(base / "sinusoid_line"), "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("hbmeta diagnosis: method nuts, 2 chain(s) x 10 draw(s).") and "r_hat" in out
    assert sorted(os.listdir(tmp_path / "d")) == ["rank.png", "trace.png"]
    # the default run's ensemble: no chains, so no R-hat, ESS or MCSE columns, and the reason is said
    run = _run_dir(*_finished(jobs, "sinusoid")[:1], "sinusoid")
    assert main(["diagnose", str(run), "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("hbmeta diagnosis: method ensemble, 4 chain(s)") and "R-hat and ESS do not apply" in out
    assert "r_hat" not in out and "ess_bulk" not in out and "mcse" not in out and "mean" in out
    assert sorted(os.listdir(tmp_path / "e")) == ["trace.png"]


@pytest.mark.parametrize("error, status, message", [
    (RuntimeError("something broke"), 2,
     "hbmeta: error: RuntimeError: something broke (run with --debug for the traceback)\n"),
    (KeyboardInterrupt(), 130, "hbmeta: interrupted\n"),
])
def test_an_exception_or_ctrl_c_removes_the_partial_run(tmp_path, monkeypatch, capsys, error, status, message):
    from hbmeta.run import build as _build

    def boom(*args, **kwargs):
        assert any(p.name.startswith(".r.partial-") for p in tmp_path.iterdir())  # it was being written
        raise error

    monkeypatch.setattr(_build, "draw_tasks", boom)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "linear", "--toy", "-q", "--out", "r"]) == status
    assert capsys.readouterr().err == message
    assert os.listdir(tmp_path) == []  # neither the run directory nor a partial one


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["run", "nosuch"], "unknown model 'nosuch'; expected one of blobs, linear, radon, sinusoid, sinusoid_line, sleepstudy"),
        (["run", "bad.toml"], "bad.toml: malformed TOML: "),
        (["run", "sinusoid", "--set", "inference.nuts.num_samples=abc"],
         "override inference.nuts.num_samples=abc: inference.nuts.num_samples = 'abc'; expected an integer >= 1"),
        (["run", "sinusoid", "maml.iterations=5"], "unknown key maml.iterations; allowed keys in [maml]"),
        (["run", "linear", "--method", "mcmc"], "argument --method: invalid choice: 'mcmc'"),
        (["run", "linear", "--out", "full"], "--out 'full' already exists and is not an empty directory"),
        (["run", "linear", "sinusoid"], "two models given ('linear' and 'sinusoid')"),
        (["run", "sinusoid", "--toy", "inference.ensemble.member_devices=3"],
         "inference.ensemble.member_devices=3; expected a count in [1, 2]"),
        (["fit", "linear", "--tasks", "wrong.npz"], "tasks file wrong.npz: x_support has 1 input features; expected 3"),
        (["predict", "no/such/run", "--support", "s.csv"], "run directory 'no/such/run' does not exist"),
        (["diagnose", "full"], "'full' has no run.json: not a complete hbmeta run"),
        (["predict"], "the following arguments are required: RUN, --support"),
        (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
    ],
)
def test_errors_are_one_line_with_exit_status_2(tmp_path, monkeypatch, capsys, argv, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text("[model\nname = 1\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    np.savez(tmp_path / "wrong.npz", x_support=np.zeros((2, 3, 1)), y_support=np.zeros((2, 3, 1)),
             x_query=np.zeros((2, 4, 1)), y_query=np.zeros((2, 4, 1)))
    before = sorted(os.listdir(tmp_path))
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("hbmeta: error: ") and captured.err.count("\n") == 1, captured.err
    assert fragment in captured.err, captured.err
    assert captured.out == "" and sorted(os.listdir(tmp_path)) == before  # nothing was done


def test_support_file_with_the_wrong_number_of_columns(jobs, tmp_path, capsys):
    base, _, _ = _finished(jobs, "linear")
    for text, seen in (("1.0,2.0\n", 2), ("1,2,3,4,5\n", 5)):
        (tmp_path / "s.csv").write_text(text)
        assert main(["predict", str(base / "linear"), "--support", str(tmp_path / "s.csv")]) == 2
        err = capsys.readouterr().err
        assert err == (f"hbmeta: error: support file {tmp_path / 's.csv'} has {seen} columns; expected 4: "
                       "3 input columns then 1 target column\n")


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["run", "nosuch", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.endswith("hbmeta: error: unknown model 'nosuch'; "
                                                                      "expected one of blobs, linear, radon, sinusoid, "
                                                                      "sinusoid_line, sleepstudy or a path to a "
                                                                      ".toml file\n")


@pytest.mark.parametrize("command", [[], ["run"], ["fit"], ["predict"], ["diagnose"], ["models"]])
def test_help_on_every_command_has_examples(capsys, command):
    assert main(command + ["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hbmeta") and "examples:" in out


def test_models_lists_the_ready_made_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["blobs", "linear", "radon", "sinusoid", "sinusoid_line", "sleepstudy"]
    assert all(len(line.split(maxsplit=1)) == 2 for line in out)


def test_run_pipeline_checks_its_arguments_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="cfg is a str; expected hbmeta.Config"):
        hb.run_pipeline("sinusoid")
    cfg = load_config("sinusoid", toy=True)
    three = hb.make_tasks(np.zeros((4, 5, 3)), np.zeros((4, 5, 1)), np.zeros((4, 6, 3)), np.zeros((4, 6, 1)))
    with pytest.raises(ValueError, match="train_tasks have 3 input features; expected 1"):
        hb.run_pipeline(cfg, train_tasks=three)
    labels = np.full((4, 6), 3, np.int32)
    bad = hb.make_tasks(np.zeros((4, 6, 2)), labels, np.zeros((4, 6, 2)), labels)
    with pytest.raises(ValueError, match=r"values 3..3; expected \(tasks, points\) class labels 0..2"):
        hb.run_pipeline(load_config("blobs", toy=True), train_tasks=bad)
    assert os.listdir(tmp_path) == []
