"""Plots are written as non-empty PNG files, atomically, and bad input is refused."""

import os
import struct
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import hbmeta as hb
from hbmeta import plots


def png_size(path):
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return struct.unpack(">II", head[16:24])


def mlp_params(sizes, seed=0):
    """He-initialised MLP params built with numpy (no compiled random-number code in the tests' setup)."""
    rng = np.random.default_rng(seed)
    return [{"w": jnp.asarray(rng.normal(size=(a, b)) * np.sqrt(2 / a), jnp.float32), "b": jnp.zeros(b, jnp.float32)}
            for a, b in zip(sizes[:-1], sizes[1:])]


@pytest.fixture(scope="module")
def fit():
    net = hb.mlp((1, 8, 1))
    theta = mlp_params((1, 8, 1))
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, step_size=0.05), theta, likelihood=hb.NormalLikelihood())
    flat = spec.ravel(theta) + 0.05 * np.random.default_rng(1).normal(size=(2, 20, spec.num_params)).astype(np.float32)
    noise = 0.3 + 0.05 * np.random.default_rng(0).random((2, 20))
    stats = {"diverging": np.zeros((2, 20), bool)}
    post = hb.Posterior({"theta": np.asarray(flat), "noise": noise}, spec, "nuts", {}, stats)
    rng = np.random.default_rng(1)
    amp = rng.uniform(0.5, 2, (4, 1, 1))
    xs, xq = rng.uniform(-3, 3, (4, 5, 1)), rng.uniform(-3, 3, (4, 8, 1))
    tasks = hb.make_tasks(xs, amp * np.sin(xs), xq, amp * np.sin(xq))
    return post, tasks, amp


def check_png(path, expected):
    assert os.fspath(path) == os.fspath(expected)
    assert os.path.getsize(path) > 5000
    width, height = png_size(path)
    assert 200 < width < 3000 and 200 < height < 3000
    assert [f for f in os.listdir(os.path.dirname(path)) if f.startswith(".tmp-")] == []


def test_trace_and_rank(fit, tmp_path):
    post, tasks, _ = fit
    # the reference tasks share the fitted tasks' shapes, so one compiled predictive serves every call
    out = plots.plot_trace(post, tmp_path / "trace.png", reference=tasks, max_quantities=4)
    check_png(out, tmp_path / "trace.png")
    idata = hb.to_arviz(post, tasks, reference=tasks, key=0)
    check_png(plots.plot_rank(idata, tmp_path / "rank.png"), tmp_path / "rank.png")
    draws = hb.diagnostic_draws(idata)
    assert list(draws)[:3] == ["noise", "f[0, 0, 0]", "f[0, 1, 0]"] and len(draws) == 1 + 4 * 8
    assert draws["noise"].shape == (2, 20)


def test_predictive_band_and_calibration(fit, tmp_path):
    post, tasks, amp = fit
    x = np.linspace(-3, 3, 50)
    truth = amp[:, :, 0] * np.sin(x)
    out = plots.plot_predictive_band(post, tasks, tmp_path / "band.png", x=x, key=0, truth=truth)
    check_png(out, tmp_path / "band.png")
    out = plots.plot_predictive_band(post, tasks, tmp_path / "band2.png", x=x, key=0,
                                     truth=lambda j, g: amp[j, 0, 0] * np.sin(g))
    check_png(out, tmp_path / "band2.png")
    pred = hb.sample_predictive(post, tasks, key=1)
    narrow = hb.sample_predictive(post._replace(samples=dict(post.samples, noise=post.samples["noise"] / 3)), tasks,
                                  key=1)
    out = plots.plot_calibration({"posterior": pred, "noise / 3": narrow}, tasks, tmp_path / "calib.png")
    check_png(out, tmp_path / "calib.png")
    with pytest.raises(ValueError, match="truth has shape"):
        plots.plot_predictive_band(post, tasks, tmp_path / "bad.png", x=x, key=0, truth=np.zeros((4, 7)))
    with pytest.raises(ValueError, match="ending in .png"):
        plots.plot_calibration(pred, tasks, tmp_path / "calib.pdf")
    with pytest.raises(ValueError, match="expected hbmeta.Predictive"):
        plots.plot_calibration([pred], tasks, tmp_path / "c.png")


def test_reliability(tmp_path):
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(3), size=(1, 4, 2, 30))
    y = rng.integers(0, 3, (2, 30))
    pred = hb.Predictive(None, probs, np.zeros((1, 4, 2, 30), int), None, None, None)
    tasks = hb.make_tasks(np.zeros((2, 3, 2)), np.zeros((2, 3), int), np.zeros((2, 30, 2)), y)
    check_png(plots.plot_reliability(pred, tasks, tmp_path / "rel.png"), tmp_path / "rel.png")
    reg = hb.Predictive(np.zeros((1, 1, 2, 30, 1)), None, np.zeros((1, 1, 2, 30, 1)), np.ones((1, 1)), None, None)
    with pytest.raises(ValueError, match="classification predictive"):
        plots.plot_reliability(reg, tasks, tmp_path / "rel2.png")
    with pytest.raises(ValueError, match="regression predictive"):
        plots.plot_calibration(pred, tasks, tmp_path / "rel3.png")
    with pytest.raises(ValueError, match="one input feature"):
        plots.plot_predictive_band(None, tasks, tmp_path / "b.png", x=np.zeros(3), key=0)


def test_import_is_light():
    code = "import sys, hbmeta, hbmeta.plots; bad = {'arviz', 'matplotlib'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_plot_band_refuses_bad_grid(fit, tmp_path):
    post, tasks, _ = fit
    with pytest.raises(ValueError, match="at least 2 inputs"):
        plots.plot_predictive_band(post, tasks, tmp_path / "b.png", x=np.zeros(1), key=0)
