"""Ambiguity: do sampled adapted functions show both lines and sines when 2 points allow both?

PLATIPUS's experiment (docs/references.md, task families of the probabilistic
variants) with hbmeta: the SinusoidAndLine
family (sines A sin(x − φ), A ~ U[0.1, 5], φ ~ U[0, π]; lines a x + b,
a, b ~ U[−3, 3]; x ~ U[−5, 5]) with 2 support points per task.

1. Meta-train MAML (1–40–40–1 ReLU, 3 inner steps with α = 0.004, Adam 1e-3
   with gradients clipped at norm 10) on the mixture. (With one step of
   α = 0.01 MAML barely adapts from 2 points, meta-loss ≈ 7; larger inner
   rates diverge on lines of slope 3.)
2. Fit a posterior over θ on a finite set of training tasks, started at (and
   with the prior N(θ_MAML, 0.3²) centred on) the MAML θ: NUTS with 4 chains
   by default, SVI with ``--method svi``.
3. Draw 100 *ambiguous* tasks: tasks whose 2 support points are fitted
   exactly both by a line within the prior ranges and by a sine within them.
4. For each posterior draw and task, adapt on the 2 points and evaluate the
   adapted function on a dense grid of 200 inputs in [−5, 5]; call it a
   *line* or a *sine* by which family's least-squares fit to those 200 values
   has the smaller residual (line: span{1, x}; sine: span{sin x, cos x}).
5. Report the fraction of each kind among all sampled functions, the share
   of tasks whose samples contain both kinds (over all draws, and within one
   chain), the R² of the winning fit (how much the function is a line or a
   sine at all), and the same for the single MAML θ (one adapted function,
   so one kind, per task).

Writes ``docs/img/ambiguity.png`` (override with ``--figure``) and prints a
Markdown table and a JSON line with the numbers.

Usage:
    python bench/ambiguity.py            # a few minutes on 2 CPU cores
    python bench/ambiguity.py --quick    # seconds, for smoke tests
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hbmeta as hb

SIZES = (1, 40, 40, 1)
ALPHA = 0.004
INNER_STEPS = 3


def ambiguous(x, y, fam: hb.SinusoidAndLine) -> bool:
    """True when a line and a sine, both inside the family's prior ranges, pass through both points."""
    (x1, x2), (y1, y2) = x, y
    if abs(x2 - x1) < 1e-3:
        return False
    slope = (y2 - y1) / (x2 - x1)
    intercept = y1 - slope * x1
    line_ok = fam.slope[0] <= slope <= fam.slope[1] and fam.intercept[0] <= intercept <= fam.intercept[1]
    # A sin(x − φ) = a sin x + b cos x with a = A cos φ, b = −A sin φ
    m = np.array([[math.sin(x1), math.cos(x1)], [math.sin(x2), math.cos(x2)]])
    if abs(np.linalg.det(m)) < 1e-3:
        return False
    a, b = np.linalg.solve(m, np.array([y1, y2]))
    amp = math.hypot(a, b)
    phase = math.atan2(-b, a) % (2 * math.pi)
    sine_ok = fam.amplitude[0] <= amp <= fam.amplitude[1] and fam.phase[0] <= phase <= fam.phase[1]
    return line_ok and sine_ok


def ambiguous_tasks(key, fam, n):
    """``n`` ambiguous tasks (and their parameters) drawn from ``fam``."""
    tasks, params = fam.sample(key, 20 * n, return_params=True)
    xs, ys = np.asarray(tasks.x_support[..., 0]), np.asarray(tasks.y_support[..., 0])
    keep = np.flatnonzero([ambiguous(xs[j], ys[j], fam) for j in range(xs.shape[0])])[:n]
    if keep.size < n:
        raise RuntimeError(f"only {keep.size} ambiguous tasks among {xs.shape[0]}; draw more")
    return tasks.take(keep), jax.tree.map(lambda a: a[keep], params)


def classify(functions, x, *, with_r2=False):
    """1 (line) or 0 (sine) per function, by the smaller least-squares residual on the grid ``x``.

    ``functions``: ``(..., G)`` values on the grid. With ``with_r2`` also the
    winning fit's R² = 1 − RSS/TSS (how well the function is that kind at all).
    """
    bases = {"line": np.stack([np.ones_like(x), x], 1), "sine": np.stack([np.sin(x), np.cos(x)], 1)}
    f = functions.reshape(-1, x.size).T  # (G, n)
    rss = {}
    for name, basis in bases.items():
        coef, *_ = np.linalg.lstsq(basis, f, rcond=None)
        rss[name] = np.sum(np.square(basis @ coef - f), axis=0)
    kind = (rss["line"] < rss["sine"]).astype(int).reshape(functions.shape[:-1])
    if not with_r2:
        return kind
    tss = np.sum(np.square(f - f.mean(axis=0)), axis=0)
    r2 = 1 - np.minimum(rss["line"], rss["sine"]) / np.maximum(tss, 1e-12)
    return kind, r2.reshape(functions.shape[:-1])


def figure(path, x, tasks, truth, kinds, sampled, maml_f, maml_kind, num_show=6):
    from matplotlib.figure import Figure

    from hbmeta.base.files import atomic_write

    fig = Figure(figsize=(11, 6.4), layout="constrained")
    axes = fig.subplots(2, 3)
    colours = {1: "C0", 0: "C3"}
    order = np.argsort(np.abs(kinds.mean(axis=0) - 0.5), kind="stable")[:num_show]  # the most mixed tasks
    for ax, j in zip(axes.ravel(), sorted(order)):
        for s in range(min(sampled.shape[0], 40)):
            ax.plot(x, sampled[s, j], color=colours[int(kinds[s, j])], lw=0.7, alpha=0.45)
        ax.plot(x, maml_f[j], color="k", lw=1.8, ls="--")
        ax.plot(x, truth[j], color="grey", lw=1.0, ls=":")
        ax.scatter(np.asarray(tasks.x_support[j, :, 0]), np.asarray(tasks.y_support[j, :, 0]), color="gold",
                   edgecolor="k", zorder=5, s=45)
        frac = kinds[:, j].mean()
        ax.set_title(f"task {j}: {100 * frac:.0f}% lines, MAML: {'line' if maml_kind[j] else 'sine'}", fontsize=9)
        ax.set_ylim(-6, 6)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="C0", label="sampled adapted f, classified line"),
               Line2D([], [], color="C3", label="sampled adapted f, classified sine"),
               Line2D([], [], color="k", ls="--", label="MAML θ adapted"),
               Line2D([], [], color="grey", ls=":", label="true function"),
               Line2D([], [], marker="o", ls="", color="gold", markeredgecolor="k", label="2 support points")]
    fig.legend(handles=handles, loc="outside lower center", ncols=5, fontsize=8, frameon=False)
    fig.suptitle("SinusoidAndLine, 2 support points: posterior draws of the adapted function")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maml-iterations", type=int, default=10000)
    parser.add_argument("--train-tasks", type=int, default=30, help="tasks the posterior is fitted on")
    parser.add_argument("--method", choices=("nuts", "svi"), default="nuts")
    parser.add_argument("--prior-scale", type=float, default=0.3, help="prior sd around the MAML θ")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--samples", type=int, default=50, help="draws per chain (NUTS) or in all (SVI)")
    parser.add_argument("--tasks", type=int, default=100, help="ambiguous test tasks")
    default_figure = os.path.join(os.path.dirname(__file__), "..", "docs", "img", "ambiguity.png")
    parser.add_argument("--figure", default=default_figure)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.maml_iterations, args.train_tasks, args.warmup, args.samples, args.tasks = 50, 4, 5, 5, 6

    start = time.perf_counter()
    keys = jax.random.split(jax.random.key(args.seed), 6)
    fam = hb.SinusoidAndLine(num_support=2, num_query=10)
    net = hb.mlp(SIZES)
    rule = hb.GradientSteps(net.apply, step_size=ALPHA, num_steps=INNER_STEPS)
    optimizer = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(1e-3))
    maml = hb.train_maml(net.init(keys[0]), fam, rule=rule, key=keys[1], num_iterations=args.maml_iterations,
                         optimizer=optimizer, progress=False)
    t_maml = time.perf_counter() - start

    train = fam.sample(keys[2], args.train_tasks)
    spec = hb.ModelSpec(rule, maml.params, prior=hb.NormalPrior(scale=args.prior_scale, centre=maml.params),
                        likelihood=hb.NormalLikelihood(noise_prior_scale=1.0))
    if args.method == "nuts":
        post = hb.run_nuts(spec, train, key=keys[3], num_chains=args.chains, num_warmup=args.warmup,
                           num_samples=args.samples, max_tree_depth=5, init=maml.params, progress=False)
    else:
        post = hb.run_svi(spec, train, key=keys[3], num_steps=20 * args.warmup, num_draws=args.samples,
                          init=maml.params, progress=False)
    t_post = time.perf_counter() - start - t_maml

    tasks, params = ambiguous_tasks(keys[4], fam, args.tasks)
    x = np.linspace(-5.0, 5.0, 200)
    grid = hb.with_query_inputs(tasks, x[:, None])
    pred = hb.sample_predictive(post, grid, key=keys[5])
    chains = pred.mean.shape[0]
    # interleave chains so that any leading subset of draws covers every chain
    sampled = np.swapaxes(pred.mean[..., 0], 0, 1).reshape((-1, args.tasks, x.size))  # (draws, tasks, G)
    kinds, r2 = classify(sampled, x, with_r2=True)  # (draws, tasks)
    per_chain = kinds.reshape(-1, chains, args.tasks)  # (draw, chain, task)
    chain_line = per_chain.mean(axis=(0, 2))
    chain_task = per_chain.mean(axis=0)  # (chain, task)
    within = np.mean((chain_task > 0) & (chain_task < 1))
    base = hb.sample_predictive(hb.maml_posterior(spec, maml.params, train), grid, key=keys[5])
    maml_f = base.mean[0, 0, :, :, 0]
    maml_kind, maml_r2 = classify(maml_f, x, with_r2=True)
    truth = np.asarray(jax.vmap(lambda p: fam.function(p, jnp.asarray(x)[:, None]))(params))[..., 0]
    true_kind = np.asarray(params["is_line"])

    per_task = kinds.mean(axis=0)
    both = np.mean((per_task > 0) & (per_task < 1))
    mixed10 = np.mean((per_task >= 0.1) & (per_task <= 0.9))
    result = {
        "method": post.method,
        "draws": int(sampled.shape[0]),
        "tasks": int(args.tasks),
        "posterior_line_fraction": float(kinds.mean()),
        "posterior_sine_fraction": float(1 - kinds.mean()),
        "tasks_with_both_kinds": float(both),
        "tasks_with_both_kinds_10pct": float(mixed10),
        "line_fraction_per_chain": [round(float(v), 3) for v in chain_line],
        "tasks_with_both_kinds_within_one_chain": float(within),
        "posterior_median_r2": float(np.median(r2)),
        "posterior_r2_above_0.9": float(np.mean(r2 >= 0.9)),
        "maml_line_fraction": float(maml_kind.mean()),
        "maml_median_r2": float(np.median(maml_r2)),
        "maml_kinds_per_task": 1,
        "posterior_majority_matches_truth": float(np.mean((per_task > 0.5) == (true_kind == 1))),
        "maml_matches_truth": float(np.mean(maml_kind == true_kind)),
        "divergences": int(np.sum(post.sample_stats.get("diverging", 0))),
        "seconds": {"maml": round(t_maml, 1), "posterior": round(t_post, 1),
                    "total": round(time.perf_counter() - start, 1)},
    }
    figure(args.figure, x, tasks, truth, kinds, sampled, maml_f, maml_kind)
    print("| | lines | sines | tasks with both kinds (≥10% each) |")
    print("|---|---|---|---|")
    print(f"| posterior ({post.method}, {sampled.shape[0]} draws × {args.tasks} tasks) | "
          f"{100 * kinds.mean():.1f}% | {100 * (1 - kinds.mean()):.1f}% | {100 * both:.0f}% ({100 * mixed10:.0f}%) |")
    print(f"| MAML θ (one adapted function per task) | {100 * maml_kind.mean():.1f}% | "
          f"{100 * (1 - maml_kind.mean()):.1f}% | 0% (one kind per task by construction) |")
    print(f"line fraction per chain: {', '.join(f'{100 * v:.0f}%' for v in chain_line)}; "
          f"(chain, task) pairs with both kinds within the chain: {100 * within:.1f}%")
    print(f"R² of the winning fit: posterior median {np.median(r2):.2f} ({100 * np.mean(r2 >= 0.9):.0f}% ≥ 0.9), "
          f"MAML median {np.median(maml_r2):.2f}")
    print(json.dumps(result))
    print(f"figure: {os.path.normpath(args.figure)}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
