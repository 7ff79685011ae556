"""A task-level prior with one τ per layer instead of one τ for all weights (issue 9), on development draws only.

The default model's task-level posterior uses φ_j ~ N(φ̂_j, τ²I): one τ for all
1,761 weights. Its held-out predictive is far too wide next to the support
points and too narrow far from them (on development draw 0, the query points
within 0.22 of a support point have E z² = 0.19, those more than 0.88 away
1.2), which a scale mixture cannot repair. This script asks whether
Σ = diag(τ_l² I) with one τ_l per layer (the GGN kernel becomes
Σ_l τ_l² J_l J_lᵀ) earns its place: each member's (τ_1, τ_2, τ_3, σ) are fitted by
type-II maximum likelihood on its held-out tasks, exactly as
:func:`hbmeta.fit_task_hyperparameters` fits (τ, σ) (grid start, then optax
L-BFGS on the full query covariance), and the ensemble's scale c and tails ν
are then chosen on the folds as :func:`hbmeta.inference.holdout.holdout_task_scale`
does. ``--groups one`` runs the same code with one τ and reproduces the
library's figures.

Development draws only (``DEV_SEED`` of ``calibration_gap.py``): nothing
here is a reported result and nothing here chooses a setting.

Usage:
    python bench/per_layer_tau.py                      # draws 0-3, one τ and one τ per layer (about 8 minutes)
    python bench/per_layer_tau.py --draws 1 --groups layer
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from scipy import stats
from scipy.special import logsumexp

from hbmeta.inference.holdout import _FLOOR, _moments, fit_tails, out_of_sample_mask, scale_nodes
from hbmeta.model.task_posterior import _minimise

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from calibration_gap import calibration_error, coverage, member_predictives, mixture_cdf

GROUPINGS = ("one", "layer", "last")  # one τ; one per layer; hidden layers share one, the output layer its own


def group_index(params, grouping):
    """``(P,)`` group of every flat weight and the number of groups."""
    layers = len(params)
    if grouping == "one":
        ids = [0] * layers
    elif grouping == "layer":
        ids = list(range(layers))
    else:
        ids = [0] * (layers - 1) + [1]
    tree = [jax.tree.map(lambda a, g=g: jnp.full(a.shape, g), layer) for layer, g in zip(params, ids)]
    flat, _ = ravel_pytree(tree)
    return np.asarray(flat, int), max(ids) + 1


def kernels(spec, net, theta, xs, ys, xq, groups, num_groups, full):
    """Outputs at φ̂ and the per-group NTK kernels of one task: K_g = J_g J_gᵀ."""
    phi = spec.rule(spec.unravel(theta), xs, ys, None, None)
    flat, unravel = ravel_pytree(phi)

    def f(p, x):
        return net.apply(unravel(p), x).reshape(-1)

    js, jq = jax.jacrev(f)(flat, xs), jax.jacrev(f)(flat, xq)
    one_hot = jax.nn.one_hot(groups, num_groups).T  # (G, P)
    k_ss = jnp.stack([(js * g) @ js.T for g in one_hot])
    k_qs = jnp.stack([(jq * g) @ js.T for g in one_hot])
    k_qq = jnp.stack([(jq * g) @ jq.T if full else jnp.sum(jq * jq * g, -1) for g in one_hot])
    return f(flat, xs), f(flat, xq), k_ss, k_qs, k_qq


def condition(f_s, f_q, k_ss, k_qs, k_qq, ys, log_tau, log_sigma):
    """Linearised query mean and covariance (full ``k_qq``) or variance (diagonal) given the support."""
    t2 = jnp.exp(2 * log_tau)
    s2 = jnp.exp(2 * log_sigma)
    kss, kqs = jnp.tensordot(t2, k_ss, 1), jnp.tensordot(t2, k_qs, 1)
    n = kss.shape[0]
    chol = jnp.linalg.cholesky(kss + (s2 + 1e-6 * jnp.mean(jnp.diag(kss))) * jnp.eye(n))
    mean = f_q + kqs @ jax.scipy.linalg.cho_solve((chol, True), ys.reshape(-1) - f_s)
    v = jax.scipy.linalg.solve_triangular(chol, kqs.T, lower=True)
    if k_qq.ndim == 3:
        return mean, jnp.tensordot(t2, k_qq, 1) - v.T @ v + s2 * jnp.eye(k_qq.shape[1])
    return mean, jnp.tensordot(t2, k_qq, 1) - jnp.sum(v * v, 0) + s2


def fit_member(spec, net, theta, tasks, groups, num_groups, num_steps=200):
    """(log τ_g, log σ) by type-II ML on ``tasks``: a grid over a common τ and σ, then L-BFGS; and the loss."""
    lin = jax.vmap(lambda xs, ys, xq: kernels(spec, net, theta, xs, ys, xq, groups, num_groups, True))(
        tasks.x_support, tasks.y_support, tasks.x_query)
    ys = tasks.y_support
    yq = tasks.y_query.reshape(tasks.num_tasks, -1)

    def loss(u):
        def one(f_s, f_q, k_ss, k_qs, k_qq, y_s, y_q):
            mean, cov = condition(f_s, f_q, k_ss, k_qs, k_qq, y_s, u[:num_groups], u[num_groups])
            return jax.scipy.stats.multivariate_normal.logpdf(y_q, mean, cov)

        return -jnp.mean(jax.vmap(one)(*lin, ys, yq)) / yq.shape[1]

    @jax.jit
    def run():
        tau, sigma = np.meshgrid(np.linspace(math.log(1e-3), math.log(10.0), 25),
                                 np.linspace(math.log(2.5e-3), math.log(5.0), 25), indexing="ij")
        grid = jnp.asarray(np.column_stack([np.repeat(tau.reshape(-1, 1), num_groups, 1), sigma.reshape(-1)]))
        values = jax.lax.map(loss, grid)
        u, _ = _minimise(loss, grid[jnp.argmin(jnp.where(jnp.isfinite(values), values, jnp.inf))], num_steps)
        return u, loss(u)

    return run()


def predict(spec, net, theta, tasks, u, groups, num_groups):
    """Per-point linearised predictive mean and variance ``(T, M, 1)`` of every task's query points."""
    g = num_groups

    @jax.jit
    def run(theta, xs, ys, xq):
        def one(a):
            lin = kernels(spec, net, theta, *a, groups, g, False)
            return condition(*lin, a[1], u[:g], u[g])

        return jax.lax.map(one, (xs, ys, xq), batch_size=50)

    mean, var = run(theta, tasks.x_support, tasks.y_support, tasks.x_query)
    return np.asarray(mean, np.float64)[..., None], np.asarray(var, np.float64)[..., None]


def mixture_nll(mu, var, y, nodes):
    sd = np.sqrt(var[:, None] * nodes[None, :, None, None, None])
    lp = stats.norm.logpdf(y[None, None], mu[:, None], sd)
    return -float(np.mean(logsumexp(lp.reshape(-1, *lp.shape[2:]), 0) - math.log(lp.shape[0] * lp.shape[1])))


def second_moment_fit(preds_tr, preds, train, held, hold):
    """The members' stacked held-out predictive and the mixture's c (second moment, floored) and ν on the folds.

    ``preds_tr``, ``preds``: every member's ``(mean, var)`` on the training and the held-out tasks. Returns
    ``(mu, var, y, target, r², v, c, ν, nodes, cdf)``, cdf that of the held-out points under the scaled mixture.
    """
    mu_tr, var_tr = (np.stack(a) for a in zip(*preds_tr))
    mu, var = (np.stack(a) for a in zip(*preds))
    members = mu.shape[0]
    y_tr, y = np.asarray(train.y_query, np.float64), np.asarray(held.y_query, np.float64)
    out = out_of_sample_mask(hold, members, train.num_tasks)
    w = jnp.ones(y_tr.shape[:2])
    r2, v = (float(a) for a in _moments(jnp.asarray(mu_tr), jnp.asarray(y_tr), jnp.asarray(out), w))
    mean_var = float(np.sum(out[:, :, None] * var_tr[..., 0]) / (np.sum(out) * var_tr.shape[2]))
    target = r2 - 2 * v * (members - 1) / members
    c = max(target, _FLOOR * r2) / mean_var
    dof, nodes, _ = fit_tails(mu_tr, var_tr * c, y_tr, out, w)
    return mu, var, y, target, r2, v, c, dof, nodes, mixture_cdf(mu, var * c, y, dof, nodes)


def analyse(r, grouping):
    t0 = time.perf_counter()
    spec, net, theta, hold = r["spec"], r["net"], r["theta"], r["holdout_index"]
    train, held = r["train_tasks"], r["held_tasks"]
    groups, num_groups = group_index(spec.unravel(jnp.asarray(theta[0])), grouping)
    members = theta.shape[0]
    fits, preds_tr, preds = [], [], []
    for m in range(members):
        u, loss = fit_member(spec, net, jnp.asarray(theta[m]), train.take(jnp.asarray(hold[m])), groups, num_groups)
        fits.append((np.exp(np.asarray(u)), float(loss)))
        preds_tr.append(predict(spec, net, jnp.asarray(theta[m]), train, u, groups, num_groups))
        preds.append(predict(spec, net, jnp.asarray(theta[m]), held, u, groups, num_groups))
    mu, var, y, target, r2, v, c, dof, nodes, cdf = second_moment_fit(preds_tr, preds, train, held, hold)
    held_v = float(np.mean(mu.var(0)) * members / (members - 1))
    oracle = min(calibration_error(mixture_cdf(mu, var * c * math.exp(s), y, d, scale_nodes(d)))
                 for d in (2.5, 4.0, math.inf) for s in np.linspace(-4, 4, 33))
    taus = np.mean([f[0][:num_groups] for f in fits], 0)
    print(f"| {grouping} | {np.mean([f[1] for f in fits]):.3f} | {' / '.join(f'{t:.3f}' for t in taus)} | "
          f"{np.mean([f[0][num_groups] for f in fits]):.3f} | {v:.3f} / {held_v:.3f} | "
          f"{'floor' if target < _FLOOR * r2 else f'{c:.3f}'} | {dof:g} | "
          f"{np.mean((mu.mean(0) - y) ** 2):.3f} | {mixture_nll(mu, var * c, y, nodes):.3f} | "
          f"{calibration_error(cdf):.4f} | {coverage(cdf, 0.5):.3f} | {coverage(cdf, 0.9):.3f} | {oracle:.4f} | "
          f"{time.perf_counter() - t0:.0f} |", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=4, help="development draws 0 … N − 1")
    p.add_argument("--groups", nargs="+", choices=GROUPINGS, default=["one", "layer"])
    args = p.parse_args(argv)
    for draw in range(args.draws):
        r = member_predictives(draw)
        lib = mixture_cdf(*r["held"][:2], r["held"][2], r["scale"].tail_dof, scale_nodes(r["scale"].tail_dof))
        print(f"\n### development draw {draw} (library, one τ: calib. error {calibration_error(lib):.4f})\n")
        print("| τ | fold loss per point (mean of members) | τ per group (mean) | σ (mean) | spread v, folds / held-out "
              "| c | ν | MSE | NLL | calib. error | cov 50 | cov 90 | best calib. error over scale and ν | s |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for grouping in args.groups:
            analyse(r, grouping)


if __name__ == "__main__":
    main()
