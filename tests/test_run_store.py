"""`tasks.store`: `hbmeta run` on the training tasks of a task store on disk (hbmeta.save_task_store).

One real toy run (SVI subsampling the store, MAML meta-batches from it) and the checks made before any work:
a missing or damaged store, tasks that do not fit the network or the likelihood, settings that cannot use a store.
"""

import json
import os
import tomllib

import jax
import numpy as np
import pytest

import hbmeta as hb
from hbmeta.base.memory import MemoryLimitError
from hbmeta.cli.main import main
from hbmeta.run import build as _build
from hbmeta.run.config import from_dict, load_config
from hbmeta.run.rundir import load_run
from hbmeta.run.store_plan import open_store, store_plan

NUM_TASKS = 40
# the linear model (3 inputs) at toy size; SVI reads 4 tasks a step (the toy cap of subsample_size); MAML is not
# scored beside SVI (a second predictive to compile: the file's run stays under 15 s)
RUN = ["run", "linear", "--toy", "-q", "--method", "svi", "inference.svi.subsample_size=10", "tasks.num_train=100",
       "evaluation.compare_maml=false"]


def _store(path, num_tasks=NUM_TASKS, family=None, seed=5):
    family = hb.LinearGaussian(dim=3, num_support=5, num_query=10) if family is None else family
    tasks = family.sample(jax.random.key(seed), num_tasks)
    return hb.save_task_store(path, [tasks.take(slice(0, num_tasks // 2)), tasks.take(slice(num_tasks // 2, None))])


@pytest.fixture(scope="module")
def store_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("store_run")
    _store(base / "store")
    cwd = os.getcwd()
    os.chdir(base)  # a relative tasks.store is relative to the working directory
    try:
        rc = main([*RUN, "tasks.store=store", "--out", "run"])
    finally:
        os.chdir(cwd)
    assert rc == 0
    return base


def test_a_run_trains_on_the_store_and_evaluates_on_family_tasks(store_run):
    run = store_run / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_train_tasks"] == NUM_TASKS  # the store's count, not tasks.num_train = 100
    store = metrics.pop("tasks_store")
    assert store.pop("describe").startswith(f"{NUM_TASKS} tasks, read from disk")
    assert store == {"path": str(store_run / "store"), "num_tasks": NUM_TASKS, "loaded": False,
                     "summary_tasks": NUM_TASKS}
    assert set(metrics["held_out"]) == {"svi"} and metrics["held_out"]["svi"]["mse"] > 0
    assert np.isfinite(metrics["maml_final_loss"]) and len(np.load(run / "maml_losses.npz")["losses"]) == 30
    assert "exact_posterior" in metrics  # every training task is in posterior.nc: the exact comparison holds
    marker = json.loads((run / "run.json").read_text())
    assert marker["method"] == "svi" and marker["settings"]["subsample_size"] == 4  # toy cap
    assert dict(hb.load_netcdf(run / "posterior.nc").log_likelihood["y"].sizes)["task"] == NUM_TASKS
    assert "training tasks: tasks.store " in (run / "summary.txt").read_text()


def test_the_written_config_records_the_store_and_loads_back_equal(store_run):
    path = store_run / "run" / "config.toml"
    raw = tomllib.loads(path.read_text())
    assert raw["tasks"]["store"] == str(store_run / "store") and raw["tasks"]["num_train"] == NUM_TASKS
    assert raw["inference"]["svi"]["subsample_size"] == 10  # the uncapped value, with toy = true
    cfg = load_config(str(path))
    assert from_dict(raw) == cfg == load_config(str(store_run / "run"))
    again = load_config("linear", [f"tasks.store={store_run / 'store'}", f"tasks.num_train={NUM_TASKS}",
                                   "inference.svi.subsample_size=10", "evaluation.compare_maml=false",
                                   "run.progress=false"], method="svi", toy=True)
    assert cfg == again
    # run from the written config (any working directory): the store resolves to itself, nothing replaced
    store = open_store(cfg)
    assert store.directory == cfg.tasks.store and store.num_tasks == cfg.tasks.num_train
    eff = cfg.effective()
    plan = store_plan(eff, store, "svi", _build.method_settings(eff), None)
    assert plan.lazy and plan.num_tasks == NUM_TASKS  # the toy cap of 8 tasks is not for a store read lazily


def _fails_before_work(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hbmeta: error: ") and err.count("\n") == 1, err
    assert sorted(os.listdir(tmp_path)) == before  # no run directory, not even a partial one
    return err


def test_a_missing_or_damaged_store_is_one_line_naming_tasks_store(tmp_path, monkeypatch, capsys):
    err = _fails_before_work(tmp_path, monkeypatch, capsys, [*RUN, "tasks.store=nosuch", "--out", "r"])
    assert f"tasks.store = 'nosuch': {tmp_path / 'nosuch'} does not exist; expected a task store directory" in err
    (tmp_path / "empty").mkdir()
    err = _fails_before_work(tmp_path, monkeypatch, capsys, [*RUN, "tasks.store=empty", "--out", "r"])
    assert f"tasks.store = 'empty': {tmp_path / 'empty' / 'store.json'}: not found" in err
    store = _store(tmp_path / "cut")
    npy = os.path.join(store.directory, "y_query.npy")
    with open(npy, "r+b") as fh:
        fh.truncate(os.path.getsize(npy) // 2)
    err = _fails_before_work(tmp_path, monkeypatch, capsys, [*RUN, "tasks.store=cut", "--out", "r"])
    assert f"tasks.store = 'cut': {npy}: is not a readable .npy file" in err


def test_tasks_that_do_not_fit_the_network_or_likelihood_are_refused_before_work(tmp_path, monkeypatch, capsys):
    _store(tmp_path / "sines", family=hb.Sinusoid(num_support=5, num_query=10))  # 1 input, not 3
    err = _fails_before_work(tmp_path, monkeypatch, capsys, [*RUN, "tasks.store=sines", "--out", "r"])
    assert ("x_support has shape (tasks, 5, 1) per store.json; expected (tasks, points, 3): 3 input features, the "
            "input size of the configured network (family 'linear')") in err
    blobs = ["run", "blobs", "--toy", "-q", "--method", "maml", "--out", "r"]
    _store(tmp_path / "reals", family=hb.LinearGaussian(dim=2, num_support=5, num_query=5))
    err = _fails_before_work(tmp_path, monkeypatch, capsys, [*blobs, "tasks.store=reals"])
    assert "y_support is float32 of shape (tasks, 5, 1); expected (tasks, points) integer class labels" in err
    labels = np.full((4, 5), 7, np.int32)
    hb.save_task_store(tmp_path / "labels", hb.make_tasks(np.zeros((4, 5, 2)), labels, np.zeros((4, 5, 2)), labels))
    err = _fails_before_work(tmp_path, monkeypatch, capsys, [*blobs, "tasks.store=labels"])
    assert "y_support has labels 7..7; expected class labels 0..2 (family 'blobs')" in err


def test_settings_that_cannot_use_the_store_are_refused_before_work(tmp_path, monkeypatch, capsys):
    _store(tmp_path / "store")
    full = [a for a in RUN if a != "--toy"]
    err = _fails_before_work(tmp_path, monkeypatch, capsys, [*full, "tasks.store=store", "inference.svi.subsample_size=50",
                                                             "--out", "r"])
    assert "inference.svi.subsample_size = 50; expected at most the 40 training tasks (tasks.store)" in err
    err = _fails_before_work(tmp_path, monkeypatch, capsys, [*RUN, "tasks.store=store", "run.devices=2", "--out", "r"])
    assert "tasks.store with inference.method = 'svi' and run.devices = 2; expected run.devices = 1" in err
    np.savez(tmp_path / "t.npz", x_support=np.zeros((2, 3, 3)), y_support=np.zeros((2, 3, 1)),
             x_query=np.zeros((2, 4, 3)), y_query=np.zeros((2, 4, 1)))
    err = _fails_before_work(tmp_path, monkeypatch, capsys, ["fit", "linear", "--toy", "-q", "--tasks", "t.npz",
                                                             "tasks.store=store", "--out", "r"])
    assert "--tasks t.npz with tasks.store = 'store'; expected one source of training tasks" in err
    with pytest.raises(ValueError, match=r"tasks.store = 'store' with a \[data\] table"):
        load_config("sleepstudy", ["tasks.store=store"])
    with pytest.raises(ValueError, match="inference.svi.subsample_size = 41; expected at most tasks.num_train = 40"):
        load_config("linear", ["inference.svi.subsample_size=41"], method="svi")
    with pytest.raises(ValueError, match="train_tasks were given with tasks.store"):
        hb.run_pipeline(load_config("linear", ["tasks.store=store"]), train_tasks=_store(tmp_path / "s2").materialise())


def test_methods_that_score_every_task_load_the_store_whole_after_a_memory_check(tmp_path, monkeypatch):
    store = _store(tmp_path / "store")
    for method, toy, lazy, n in (("nuts", False, False, 40), ("nuts", True, False, 8), ("svi", False, False, 40),
                                 ("maml", True, True, 40), ("ensemble", False, False, 40)):
        eff = load_config("linear", [f"tasks.store={store.directory}"], method=method, toy=toy).effective()
        plan = store_plan(eff, store, method, _build.method_settings(eff), None)
        assert (plan.lazy, plan.num_tasks) == (lazy, n), method
    monkeypatch.setenv("HBMETA_MEMORY_CAP", "1k")
    eff = load_config("linear", [f"tasks.store={store.directory}"], method="laplace").effective()
    with pytest.raises(MemoryLimitError, match=r"tasks.store .*: 40 tasks loaded whole \(method 'laplace' scores "
                                               r"every training task a step\) needs about .*; lower the tasks in the "
                                               r"store, or run inference.method = 'svi' with"):
        store_plan(eff, store, "laplace", _build.method_settings(eff), None)


def test_a_run_written_before_the_store_keys_still_loads(store_run, tmp_path):
    # config.toml of an older run lacks tasks.store and inference.svi.subsample_size: their defaults are what it did
    import shutil

    old = tmp_path / "old"
    shutil.copytree(store_run / "run", old)
    text = (old / "config.toml").read_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith(("store =", "subsample_size ="))]
    assert len(lines) == len(text.splitlines()) - 2
    (old / "config.toml").write_text("\n".join(lines) + "\n")
    info = json.loads((old / "run.json").read_text())
    info.get("sha256", {}).pop("config.toml", None)  # the recorded checksum is of the file as written
    (old / "run.json").write_text(json.dumps(info))
    cfg = load_run(str(old)).config
    assert cfg.tasks.store == "" and cfg.inference.svi.subsample_size == 0
