"""The worked examples on real grouped data: hbmeta against MAML alone, no pooling and partial pooling.

For each example (``sleepstudy``, ``radon``; models/sleepstudy.toml and models/radon.toml) and each of
several seeded splits of the groups into training and held-out groups (``data.split_seed`` = 0, 1, 2):

- **hbmeta**: ``hbmeta run MODEL`` exactly (``run_pipeline`` on the model file with
  ``data.split_seed`` set): MAML on the training groups, then NUTS over θ from MAML's θ; the
  posterior predictive of the held-out groups' query rows given their support rows;
- **(a) MAML alone**: the same run's MAML θ as a point estimate (σ = RMS residual on the training
  query rows), adapted to each held-out group's support rows;
- **(b) no pooling**: each held-out group fitted alone on its support rows, Bayesian linear
  regression y = [1, x]ᵀβ + ε with β | σ² ~ N(0, 100 σ² I), σ² ~ InvGamma(1, 1) in standardised
  units (Student-t predictive; ``hbmeta.tasks.pooling.no_pooling``);
- **(c) partial pooling**: the classical hierarchical linear model with varying, correlated
  intercepts and slopes by NUTS (``hbmeta.tasks.pooling.partial_pooling``), fitted on every row of the
  training groups and the support rows of the held-out groups.

Every method sees the same standardised tasks (fitted on the training groups) and is scored on the
same held-out query rows: NLL per row, MSE and 90% coverage in the target's original units. No
setting is chosen on the held-out groups. Pictures of a few held-out groups of split 0 go to
``--pictures`` (default docs/img).

Usage:
    python bench/real_data.py                    # both examples, 3 splits each (about 20 minutes on 2 cores)
    python bench/real_data.py --toy --splits 1   # seconds per example: the CI smoke test
    python bench/real_data.py --examples radon --splits 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

from hbmeta.inference.dispatch import maml_posterior
from hbmeta.predict.metrics import predictive_metrics
from hbmeta.predict.predictive import Predictive
from hbmeta.run.config import load_config
from hbmeta.run.pipeline import run_pipeline
from hbmeta.run.table_data import group_bands, group_points, load_table_data, plot_groups
from hbmeta.tasks.pooling import design, no_pooling, partial_pooling, predictive_draws

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("hbmeta (nuts)", "(a) MAML alone", "(b) no pooling", "(c) partial pooling")
SHOWN = ("nll", "mse", "coverage_90")


def _pp_settings(toy):
    return dict(num_chains=1, num_warmup=40, num_samples=30) if toy else dict(num_chains=2, num_warmup=1000,
                                                                                num_samples=1000)


def one_split(name, seed, *, toy, workdir, pictures=None):
    """The four methods' held-out metrics (original units) on split ``seed`` of example ``name``."""
    overrides = [f"data.split_seed={seed}", "run.progress=false"] + (["run.toy=true"] if toy else [])
    cfg = load_config(name, overrides)
    t0 = time.perf_counter()
    with open(os.devnull, "w") as quiet:
        res = run_pipeline(cfg, out=os.path.join(workdir, f"{name}-{seed}"), stream=quiet)
    t_hbmeta = time.perf_counter() - t0
    data = load_table_data(cfg.effective())  # the same groups, rows and standardisation as the run
    test, scale = data.test.tasks, data.scaler
    out = {"hbmeta (nuts)": res.metrics["held_out"]["nuts"], "(a) MAML alone": res.metrics["held_out"]["maml"]}
    nopool = no_pooling(test)
    y, mask = np.asarray(test.y_query)[..., 0], np.asarray(test.query_mask)
    out["(b) no pooling"] = scale.metrics_to_original(nopool.predict(np.asarray(test.x_query)).metrics(y, mask))
    t0 = time.perf_counter()
    pp = partial_pooling(data.train.tasks, test, key=jax.random.key(100 + seed), **_pp_settings(toy))
    t_pp = time.perf_counter() - t0
    mean, noise = predictive_draws(pp, test)
    pred = Predictive(mean, None, mean, noise, None, mask)
    out["(c) partial pooling"] = scale.metrics_to_original(predictive_metrics(None, test, key=0, predictive=pred))
    info = {"train_groups": int(data.train.tasks.num_tasks), "test_groups": int(test.num_tasks),
            "test_rows": int(mask.sum()), "seconds_hbmeta_run": round(t_hbmeta, 1),
            "seconds_partial_pooling": round(t_pp, 1), "pp_divergences": pp.divergences,
            "nuts": res.metrics.get("diagnostics"), "maml_step_size": _step_size(res)}
    if pictures is not None:
        _pictures(name, cfg, res, data, nopool, pp, pictures)
    return out, info


def _step_size(res):
    s = res.posterior.spec.rule.step_size
    return float(np.asarray(s))


def _pictures(name, cfg, res, data, nopool, pp, folder):
    """A few held-out groups with the four predictives (mean and 90% interval), original units."""
    spec = res.posterior.spec
    maml_post = maml_posterior(spec, res.maml_params, data.train.tasks)
    scale, test = data.scaler, data.test.tasks
    key = jax.random.key(7)
    index = list(range(min(8, test.num_tasks)))
    if name == "sleepstudy":
        column = "days"
        grid = np.arange(0, 10, 0.25)
        x_std = ((grid - scale.x_mean[0]) / scale.x_scale[0])[:, None].astype(np.float32)
        xs = [grid] * len(index)
        x_by_group = np.broadcast_to(x_std, (len(index),) + x_std.shape)
        mode = "band"
    else:  # radon: predict each held-out home (floor 0/1 against its county's uranium), drawn against floor
        column = "floor"
        xs = [np.array([0.0, 1.0]) for _ in index]
        x_by_group = np.zeros((len(index), 2, scale.num_features), np.float32)
        x_by_group[:, :, 0] = (np.array([0.0, 1.0]) - scale.x_mean[0]) / scale.x_scale[0]
        x_by_group[:, :, 1] = np.asarray(test.x_query)[np.asarray(index), :1, 1]  # the county's log uranium
        mode = "points"
    bands = {}
    for label, post in (("hbmeta (nuts)", res.posterior), ("(a) MAML alone", maml_post)):
        per = []
        for i, j in enumerate(index):
            m, lo, hi = group_bands(post, data, [j], x_by_group[i], key=key)
            per.append((xs[i], m[0], lo[0], hi[0]))
        bands[label] = per
    sub = no_pooling(test.take(np.asarray(index)))
    t = sub.predict(x_by_group)
    lo, hi = t.interval(0.9)
    bands["(b) no pooling"] = [(xs[i], scale.y_to_original(t.loc[i]), scale.y_to_original(lo[i]),
                                scale.y_to_original(hi[i])) for i in range(len(index))]
    coef = pp.coef[:, :, np.asarray(index)]
    mu = np.einsum("tmp,cstp->cstm", design(x_by_group), coef)
    draws = mu.reshape(-1, *mu.shape[2:]) + pp.noise.reshape(-1, 1, 1) * np.random.default_rng(0).normal(
        size=(mu.shape[0] * mu.shape[1],) + mu.shape[2:])
    q = np.quantile(draws, [0.05, 0.95], axis=0)
    bands["(c) partial pooling"] = [(xs[i], scale.y_to_original(mu.mean(axis=(0, 1))[i]), scale.y_to_original(q[0, i]),
                                     scale.y_to_original(q[1, i])) for i in range(len(index))]
    units = {"sleepstudy": "reaction time (ms)", "radon": "log radon (log pCi/L)"}[name]
    names = "county_name" if name == "radon" else None
    plot_groups(os.path.join(folder, f"{name}_groups.png"), group_points(data, index, column, name_column=names), bands,
                xlabel=column + (" (0 = basement, 1 = first floor)" if name == "radon" else ""), ylabel=units,
                title=f"{name}: held-out groups (split 0), predictive mean and 90% interval", mode=mode)


def summarise(results):
    """Mean and standard deviation over splits of each method's metrics."""
    out = {}
    for method in METHODS:
        vals = {k: [r[method][k] for r in results] for k in SHOWN}
        out[method] = {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0) for k, v in vals.items()}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", nargs="+", default=["sleepstudy", "radon"], choices=["sleepstudy", "radon"])
    p.add_argument("--splits", type=int, default=3, help="seeded splits of the groups (data.split_seed = 0..n-1)")
    p.add_argument("--toy", action="store_true", help="toy sizes (a smoke test; the numbers mean nothing)")
    p.add_argument("--pictures", default=os.path.join(ROOT, "docs", "img"), help="folder for the PNG pictures")
    p.add_argument("--no-pictures", action="store_true")
    p.add_argument("--json", help="also write every figure to this JSON file")
    a = p.parse_args(argv)
    report = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name in a.examples:
            results, infos = [], []
            for seed in range(a.splits):
                pics = None if a.no_pictures or seed else a.pictures
                r, info = one_split(name, seed, toy=a.toy, workdir=workdir, pictures=pics)
                results.append(r)
                infos.append(info)
                print(f"{name} split {seed}: " + json.dumps(info), file=sys.stderr, flush=True)
                for method in METHODS:
                    print(f"  {method:<22}" + "".join(f"{k} {r[method][k]:10.4g}  " for k in SHOWN), file=sys.stderr)
            summary = summarise(results)
            print(f"\n{name}: held-out groups, mean ± sd over {a.splits} split(s) of the groups"
                  + (" (TOY SIZE: not meaningful)" if a.toy else ""))
            print(f"  {'method':<22}{'NLL':>18}{'MSE':>22}{'90% coverage':>20}")
            for method in METHODS:
                s = summary[method]
                print(f"  {method:<22}" + "".join(f"{s[k][0]:>12.4g} ± {s[k][1]:<6.2g}" for k in SHOWN))
            report[name] = {"splits": results, "info": infos, "summary": summary}
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    return report


if __name__ == "__main__":
    main()
