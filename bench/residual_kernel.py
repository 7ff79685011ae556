"""A stationary residual kernel beside the GGN kernel in the task-level posterior (issue 9), on development draws only.

The default model's task-level predictive is far too wide next to the support
points and too narrow far from them (docs/benchmarks.md, "Where the errors
are"): with one τ, type-II maximum likelihood puts the network's misfit into
the constant σ. Misfit is not noise: it is a smooth function of x. This script
gives each member the kernel

    k(x, x') = τ² J(x) J(x')ᵀ + η² exp(−‖x − x'‖²/(2ℓ²)) + σ² 1[x = x']

(the GGN kernel plus a squared-exponential kernel on the inputs for the
residual, as in RIO, Qiu et al. 2020), fits (τ, σ, η, ℓ) by type-II maximum
likelihood on its held-out tasks, and then chooses the ensemble's c and ν on
the folds as the second-moment rule does. ``one`` is the same code with
η = 0 (the library's kernel, without the noise share and the per-task scale);
``one+spread`` and ``rbf+spread`` add the per-task factor h_j of
:mod:`hbmeta.model.support_spread` to (τ², σ², η²), its power p chosen per
member by the same type-II loss.

Each draw prints the fitted parameters and the held-out figures, calibration
error and 90% coverage by the query point's distance d to its task's nearest
support point, the lowest calibration error over c and ν that the held-out
tasks themselves would choose ("oracle", which no method can know), and the
calibration error when each member's variance is V_m(x) − 2S(x), S(x) the
members' spread at x; then, before c, the members' E z² by distance and the
error of the members' mean against their mean variance V̄ and spread S.

Development draws only (``DEV_SEED`` of ``calibration_gap.py``): nothing
here is a reported result and nothing here chooses a setting.

Usage:
    python bench/residual_kernel.py --draws 4                         # one and rbf (about 2.5 minutes a draw)
    python bench/residual_kernel.py --draws 2 --kernels one+spread rbf+spread
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

import hbmeta as hb
from hbmeta.inference.holdout import _FLOOR, scale_nodes
from hbmeta.model.support_spread import spread_factor, support_spread
from hbmeta.model.task_posterior import _minimise

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from calibration import setups
from calibration_gap import calibration_error, coverage, mixture_cdf, train_members
from per_layer_tau import mixture_nll, second_moment_fit

KERNELS = ("one", "rbf", "one+spread", "rbf+spread")
POWERS = (0.0, 0.5, 1.0, 1.5)  # p of the per-task factor h_j (hbmeta.model.support_spread), chosen per member


def kernels(spec, net, theta, xs, ys, xq, full):
    """Outputs at φ̂, the NTK kernels and the squared distances of one task."""
    phi = spec.rule(spec.unravel(theta), xs, ys, None, None)
    flat, unravel = ravel_pytree(phi)

    def f(p, x):
        return net.apply(unravel(p), x).reshape(-1)

    js, jq = jax.jacrev(f)(flat, xs), jax.jacrev(f)(flat, xq)

    def d2(a, b):
        return jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, -1)

    k_qq = jq @ jq.T if full else jnp.sum(jq * jq, -1)
    return f(flat, xs), f(flat, xq), js @ js.T, jq @ js.T, k_qq, d2(xs, xs), d2(xq, xs), d2(xq, xq) if full else None


def condition(f_s, f_q, k_ss, k_qs, k_qq, d_ss, d_qs, d_qq, ys, u):
    """Linearised query mean and covariance (full) or variance (diagonal) given the support."""
    t2, s2, e2, l2 = (jnp.exp(2 * u[i]) for i in range(4))
    kss = t2 * k_ss + e2 * jnp.exp(-d_ss / (2 * l2))
    kqs = t2 * k_qs + e2 * jnp.exp(-d_qs / (2 * l2))
    n = kss.shape[0]
    chol = jnp.linalg.cholesky(kss + (s2 + 1e-6 * jnp.mean(jnp.diag(kss))) * jnp.eye(n))
    mean = f_q + kqs @ jax.scipy.linalg.cho_solve((chol, True), ys.reshape(-1) - f_s)
    v = jax.scipy.linalg.solve_triangular(chol, kqs.T, lower=True)
    if k_qq.ndim == 2:
        kqq = t2 * k_qq + e2 * jnp.exp(-d_qq / (2 * l2))
        return mean, kqq - v.T @ v + s2 * jnp.eye(k_qq.shape[0])
    return mean, t2 * k_qq + e2 - jnp.sum(v * v, 0) + s2


def task_shift(tasks, power, ref):
    """``(T, 4)`` added to (log τ, log σ, log η, log ℓ) per task: ½ log h_j on the three scales, 0 on ℓ."""
    h = spread_factor(support_spread(tasks.y_support, tasks.support_mask), power, ref)
    half = 0.5 * jnp.log(h)
    return jnp.stack([half, half, half, jnp.zeros_like(half)], -1)


def fit_member(spec, net, theta, tasks, residual, shift, num_steps=200):
    """(log τ, log σ, log η, log ℓ) by type-II ML on ``tasks``: a grid, then L-BFGS (η fixed at 0 without ``residual``).

    ``shift`` ``(T, 4)``: task j's parameters are ``u + shift[j]`` (the per-task factor h_j)."""
    lin = jax.vmap(lambda xs, ys, xq: kernels(spec, net, theta, xs, ys, xq, True))(
        tasks.x_support, tasks.y_support, tasks.x_query)
    ys = tasks.y_support
    yq = tasks.y_query.reshape(tasks.num_tasks, -1)

    def loss(u):
        u = u if residual else u.at[2].set(-30.0)

        def one(f_s, f_q, k_ss, k_qs, k_qq, d_ss, d_qs, d_qq, y_s, y_q, sh):
            mean, cov = condition(f_s, f_q, k_ss, k_qs, k_qq, d_ss, d_qs, d_qq, y_s, u + sh)
            return jax.scipy.stats.multivariate_normal.logpdf(y_q, mean, cov)

        return -jnp.mean(jax.vmap(one)(*lin, ys, yq, shift)) / yq.shape[1]

    @jax.jit
    def run():
        axes = [np.linspace(math.log(1e-3), math.log(10.0), 12), np.linspace(math.log(2.5e-3), math.log(5.0), 12)]
        axes += ([np.linspace(math.log(0.01), math.log(3.0), 8), np.log([0.3, 0.6, 1.0, 2.0])] if residual
                 else [np.zeros(1), np.zeros(1)])
        grid = jnp.asarray(np.stack([a.reshape(-1) for a in np.meshgrid(*axes, indexing="ij")], -1))
        values = jax.lax.map(loss, grid, batch_size=64)
        u, _ = _minimise(loss, grid[jnp.argmin(jnp.where(jnp.isfinite(values), values, jnp.inf))], num_steps)
        return (u if residual else u.at[2].set(-30.0)), loss(u)

    return run()


def predict(spec, net, theta, tasks, u, shift):
    """Per-point linearised predictive mean and variance ``(T, Q, 1)`` of every task's query points."""

    @jax.jit
    def run(theta, xs, ys, xq, sh):
        def one(a):
            return condition(*kernels(spec, net, theta, *a[:3], False), a[1], u + a[3])

        return jax.lax.map(one, (xs, ys, xq, sh), batch_size=50)

    mean, var = run(theta, tasks.x_support, tasks.y_support, tasks.x_query, shift)
    return np.asarray(mean, np.float64)[..., None], np.asarray(var, np.float64)[..., None]


def by_distance(mu, var, y, nodes, held, edges=(0, 0.22, 0.5, 0.88, 99)):
    cdf = mixture_cdf(mu, var, y, 0, nodes)[..., 0]
    xs, xq = np.asarray(held.x_support)[..., 0], np.asarray(held.x_query)[..., 0]
    dist = np.abs(xq[:, :, None] - xs[:, None, :]).min(-1)
    cells = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        s = (dist >= lo) & (dist < hi)
        cells.append(f"{calibration_error(cdf[s]):.3f} / {coverage(cdf[s], 0.9):.2f}")
    return " | ".join(cells)


def analyse(spec, net, train, held, theta, hold, kernel):
    t0 = time.perf_counter()
    members = theta.shape[0]
    fits, preds_tr, preds, powers = [], [], [], []
    ref = float(jnp.mean(support_spread(train.y_support, train.support_mask)))
    for m in range(members):
        fold = train.take(jnp.asarray(hold[m]))
        best = None
        for power in (POWERS if kernel.endswith("+spread") else (0.0,)):
            u, loss = fit_member(spec, net, jnp.asarray(theta[m]), fold, kernel.startswith("rbf"),
                                 task_shift(fold, power, ref))
            if best is None or float(loss) < best[1]:
                best = (u, float(loss), power)
        u, loss, power = best
        powers.append(power)
        fits.append((np.exp(np.asarray(u)), float(loss)))
        preds_tr.append(predict(spec, net, jnp.asarray(theta[m]), train, u, task_shift(train, power, ref)))
        preds.append(predict(spec, net, jnp.asarray(theta[m]), held, u, task_shift(held, power, ref)))
    mu, var, y, target, r2, v, c, dof, nodes, cdf = second_moment_fit(preds_tr, preds, train, held, hold)
    pars = np.mean([f[0] for f in fits], 0)
    print(f"| {kernel} (p {np.mean(powers):.2f}) | {np.mean([f[1] for f in fits]):.3f} | {pars[0]:.3f} / {pars[1]:.3f} / "
          f"{pars[2]:.3f} / {pars[3]:.2f} | {'floor' if target < _FLOOR * r2 else f'{c:.3f}'} | {dof:g} | "
          f"{np.mean((mu.mean(0) - y) ** 2):.3f} | {mixture_nll(mu, var * c, y, nodes):.3f} | "
          f"{calibration_error(cdf):.4f} | {coverage(cdf, 0.5):.3f} | {coverage(cdf, 0.9):.3f} | "
          f"{by_distance(mu, var * c, y, nodes, held)} | {oracle(mu, var, y):.4f} | {per_point(mu, var, y, nodes):.4f} | {time.perf_counter() - t0:.0f} |",
          flush=True)
    return kernel, member_shape(mu, var, y, held)


def oracle(mu, var, y):
    """The lowest calibration error over c (a grid) and ν that the held-out tasks themselves would choose."""
    return min(calibration_error(mixture_cdf(mu, var * c, y, 0, scale_nodes(dof)))
               for dof in (3.0, 4.0, math.inf) for c in np.exp(np.linspace(-3.0, 1.0, 17)))


def per_point(mu, var, y, nodes):
    """Calibration error when each member's variance is V_m(x) − 2S(x) (floored at 0.05 V_m(x)), S(x) the spread
    of all the members' means at x: what the second-moment identity asks of members calibrated alone, per point."""
    return calibration_error(mixture_cdf(mu, np.maximum(var - 2 * mu.var(0, keepdims=True), 0.05 * var), y, 0, nodes))


def member_shape(mu, var, y, held, edges=(0, 0.22, 0.5, 0.88, 99)):
    """Per distance band: the members' E z² (z = (y − f_m)/sd_m, mean over members) and, for the mixture, the
    error of its mean against the members' mean variance and their spread S (means over the band's points)."""
    xs, xq = np.asarray(held.x_support)[..., 0], np.asarray(held.x_query)[..., 0]
    dist = np.abs(xq[:, :, None] - xs[:, None, :]).min(-1)
    z2 = np.mean((y[None] - mu) ** 2 / var, axis=0)[..., 0]
    err = ((y - mu.mean(0)) ** 2)[..., 0]
    v_bar, spread = var.mean(0)[..., 0], mu.var(0)[..., 0]
    cells = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        s = (dist >= lo) & (dist < hi)
        cells.append(f"{np.mean(z2[s]):.2f} | {np.mean(err[s]):.3f} / {np.mean(v_bar[s]):.3f} / {np.mean(spread[s]):.3f}")
    return " | ".join(cells)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=4, help="development draws")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--members", type=int, default=12)
    p.add_argument("--setup", default="sinusoid")
    p.add_argument("--kernels", nargs="+", choices=KERNELS, default=["one", "rbf"])
    args = p.parse_args(argv)
    for draw in range(args.first, args.first + args.draws):
        spec, _, train, held, theta, hold = train_members(draw, setup=args.setup, members=args.members)
        net = hb.mlp(setups()[args.setup].sizes)
        print(f"\n### development draw {draw}\n")
        print("| kernel | fold loss | τ / σ / η / ℓ (means) | c | ν | MSE | NLL | calib. error | cov 50 | cov 90 "
              "| d<0.22 CE / cov90 | 0.22–0.5 | 0.5–0.88 | ≥0.88 | oracle calib. error | V_m − 2S | s |\n" + "|---" * 17 + "|")
        shapes = [analyse(spec, net, train, held, theta, hold, kernel) for kernel in args.kernels]
        print("\n| kernel | members' E z², d < 0.22 | mixture: error / V̄ / S | E z², 0.22–0.5 | error / V̄ / S "
              "| E z², 0.5–0.88 | error / V̄ / S | E z², ≥ 0.88 | error / V̄ / S |\n" + "|---" * 9 + "|")
        for kernel, shape in shapes:
            print(f"| {kernel} (c = 1) | {shape} |", flush=True)


if __name__ == "__main__":
    main()
