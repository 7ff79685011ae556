"""Memory bounds: the predictive checks its size against the available memory or HBMETA_MEMORY_CAP first."""

import os

import jax
import jax.numpy as jnp
import pytest

import hbmeta as hb
from hbmeta.base.memory import MemoryLimitError, available_bytes, check_memory, memory_limit, parse_size


def test_sizes_parse_and_bad_ones_are_named():
    assert parse_size("123") == 123 and parse_size("500M") == 500 * 2**20 and parse_size("1.5G") == 3 * 2**29
    assert parse_size("8GiB") == 8 * 2**30 and parse_size(" 2k ") == 2048
    for bad in ("lots", "-1G", "0", "8 parsecs"):
        with pytest.raises(ValueError, match=r"HBMETA_MEMORY_CAP=.*; expected a positive size in bytes"):
            parse_size(bad)


def test_the_limit_is_the_lower_of_the_cap_and_the_available_memory(monkeypatch):
    avail = available_bytes()
    assert avail is not None and avail > 2**20  # this machine can tell
    monkeypatch.delenv("HBMETA_MEMORY_CAP", raising=False)
    assert memory_limit()[1] == "available memory" and memory_limit()[0] > 2**20
    monkeypatch.setenv("HBMETA_MEMORY_CAP", "1M")
    assert memory_limit() == (2**20, "HBMETA_MEMORY_CAP")
    monkeypatch.setenv("HBMETA_MEMORY_CAP", "1000T")  # above what is there: the available memory rules
    assert memory_limit()[1] == "available memory"
    check_memory(1000, what="x", lower="y")
    with pytest.raises(MemoryLimitError, match=r"^x needs about 2.0 TB of memory; the limit is .* \(available memory\); "
                                               r"lower y$"):
        check_memory(2e12, what="x", lower="y")


def test_the_predictive_refuses_before_any_work(monkeypatch):
    spec = hb.ModelSpec(hb.GradientSteps(hb.linear().apply, step_size=0.1), {"w": jnp.zeros(2)},
                        likelihood=hb.NormalLikelihood(noise=0.5))
    tasks = hb.LinearGaussian(dim=2, num_query=50).sample(jax.random.key(0), 40)
    post = hb.maml_posterior(spec, {"w": jnp.ones(2)}, tasks)
    post = post._replace(samples={k: jnp.repeat(v, 500, axis=1) for k, v in post.samples.items()})  # 500 draws
    draws = post.num_chains * post.num_draws
    need = 2 * 4 * draws * 40 * 50  # mean and y, float32
    monkeypatch.setenv("HBMETA_MEMORY_CAP", str(need - 1))
    with pytest.raises(MemoryLimitError, match=rf"the predictive \({draws} draws × 40 tasks × 50 query points\) "
                                               r"needs about .* \(HBMETA_MEMORY_CAP\); lower the number of draws"):
        hb.sample_predictive(post, tasks, key=0)
    monkeypatch.setenv("HBMETA_MEMORY_CAP", str(need))
    assert hb.sample_predictive(post, tasks, key=0).y.shape[:3] == (post.num_chains, post.num_draws, 40)


def test_a_run_whose_predictive_will_not_fit_is_refused_before_meta_training(tmp_path, monkeypatch, capsys):
    from hbmeta.cli.main import main

    monkeypatch.setenv("HBMETA_MEMORY_CAP", "10K")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "linear", "--toy", "-q", "--out", "out"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hbmeta: error: the held-out predictive (20 draws × ")
    assert "(HBMETA_MEMORY_CAP); lower the number of posterior draws" in err
    assert "meta-training" not in err  # refused before any work
    assert os.listdir(tmp_path) == []  # and nothing is left on disk
