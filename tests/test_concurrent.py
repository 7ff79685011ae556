"""Concurrent runs: distinct directories, one winner per --out, no lock or partial directory left."""

import json
import os
import subprocess
import sys
import threading

import pytest

from hbmeta.run import rundir
from hbmeta.run.rundir import RunDirectoryBusy, RunDirectoryExists, RunWriter, new_run_path

_SCRIPT = os.path.join(os.path.dirname(sys.executable), "hbmeta")
HBMETA = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "hbmeta.cli.main"]


def test_runs_started_in_the_same_second_get_different_directories(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir.time, "strftime", lambda fmt: "20250101-120000")  # every call: the same second
    paths, barrier = [], threading.Barrier(8)

    def start():
        barrier.wait()
        paths.append(new_run_path("sinusoid", runs_dir=str(tmp_path)))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 8
    assert sorted(os.listdir(tmp_path)) == sorted(["sinusoid-20250101-120000"]
                                                  + [f"sinusoid-20250101-120000-{n}" for n in range(2, 9)])


def test_a_second_writer_of_the_same_directory_fails_at_once(tmp_path):
    out = str(tmp_path / "run")
    first = RunWriter(out)
    with pytest.raises(RunDirectoryBusy, match="is being written by another hbmeta run"):
        RunWriter(out)
    first.write_text("a.txt", "a")
    first.commit({"model": "x"})
    with pytest.raises(RunDirectoryExists):  # once it is finished, the directory is taken
        RunWriter(out)
    assert sorted(os.listdir(tmp_path)) == ["run"]  # no lock file and no partial directory left
    marker = json.loads((tmp_path / "run" / "run.json").read_text())
    assert set(marker["sha256"]) == {"a.txt"}


def test_a_failed_run_gives_back_its_reserved_name(tmp_path):
    path = new_run_path("linear", runs_dir=str(tmp_path))
    writer = RunWriter(path)
    writer.write_text("a.txt", "a")
    writer.discard()
    assert os.listdir(tmp_path) == []


def test_two_runs_with_the_same_out_one_wins(tmp_path):
    # (that `hbmeta run RUN/config.toml` reproduces a run's metrics exactly is tests/test_cli.py's linear rerun)
    argv = HBMETA + ["run", "linear", "--toy", "-q", "--method", "maml", "--out", "same"]
    procs = [subprocess.Popen(argv, cwd=tmp_path, env=dict(os.environ, CI="1"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 2], results
    (loser_err,) = [err for rc, _, err in results if rc == 2]
    assert len(loser_err.strip().splitlines()) == 1 and "Traceback" not in loser_err
    assert "is being written by another hbmeta run" in loser_err or "already exists" in loser_err, loser_err
    assert sorted(os.listdir(tmp_path / "same")) and (tmp_path / "same" / "run.json").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".same")]  # no partial directory, no lock
