"""Two processes on localhost (jax.distributed, 2 simulated CPU devices each) give what one process gives.

tests/_distributed_worker.py runs in two processes joined through a coordinator on 127.0.0.1 and, for the
reference, alone. Compared: the meta-gradient of tasks made global from each process's share, an SVI loss
trajectory with the tasks over every device, and a toy `linear` run (SVI) written by process 0 only.
Every process has a hard timeout, so a lost peer fails the test instead of hanging it.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hbmeta as hb
from hbmeta.distributed import global_tasks, initialize, is_main_process, process_info, process_tasks

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_distributed_worker.py")
TIMEOUT = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(process_id, num_processes, port, out):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE), JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, WORKER, str(process_id), str(num_processes), str(port), out], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(procs):
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one, two = str(tmp_path_factory.mktemp("one")), str(tmp_path_factory.mktemp("two"))
    port = _free_port()
    _wait([_launch(i, 2, port, two) for i in range(2)] + [_launch(0, 1, 0, one)])
    return one, two


def _read(out):
    with open(os.path.join(out, "result.json")) as fh:
        return json.load(fh)


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_two_processes_give_the_meta_gradient_and_svi_losses_of_one(runs):
    one, two = map(_read, runs)
    assert (one["process_count"], one["num_devices"], two["process_count"], two["num_devices"]) == (1, 2, 2, 4)
    assert two["local_tasks"] == 4 and one["local_tasks"] == 8  # each of the two processes held half the tasks
    assert _rel(two["loss"], one["loss"]) <= 1e-5
    assert _rel(two["grad"], one["grad"]) <= 1e-5
    assert len(two["svi_losses"]) == 20 and _rel(two["svi_losses"], one["svi_losses"]) <= 1e-5


def test_only_process_zero_writes_and_the_run_is_the_same(runs):
    one, two = runs
    assert sorted(os.listdir(two)) == ["result.json", "run"]  # no other directory from process 1
    run_one, run_two = os.path.join(one, "run"), os.path.join(two, "run")
    assert sorted(os.listdir(run_two)) == sorted(os.listdir(run_one))
    loaded = hb.load_run(run_two)  # the marker and every file's digest check out
    assert loaded is not None
    m1, m2 = (_flat(json.loads(Path(r, "metrics.json").read_text())) for r in (run_one, run_two))
    assert m1.keys() == m2.keys()
    for k, v in m1.items():
        if k.startswith("timings_s"):
            continue
        if isinstance(v, float) or (isinstance(v, list) and v and isinstance(v[0], float)):
            np.testing.assert_allclose(m2[k], v, rtol=1e-5, atol=1e-7, err_msg=k)
        else:
            assert m2[k] == v, k
    p1, p2 = np.load(os.path.join(run_one, "posterior.npz")), np.load(os.path.join(run_two, "posterior.npz"))
    for k in p1.files:
        np.testing.assert_allclose(p2[k], p1[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_helpers_in_one_process():
    import jax

    info = process_info()
    assert (info.index, info.count, info.local_devices, info.num_devices) == (0, 1, 2, 2) and is_main_process()
    assert process_tasks(8) == slice(0, 8)
    with pytest.raises(ValueError, match="num_tasks is 3; expected a multiple of the 2 processes"):
        process_tasks(3, process_index=0, process_count=2)
    tasks = hb.Sinusoid().sample(jax.random.key(0), 4)
    g = global_tasks(tasks)
    assert g.x_support.sharding.device_set == set(jax.devices())
    np.testing.assert_array_equal(np.asarray(g.y_query), np.asarray(tasks.y_query))
    with pytest.raises(ValueError, match="the global number of tasks is 3; expected a multiple of the 2 devices"):
        global_tasks(tasks.take(slice(0, 3)))
    with pytest.raises(ValueError, match="process_id=2; expected an index in \\[0, 2\\)"):
        initialize("127.0.0.1:1", 2, 2)
    with pytest.raises(ValueError, match="JAX has already started its devices in this process"):
        initialize("127.0.0.1:1", 2, 1)
