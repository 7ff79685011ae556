"""Posterior over θ on sinusoids from a finite task set: MAML vs NUTS, SVI, Laplace and SVGD (issue 3).

Protocol: the MAML sinusoid family (docs/references.md, the MAML sinusoid
protocol: y = A sin(x − φ),
A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5]) with a finite training set of
|T| = 100 and, separately, 1,000 tasks (BMAML's sizes: docs/references.md, task
families of the probabilistic variants), each
with 5 support and 5 query points; the 1–40–40–1 ReLU network; one inner step
with α = 0.01.

- MAML baseline: ``train_maml`` on the same finite set (meta-batch 25, Adam
  1e-3); as a posterior it is one draw with the noise σ set to the RMS residual
  of its adapted models on the training query sets (``maml_posterior``).
- The hierarchical model: θ ~ N(0, s²I) (``--prior-scale``), σ ~ HalfNormal(1),
  φ̂_j = θ − α∇L_j(S_j; θ), query y ~ N(f_φ̂_j(x), σ²). Every method starts
  at MAML's θ and σ (its RMS residual): NUTS (4 chains × 500 draws after 500
  warm-up, tree depth ≤ 5), SVI mean-field, SVI low-rank, Laplace and SVGD
  (10 particles).
- Evaluation on 600 new tasks with 5 support and 50 query points: wall time of
  the fit, predictive MSE, NLL, calibration error and 90% coverage
  (docs/references.md, uncertainty metrics, via ``hbmeta.predictive_metrics``);
  for NUTS the bulk ESS
  per second (of the whole run_nuts call, warm-up and compilation included)
  of σ and of the predictions at 10 fixed reference inputs of one reference task.

Targets on |T| = 100: the best Bayesian method's NLL and MSE below MAML's,
calibration error ≤ 0.03, 90% coverage in [0.87, 0.93]; NUTS (4 × 500) under
3 minutes on a 2-core CPU.

Usage:
    python bench/posterior_sinusoid.py                  # the full run: |T| = 100 and 1000
    python bench/posterior_sinusoid.py --quick          # a smoke test (tiny settings, 1-2 minutes)
    python bench/posterior_sinusoid.py --tasks 100 --methods maml nuts --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.diagnostics import effective_sample_size

import hbmeta as hb
from hbmeta.base.files import atomic_write

METHODS = ("maml", "nuts", "svi_mean_field", "svi_low_rank", "laplace", "svgd")
SIZES = (1, 40, 40, 1)
ALPHA = 0.01
K_SUPPORT, K_QUERY, EVAL_QUERY = 5, 5, 50


def settings(args):
    """Every run setting, full or quick."""
    if args.quick:
        return dict(tasks=args.tasks or [20], maml_iterations=100, nuts_chains=2, nuts_warmup=30,
                    nuts_samples=30, max_tree_depth=4, svi_steps=200, laplace_steps=30, svgd_steps=50,
                    svgd_particles=5, eval_tasks=20, rank=5, draws=50)
    return dict(tasks=args.tasks or [100, 1000], maml_iterations=args.maml_iterations, nuts_chains=4,
                nuts_warmup=500, nuts_samples=500, max_tree_depth=args.max_tree_depth, svi_steps=args.svi_steps,
                laplace_steps=args.laplace_steps, svgd_steps=args.svgd_steps, svgd_particles=10,
                eval_tasks=600, rank=10, draws=1000)


def fit(method, spec, train, maml, cfg, key, progress):
    """``(posterior, seconds)`` of one method, every Bayesian one started at MAML's θ and σ."""
    start = time.perf_counter()
    start_post = hb.maml_posterior(spec, maml.params, train)  # θ and σ = RMS residual: the starting point
    if method == "maml":
        post = start_post
    elif method == "nuts":
        post = hb.run_nuts(spec, train, key=key, num_chains=cfg["nuts_chains"], num_warmup=cfg["nuts_warmup"],
                           num_samples=cfg["nuts_samples"], max_tree_depth=cfg["max_tree_depth"],
                           init=start_post, progress=progress)
    elif method.startswith("svi"):
        guide = method[len("svi_"):]
        steps = cfg["svi_steps"]
        post = hb.run_svi(spec, train, key=key, guide=guide, rank=cfg["rank"] if guide == "low_rank" else None,
                          optimizer=optax.adam(optax.cosine_decay_schedule(1e-3, steps, alpha=0.1)),
                          num_steps=steps, num_draws=cfg["draws"], init=start_post, init_scale=0.01, progress=progress)
    elif method == "laplace":
        post = hb.run_laplace(spec, train, key=key, num_steps=cfg["laplace_steps"], num_draws=cfg["draws"],
                              init=start_post, progress=progress)
    else:
        post = hb.run_svgd(spec, train, key=key, num_particles=cfg["svgd_particles"], num_steps=cfg["svgd_steps"],
                           optimizer=optax.adagrad(0.01), init=start_post, init_radius=0.01, progress=progress)
    jax.block_until_ready(post.samples)
    return post, time.perf_counter() - start


def nuts_ess(post, seconds, reference, key):
    """Bulk ESS and ESS/s of σ and of the predictive means at the reference inputs (min and median over inputs)."""
    noise = np.asarray(post.samples["noise"])
    ess_noise = float(effective_sample_size(noise))
    means = hb.sample_predictive(post, reference, key=key).mean  # (C, S, 1, 10, 1)
    ess_pred = np.asarray(effective_sample_size(means.reshape(means.shape[:2] + (-1,))))
    return {
        "ess_noise": ess_noise,
        "ess_per_s_noise": ess_noise / seconds,
        "ess_pred_min": float(ess_pred.min()),
        "ess_pred_median": float(np.median(ess_pred)),
        "ess_per_s_pred_min": float(ess_pred.min()) / seconds,
        "ess_per_s_pred_median": float(np.median(ess_pred)) / seconds,
        "divergences": post.info["num_divergences"],
    }


def run_size(num_tasks, args, cfg, key):
    """All methods on one finite training set of ``num_tasks`` tasks; returns a list of result rows."""
    k_train, k_init, k_maml, k_eval, k_fit, k_pred = jax.random.split(key, 6)
    family = hb.Sinusoid(num_support=K_SUPPORT, num_query=K_QUERY)
    train = family.fixed(k_train, num_tasks)
    net = hb.mlp(SIZES)
    rule = hb.GradientSteps(net.apply, loss="mse", step_size=ALPHA, num_steps=1)
    t0 = time.perf_counter()
    maml = hb.train_maml(net.init(k_init), train, rule=rule, key=k_maml, num_iterations=cfg["maml_iterations"],
                         meta_batch_size=min(25, num_tasks), progress=not args.no_progress)
    maml_seconds = time.perf_counter() - t0
    spec = hb.ModelSpec(rule, maml.params, prior=hb.NormalPrior(0.0, args.prior_scale),
                        likelihood=hb.NormalLikelihood(noise_prior_scale=1.0))
    new = family.with_points(num_query=EVAL_QUERY).sample(k_eval, cfg["eval_tasks"])
    reference = hb.with_query_inputs(new.take(jnp.arange(1)), jnp.linspace(-4.5, 4.5, 10)[:, None])
    rows = []
    for i, method in enumerate(args.methods):
        k = jax.random.fold_in(k_fit, i)
        try:
            post, seconds = fit(method, spec, train.tasks, maml, cfg, k, not args.no_progress)
        except np.linalg.LinAlgError as err:  # Laplace's documented failure: report it in the table
            rows.append({"tasks": num_tasks, "method": method, "error": str(err).split("; expected")[0],
                         "message": str(err)})
            continue
        if method == "maml":
            seconds += maml_seconds
        t0 = time.perf_counter()
        metrics = hb.predictive_metrics(post, new, key=jax.random.fold_in(k_pred, i))
        if args.timings:
            print(f"  ({method}: fit {seconds:.1f} s, predictive metrics {time.perf_counter() - t0:.1f} s)", flush=True)
        row = {"tasks": num_tasks, "method": method, "seconds": seconds, **metrics,
               "noise_mean": float(np.mean(np.asarray(post.noise())))}
        if method == "nuts":
            row.update(nuts_ess(post, seconds, reference, jax.random.fold_in(k_pred, 100 + i)))
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


HEADER = f"{'|T|':>5} {'method':<15} {'time s':>8} {'MSE':>8} {'NLL':>8} {'calib':>7} {'cov90':>6} {'σ mean':>7}"


def format_row(row):
    if "error" in row:
        return f"{row['tasks']:>5} {row['method']:<15} failed: {row['error']}"
    return (f"{row['tasks']:>5} {row['method']:<15} {row['seconds']:8.1f} {row['mse']:8.3f} {row['nll']:8.3f} "
            f"{row['calibration_error']:7.3f} {row['coverage_90']:6.3f} {row['noise_mean']:7.3f}")


def report(rows, out=sys.stdout):
    print("\n" + HEADER, file=out)
    for row in rows:
        print(format_row(row), file=out)
    for row in rows:
        if "ess_noise" in row:
            print(f"\nNUTS, |T| = {row['tasks']}: {row['divergences']} divergent transitions; bulk ESS of σ "
                  f"{row['ess_noise']:.0f} ({row['ess_per_s_noise']:.2f}/s); ESS of predictions at 10 reference "
                  f"inputs min {row['ess_pred_min']:.0f} ({row['ess_per_s_pred_min']:.2f}/s), median "
                  f"{row['ess_pred_median']:.0f} ({row['ess_per_s_pred_median']:.2f}/s); wall {row['seconds']:.1f} s "
                  "(target < 180 s for 4 × 500 on |T| = 100)", file=out)
    for num_tasks in sorted({r["tasks"] for r in rows}):
        done = [r for r in rows if r["tasks"] == num_tasks and "error" not in r]
        maml = [r for r in done if r["method"] == "maml"]
        bayes = [r for r in done if r["method"] != "maml"]
        if not maml or not bayes:
            continue
        best = min(bayes, key=lambda r: r["nll"])
        print(f"\nTargets, |T| = {num_tasks} (best Bayesian method by NLL: {best['method']}):", file=out)
        checks = [
            ("NLL below MAML's", best["nll"] < maml[0]["nll"], f"{best['nll']:.3f} vs {maml[0]['nll']:.3f}"),
            ("MSE below MAML's", best["mse"] < maml[0]["mse"], f"{best['mse']:.3f} vs {maml[0]['mse']:.3f}"),
            ("calibration error ≤ 0.03", best["calibration_error"] <= 0.03, f"{best['calibration_error']:.3f}"),
            ("90% coverage in [0.87, 0.93]", 0.87 <= best["coverage_90"] <= 0.93, f"{best['coverage_90']:.3f}"),
        ]
        for label, ok, value in checks:
            print(f"  {label:<30} {'met' if ok else 'NOT met':<8} {value}", file=out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test with tiny settings (1-2 minutes on 2 cores: compilation dominates)")
    parser.add_argument("--tasks", type=int, nargs="+", default=None,
                        help="training-set sizes |T| (default 100 1000; quick: 20)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="methods to run (default: all)")
    parser.add_argument("--maml-iterations", type=int, default=20_000, help="MAML meta-iterations (default 20000)")
    parser.add_argument("--max-tree-depth", type=int, default=5,
                        help="NUTS max tree depth (default 5: at most 31 leapfrog steps per draw, to fit 3 minutes)")
    parser.add_argument("--svi-steps", type=int, default=5000, help="SVI steps (default 5000)")
    parser.add_argument("--laplace-steps", type=int, default=2000, help="L-BFGS steps for the MAP (default 2000)")
    parser.add_argument("--svgd-steps", type=int, default=2000, help="SVGD steps (default 2000)")
    parser.add_argument("--prior-scale", type=float, default=1.0, help="prior sd of every weight (default 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    parser.add_argument("--json", default=None, help="also write the result rows to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="hide progress displays")
    parser.add_argument("--timings", action="store_true", help="also print the time of each predictive evaluation")
    args = parser.parse_args(argv)
    if not args.prior_scale > 0 or not math.isfinite(args.prior_scale):
        parser.error(f"--prior-scale {args.prior_scale}: expected a positive number")
    cfg = settings(args)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.local_device_count()} device(s); "
          f"settings: {json.dumps(cfg)}; prior scale {args.prior_scale}", flush=True)
    print(HEADER, flush=True)
    key = jax.random.key(args.seed)
    rows = []
    for i, num_tasks in enumerate(cfg["tasks"]):
        rows += run_size(num_tasks, args, cfg, jax.random.fold_in(key, i))
    report(rows)
    if args.json:
        text = json.dumps({"settings": cfg, "prior_scale": args.prior_scale, "rows": rows}, indent=1)
        atomic_write(args.json, lambda tmp: open(tmp, "w").write(text))
    return rows


if __name__ == "__main__":
    main()
