"""Calibration of every inference method, with and without the task-level posterior (issue 9).

Families (each with its own finite training set of |T| tasks, 5-shot):

- ``sinusoid``: the MAML sinusoid (A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5]),
  |T| = 100 and 1,000;
- ``bmaml``: BMAML's variant (φ ~ U[0, 2π], frequency ~ U[0.5, 2], noise 0.01·A);
- ``sinusoid_line``: PLATIPUS's sines and lines (a line with probability 1/2);
- ``blobs``: 3-way 2-shot Gaussian blobs (classification, 2–40–40–3 network).

Regression uses the 1–40–40–1 ReLU network, one inner step α = 0.01, 5
support and 10 query points per training task; MAML trains 10,000
meta-iterations (blobs 3,000, α = 0.1), meta-batch 25, Adam 3e-3 with the
meta-gradient clipped at norm 10 (the ``models/*.toml`` settings).

Methods (every Bayesian one started at MAML's θ, or at the ensemble's members):

- ``maml``: MAML's θ, σ = its RMS training residual. ``maml+task``: MAML
  trained without a held-out block of 2⌈T/8⌉ tasks, τ and σ of the task-level
  posterior fitted by type-II maximum likelihood on that block.
- ``ensemble``: 8 MAML solutions (:func:`hbmeta.run_ensemble`, σ from
  held-out blocks). ``ensemble+task``: the same members, τ_m and σ_m fitted on
  each member's held-out tasks, σ_m² shrunk by the noise share chosen on the
  folds and both scaled for the mixture, each member's
  predictive a variance-preserving scale mixture of 8 Gaussians whose ν is
  chosen on the same held-out tasks (:mod:`hbmeta.inference.holdout`;
  ``--gaussian-tails``: one Gaussian per member, as before), with each task's
  (τ², σ²) times a power of its support targets' spread, the power chosen on
  the folds (:mod:`hbmeta.inference.spread_power`; ``--one-scale``: none),
  and each query point's variance times a factor of its distance to the
  task's nearest support point (:mod:`hbmeta.inference.distance_scale`;
  ``--one-distance-scale``: none).
- ``svi``: mean-field SVI (2,000 steps); ``svi+task``: the task-level model
  (τ, σ latent sites) by mean-field SVI (300 steps: one gradient of that model
  costs about 80 times the plain one).
- ``laplace``: MAP by L-BFGS, GGN curvature, linearised predictive.
- ``ens_laplace``: a mixture of GGN Laplace approximations around the
  ensemble members (σ from the ensemble), linearised predictive.
- ``svgd``: 10 particles, 2,000 steps.
- ``mclmc`` and ``nuts``: chains from the ensemble members (2 per member for
  MCLMC, 1 for NUTS), σ fixed at the ensemble's; per-mode diagnostics
  (R-hat within each mode, stratified ESS of the equal-weight mixture) on
  predictions at 10 fixed inputs of one *training* task, and ESS per second.
- ``nuts_ll``: NUTS in the last-layer subspace (``run_nuts(subspace="last_layer")``),
  2 chains from each ensemble member, each whitened at its Laplace mode, σ
  inferred; the same per-mode diagnostics.

The task-level variants of SVGD, Laplace, NUTS and MCLMC are not run: their
gradients go through the task-level model (about 80× the cost per gradient).

Evaluation: 600 held-out tasks with 50 query points (blobs: 30), drawn from
a seed used for nothing else (``HELDOUT_SEED``) and touched once, after every
fit. Regression: MSE, NLL, calibration error, 50/90/95% coverage and 90%
coverage in each third of the tasks ranked by support-set spread
(:func:`hbmeta.coverage_by_spread`); classification: accuracy, NLL, Brier,
ECE. For ``sinusoid_line`` also: among 100 *ambiguous* held-out tasks (2
support points that a line and a sine within the prior ranges both pass
through, as in ``bench/ambiguity.py``), the share whose sampled adapted
functions contain both kinds.

Usage:
    python bench/calibration.py --quick                       # about a minute
    python bench/calibration.py --runs sinusoid:100           # one configuration, every method
    python bench/calibration.py                               # everything (hours on 2 CPU cores)
    python bench/calibration.py --runs sinusoid:1000 --methods maml ensemble ensemble+task --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hbmeta as hb
from hbmeta.diagnostics.modes import per_mode_diagnostics
from hbmeta.inference.ensemble import holdout_blocks
from hbmeta.inference.holdout import holdout_task_scale
from hbmeta.inference.laplace_mixture import laplace_mixture, linearised_means

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ambiguity import ambiguous_tasks, classify

HELDOUT_SEED = 9_600_600  # the held-out tasks' own seed: never used for training, tuning or any choice
METHODS = ("maml", "maml+task", "ensemble", "ensemble+task", "svi", "svi+task", "laplace", "ens_laplace", "svgd",
           "mclmc", "nuts", "nuts_ll")
RUNS = ("sinusoid:100", "sinusoid:1000", "bmaml:100", "sinusoid_line:100", "blobs:100")


@dataclass(frozen=True)
class Setup:
    family: object
    sizes: tuple
    alpha: float
    loss: str
    maml_iterations: int
    eval_query: int


def setups():
    return {
        "sinusoid": Setup(hb.Sinusoid(num_support=5, num_query=10), (1, 40, 40, 1), 0.01, "mse", 10000, 50),
        "bmaml": Setup(hb.Sinusoid(phase=(0.0, 2 * math.pi), frequency=(0.5, 2.0), noise=0.01, relative_noise=True,
                                   num_support=5, num_query=10), (1, 40, 40, 1), 0.01, "mse", 10000, 50),
        "sinusoid_line": Setup(hb.SinusoidAndLine(num_support=5, num_query=10), (1, 40, 40, 1), 0.01, "mse", 10000, 50),
        "blobs": Setup(hb.GaussianBlobs(num_classes=3, shots=2, query_shots=5, dim=2), (2, 40, 40, 3), 0.1,
                       "cross_entropy", 3000, 30),
    }


def sizes(quick):
    """Every run setting, full or quick."""
    if quick:
        return dict(maml=200, members=4, member_iterations=200, svi=50, svi_task=5, laplace=20, svgd=20, particles=4,
                    mclmc_tuning=100, mclmc_samples=20, mclmc_thinning=2, nuts_warmup=10, nuts_samples=10, depth=3,
                    ll_warmup=10, ll_samples=10,
                    eval_tasks=50, draws=20, lap_draws=10, ambiguous=10)
    return dict(maml=None, members=8, member_iterations=None, svi=2000, svi_task=300, laplace=2000, svgd=2000,
                particles=10, mclmc_tuning=2000, mclmc_samples=200, mclmc_thinning=10, nuts_warmup=100,
                ll_warmup=150, ll_samples=1000,
                nuts_samples=100, depth=5, eval_tasks=600, draws=200, lap_draws=50, ambiguous=100)


def maml_optimizer():
    return optax.chain(optax.clip_by_global_norm(10.0), optax.adam(3e-3))


def reference_task(train, regression):
    """Invariant functionals for the MCMC diagnostics: predictions at 10 fixed inputs of the first *training* task."""
    ref = train.take(jnp.arange(1))
    if not regression:
        return hb.with_query_inputs(ref, ref.x_query[0, :10])
    return hb.with_query_inputs(ref, jnp.linspace(-4.5, 4.5, 10)[:, None])


def mcmc_diagnostics(post, ref, seconds, key, linear=False):
    """Per-mode R-hat and the mixture's stratified ESS on the reference predictions, and ESS per second."""
    pred = predictive(post, ref, key, linear)
    values = pred.mean if pred.regression else pred.probs
    draws = {f"f[{i},{k}]": values[:, :, 0, i, k] for i in range(values.shape[3]) for k in range(values.shape[4])}
    labels = post.settings.get("chain_modes", list(range(post.num_chains)))
    d = per_mode_diagnostics(draws, labels)
    return {"rhat_within_max": d.rhat_max, "ess_mixture_min": d.ess_mixture_min,
            "ess_per_s": d.ess_mixture_min / seconds, "plain_rhat_max": float(np.nanmax(d.plain_rhat)),
            "passes": bool(d.passes())}


def predictive(post, tasks, key, linear=False):
    if linear:
        mu = linearised_means(post, tasks)
        return hb.Predictive(mu, None, mu, np.asarray(post.noise()), None, None)
    return hb.sample_predictive(post, tasks, key=key)


def thin(post, draws):
    """At most ``draws`` draws in all (evenly spaced within each chain) for evaluation."""
    per_chain = max(1, draws // post.num_chains)
    if post.num_draws <= per_chain:
        return post
    idx = np.linspace(0, post.num_draws - 1, per_chain).round().astype(int)
    samples = {k: np.asarray(v)[:, idx] for k, v in post.samples.items()}
    return post._replace(samples=samples)


def evaluate(post, held, key, linear, regression):
    pred = predictive(post, held, key, linear)
    out = hb.predictive_metrics(post, held, key=key, predictive=pred)
    if regression:
        out.update({k: float(v) for k, v in hb.coverage_by_spread(pred, held).items()})
    return out


def ambiguity_share(post, fam, key, n, linear):
    """Share of ambiguous 2-point held-out tasks whose sampled adapted functions include lines and sines."""
    tasks, _ = ambiguous_tasks(key, replace(fam, num_support=2), n)
    x = np.linspace(-5.0, 5.0, 200)
    grid = hb.with_query_inputs(tasks, x[:, None])
    mu = predictive(post, grid, key, linear).mean[..., 0]
    kinds = classify(mu.reshape((-1,) + mu.shape[2:]), x)  # (draws, tasks)
    share = kinds.mean(axis=0)
    return float(np.mean((share > 0) & (share < 1)))


def run_config(name, num_tasks, args, cfg):
    st = setups()[name]
    regression = st.family.regression
    key = jax.random.key(args.seed)
    k_train, k_init, k_maml, k_fit = jax.random.split(jax.random.fold_in(key, num_tasks), 4)
    fixed = st.family.fixed(k_train, num_tasks)
    train = fixed.tasks
    num_eval = cfg["eval_tasks"]
    held = st.family.with_points(num_query=st.eval_query).sample(jax.random.key(HELDOUT_SEED), num_eval)
    net = hb.mlp(st.sizes)
    rule = hb.GradientSteps(net.apply, loss=st.loss, step_size=st.alpha)
    lik = hb.NormalLikelihood() if regression else hb.CategoricalLikelihood()
    maml_iters = cfg["maml"] or st.maml_iterations
    batch = min(25, num_tasks // 2)
    t0 = time.perf_counter()
    maml = hb.train_maml(net.init(k_init), train, rule=rule, key=k_maml, num_iterations=maml_iters,
                         optimizer=maml_optimizer(), meta_batch_size=batch, progress=args.progress)
    maml_s = time.perf_counter() - t0
    spec = hb.ModelSpec(rule, maml.params, likelihood=lik)
    spec_task = replace(spec, task_posterior=hb.TaskPosterior())
    ref = reference_task(train, regression)
    cache, rows = {}, []

    def ensemble():
        if "ensemble" not in cache:
            t = time.perf_counter()
            ens = hb.run_ensemble(spec, train, key=jax.random.fold_in(k_fit, 1), num_members=cfg["members"],
                                  init=net.init, num_iterations=cfg["member_iterations"] or st.maml_iterations,
                                  meta_batch_size=min(batch, num_tasks - 2 * -(-num_tasks // cfg["members"])),
                                  optimizer=maml_optimizer(), progress=args.progress)
            cache["ensemble"] = (ens, time.perf_counter() - t)
        return cache["ensemble"]

    def fixed_noise_spec(ens):
        if not regression:
            return spec
        return replace(spec, likelihood=hb.NormalLikelihood(noise=float(np.asarray(ens.samples["noise"])[0, 0])))

    def fit(method, k):
        """``(posterior, seconds, linearised, diagnostics or None)``."""
        t = time.perf_counter()
        if method == "maml":
            return hb.maml_posterior(spec, maml.params, train), maml_s, False, None
        if method == "maml+task":
            tr, ho = holdout_blocks(jax.random.fold_in(k, 0), num_tasks, cfg["members"])
            m = hb.train_maml(net.init(k_init), train.take(tr[0]), rule=rule, key=k_maml, num_iterations=maml_iters,
                              optimizer=maml_optimizer(), meta_batch_size=batch, progress=args.progress)
            fitted = hb.fit_task_hyperparameters(spec_task, m.params, train.take(ho[0]))
            samples = {"theta": np.asarray(spec.ravel(m.params))[None, None], "tau": np.full((1, 1), fitted.tau)}
            if regression:
                samples["noise"] = np.full((1, 1), fitted.noise)
            return hb.Posterior(samples, spec_task, "maml", {}), time.perf_counter() - t, False, None
        if method in ("ensemble", "ensemble+task"):
            ens, secs = ensemble()
            if method == "ensemble":
                return ens, secs, False, None
            scale = holdout_task_scale(spec_task, ens.samples["theta"][:, 0], train, ens.info["holdout_index"],
                                       tails=not args.gaussian_tails,
                                       **({"spread_powers": (0.0,)} if args.one_scale else {}),
                                       **({"distance_bins": 1} if args.one_distance_scale else {}))
            root = np.sqrt(np.asarray(scale.tail_nodes, np.float32))  # one draw per node of the scale mixture
            samples = {"theta": np.repeat(np.asarray(ens.samples["theta"]), len(root), axis=1),
                       "tau": (scale.tau[:, None] * root).astype(np.float32)}
            if regression:
                samples["noise"] = (scale.noise[:, None] * root).astype(np.float32)
            if scale.spread_power > 0:  # the per-task scale h_j, applied by sample_predictive
                samples["spread_power"] = np.full(samples["tau"].shape, scale.spread_power, np.float32)
                samples["spread_ref"] = np.full(samples["tau"].shape, scale.spread_ref, np.float32)
            if scale.distance_fit is not None:  # the per-point factor by distance to the support
                for site, value in (("distance_edges", scale.distance_edges), ("distance_scales", scale.distance_scales)):
                    samples[site] = np.broadcast_to(np.asarray(value, np.float32),
                                                   (*samples["tau"].shape, len(value))).copy()
            print(f"{name}:{num_tasks} ensemble+task: scale c = {scale.scale:.3f}, noise share s = "
                  f"{scale.noise_share:g}, per-task power p = {scale.spread_power:g}, tails ν = {scale.tail_dof}, "
                  f"distance factors {np.round(scale.distance_scales, 3).tolist()}",
                  flush=True)
            post = hb.Posterior(samples, spec_task, "ensemble", ens.settings, info={"scale": scale._asdict()})
            return post, secs + time.perf_counter() - t, False, None
        start = hb.maml_posterior(spec, maml.params, train)
        if method in ("svi", "svi+task"):
            task = method == "svi+task"
            steps = cfg["svi_task"] if task else cfg["svi"]
            post = hb.run_svi(spec_task if task else spec, train, key=k, guide="mean_field", num_steps=steps,
                              num_draws=cfg["draws"], init=start, init_scale=0.01, progress=args.progress,
                              optimizer=optax.adam(optax.cosine_decay_schedule(1e-3, steps, alpha=0.1)))
            return post, time.perf_counter() - t, False, None
        if method == "laplace":
            post = hb.run_laplace(spec, train, key=k, num_steps=cfg["laplace"], num_draws=cfg["lap_draws"],
                                  init=start, curvature="ggn", progress=args.progress)
            post = post._replace(info=dict(post.info, centres=post.info["map"][None]))
            return post, time.perf_counter() - t, True, None
        if method == "ens_laplace":
            ens, secs = ensemble()
            post = laplace_mixture(spec, train, ens, key=k, num_draws=max(2, cfg["lap_draws"] // 4))
            secs += time.perf_counter() - t
            return post, secs, True, mcmc_diagnostics(post, ref, secs, k, linear=True)
        if method == "svgd":
            post = hb.run_svgd(spec, train, key=k, num_particles=cfg["particles"], num_steps=cfg["svgd"],
                               optimizer=optax.adagrad(0.01), init=start, init_radius=0.01, progress=args.progress)
            return post, time.perf_counter() - t, False, None
        ens, secs = ensemble()
        sspec = fixed_noise_spec(ens)
        t = time.perf_counter()
        if method == "nuts_ll":
            post = hb.run_nuts(spec, train, key=k, init=ens, num_chains=2 * ens.num_chains, num_warmup=cfg["ll_warmup"],
                               num_samples=cfg["ll_samples"], max_tree_depth=8, subspace="last_layer",
                               progress=args.progress)
        elif method == "mclmc":
            post = hb.run_mclmc(sspec, train, key=k, init=ens, chains_per_member=2, num_samples=cfg["mclmc_samples"],
                                thinning=cfg["mclmc_thinning"], num_tuning_steps=cfg["mclmc_tuning"],
                                progress=args.progress)
        else:
            post = hb.run_nuts(sspec, train, key=k, init=ens, num_chains=ens.num_chains, num_warmup=cfg["nuts_warmup"],
                               num_samples=cfg["nuts_samples"], max_tree_depth=cfg["depth"], progress=args.progress)
        secs = time.perf_counter() - t
        return post, secs, False, mcmc_diagnostics(post, ref, secs, k)

    for i, method in enumerate(args.methods):
        if not regression and method in ("svi+task", "maml+task") and method == "svi+task":
            continue  # the in-model task-level integral is regression-only
        if not regression and method == "laplace":
            pass
        k = jax.random.fold_in(k_fit, 10 + i)
        try:
            post, secs, linear, diag = fit(method, k)
        except (ValueError, np.linalg.LinAlgError) as err:
            rows.append({"run": f"{name}:{num_tasks}", "method": method, "error": str(err)[:200]})
            print(f"{name}:{num_tasks} {method}: failed: {str(err)[:200]}", flush=True)
            continue
        k_eval = jax.random.fold_in(jax.random.key(HELDOUT_SEED), i)
        row = {"run": f"{name}:{num_tasks}", "method": method, "seconds": secs,
               **evaluate(thin(post, cfg["draws"]), held, k_eval, linear, regression)}
        if diag is not None:
            row.update(diag)
        if name == "sinusoid_line":
            row["ambiguous_both"] = ambiguity_share(thin(post, cfg["draws"]), st.family,
                                                    jax.random.key(HELDOUT_SEED + 1), cfg["ambiguous"], linear)
        rows.append(row)
        print(format_row(row, regression), flush=True)
    return rows


def format_row(row, regression):
    if "error" in row:
        return f"| {row['run']} | {row['method']} | failed: {row['error'][:80]} |"
    keys = (["mse", "nll", "calibration_error", "coverage_50", "coverage_90", "coverage_95",
             "coverage_90_low_spread", "coverage_90_mid_spread", "coverage_90_high_spread"] if regression
            else ["accuracy", "nll", "brier", "ece"])
    cells = [f"{row[k]:.3f}" for k in keys]
    extra = ""
    if "ess_per_s" in row:
        extra = (f" R-hat within modes {row['rhat_within_max']:.3f}, mixture ESS {row['ess_mixture_min']:.0f} "
                 f"({row['ess_per_s']:.2f}/s)")
    if "ambiguous_both" in row:
        extra += f" ambiguous tasks with both kinds {row['ambiguous_both']:.2f}"
    return f"| {row['run']} | {row['method']} | {row['seconds']:.0f} | " + " | ".join(cells) + f" |{extra}"


def header(regression):
    if regression:
        return ("| run | method | time (s) | MSE | NLL | calib. error | cov 50 | cov 90 | cov 95 | cov 90 low | "
                "cov 90 mid | cov 90 high |\n|" + "---|" * 12)
    return "| run | method | time (s) | accuracy | NLL | Brier | ECE |\n|" + "---|" * 7


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (about a minute)")
    parser.add_argument("--runs", nargs="+", default=None, help=f"family:|T| pairs (default: {' '.join(RUNS)})")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--gaussian-tails", action="store_true",
                        help="ensemble+task with one Gaussian per member (the predictive before the fitted tails)")
    parser.add_argument("--members", type=int, default=None,
                        help="ensemble members (default 8; models/sinusoid.toml uses 12 since 2026-12-06)")
    parser.add_argument("--one-distance-scale", action="store_true",
                        help="ensemble+task: one scale for every query point (no factor by distance to the support), "
                             "as before 2026-12-06")
    parser.add_argument("--one-scale", action="store_true",
                        help="ensemble+task: one scale for every task (no per-task factor h_j), as before 2026-12-06")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the held-out seed is fixed)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON lines here")
    parser.add_argument("--progress", action="store_true", help="show progress of long stages")
    args = parser.parse_args(argv)
    cfg = sizes(args.quick)
    if args.members is not None:
        cfg["members"] = args.members
    runs = args.runs or (["sinusoid:20"] if args.quick else list(RUNS))
    if args.quick and args.methods == list(METHODS):
        args.methods = ["maml", "ensemble", "ensemble+task", "svi", "laplace", "ens_laplace", "mclmc"]
    all_rows = []
    for run in runs:
        name, num_tasks = run.split(":")
        regression = setups()[name].family.regression
        print(f"\n{name}, |T| = {num_tasks}, {cfg['eval_tasks']} held-out tasks\n" + header(regression), flush=True)
        all_rows += run_config(name, int(num_tasks), args, cfg)
    if args.json:
        with open(args.json, "w") as f:
            for row in all_rows:
                f.write(json.dumps(row) + "\n")
    return all_rows


if __name__ == "__main__":
    main()
