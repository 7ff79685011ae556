"""The pictures in docs/img: predictive band, calibration, trace and rank plots, reliability diagram.

Regression: the MAML sinusoid family with 5 support points (docs/references.md,
the MAML sinusoid protocol),
MAML for ``--maml-iterations`` meta-iterations, then NUTS (4 chains) over θ
with the prior N(θ_MAML, 0.1²) and an inferred noise scale, on 25 training
tasks. Pictures: the predictive band on 6 held-out tasks, the calibration
curves of the posterior and of MAML's point estimate on 100 held-out tasks,
and trace and rank plots of σ and of predictions at 5 reference inputs of a
reference task. Classification: 5-way 1-shot Gaussian blobs, MAML, then SVI
(low-rank guide) over θ; its reliability diagram on 200 held-out tasks.

Usage:
    python bench/diagnostics_figures.py            # a few minutes on 2 CPU cores
    python bench/diagnostics_figures.py --quick    # seconds, for smoke tests
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

import hbmeta as hb
from hbmeta import plots


def regression(out, args):
    keys = jax.random.split(jax.random.key(args.seed), 6)
    fam = hb.Sinusoid(num_support=5, num_query=10)
    net = hb.mlp((1, 40, 40, 1))
    rule = hb.GradientSteps(net.apply, step_size=0.01)
    maml = hb.train_maml(net.init(keys[0]), fam, rule=rule, key=keys[1], num_iterations=args.maml_iterations,
                         progress=False)
    train = fam.sample(keys[2], args.train_tasks)
    spec = hb.ModelSpec(rule, maml.params, prior=hb.NormalPrior(scale=0.1, centre=maml.params),
                        likelihood=hb.NormalLikelihood())
    post = hb.run_nuts(spec, train, key=keys[3], num_chains=4, num_warmup=args.warmup, num_samples=args.samples,
                       max_tree_depth=6, init=maml.params, progress=False)
    test, params = fam.with_points(num_query=20).sample(keys[4], args.test_tasks, return_params=True)
    base = hb.maml_posterior(spec, maml.params, train)
    pred = hb.sample_predictive(post, test, key=keys[5])
    pred_maml = hb.sample_predictive(base, test, key=keys[5])
    for name, p, q in (("posterior (NUTS)", post, pred), ("MAML θ", base, pred_maml)):
        metrics = hb.predictive_metrics(p, test, key=keys[5], predictive=q)
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))

    x = np.linspace(-5, 5, 200)
    truth = np.asarray(jax.vmap(lambda p: fam.function(p, x[:, None]))(params))[..., 0]
    plots.plot_predictive_band(post, test, os.path.join(out, "predictive_band.png"), x=x, key=keys[5], truth=truth,
                               title="Sinusoid, 5 support points: NUTS posterior predictive on held-out tasks")
    plots.plot_calibration({"NUTS posterior": pred, "MAML point estimate": pred_maml}, test,
                           os.path.join(out, "calibration.png"), title=f"calibration on {args.test_tasks} held-out tasks")
    reference = test.take(np.arange(1))
    reference = reference._replace(x_query=reference.x_query[:, :5], y_query=reference.y_query[:, :5])
    plots.plot_trace(post, os.path.join(out, "trace.png"), reference=reference)
    plots.plot_rank(post, os.path.join(out, "rank.png"), reference=reference)
    print(hb.diagnose(post, reference=test.take(np.arange(4)), warn=False).text)


def classification(out, args):
    keys = jax.random.split(jax.random.key(args.seed + 1), 5)
    fam = hb.GaussianBlobs(num_classes=5, shots=1, query_shots=10)
    net = hb.mlp((2, 32, 5))
    rule = hb.GradientSteps(net.apply, loss="cross_entropy", step_size=0.5)
    maml = hb.train_maml(net.init(keys[0]), fam, rule=rule, key=keys[1], num_iterations=args.maml_iterations // 4,
                         progress=False)
    spec = hb.ModelSpec(rule, maml.params, prior=hb.NormalPrior(scale=0.3, centre=maml.params),
                        likelihood=hb.CategoricalLikelihood())
    post = hb.run_svi(spec, fam.sample(keys[2], args.train_tasks * 2), key=keys[3], guide="low_rank", rank=5,
                      num_steps=args.svi_steps, num_draws=200, init=maml.params, progress=False)
    test = fam.sample(keys[4], 2 * args.test_tasks)
    pred = hb.sample_predictive(post, test, key=keys[4])
    metrics = hb.predictive_metrics(post, test, key=keys[4], predictive=pred)
    print("classification (SVI): " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    plots.plot_reliability(pred, test, os.path.join(out, "reliability.png"),
                           title=f"5-way 1-shot blobs, SVI posterior: ECE {metrics['ece']:.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "img"))
    parser.add_argument("--maml-iterations", type=int, default=10000)
    parser.add_argument("--train-tasks", type=int, default=25)
    parser.add_argument("--test-tasks", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--svi-steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.maml_iterations, args.train_tasks, args.test_tasks = 40, 4, 6
        args.warmup, args.samples, args.svi_steps = 10, 10, 20
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    regression(args.out, args)
    classification(args.out, args)
    print(f"wrote the pictures to {os.path.normpath(args.out)} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
