"""How much of a member's error the ensemble's members share (issue 9), on development draws only.

The default predictive mixes M members, each N(μ_m(x), V_m(x)) with V_m = c·(E_m + N_m) (E_m the
linearised variance of f, N_m = σ_m²; both with the per-task factor h_j). Next to the support points the
members' errors are nearly independent, so the mean of M members is far better than any one of them,
while far from them the members miss together (docs/benchmarks.md, "A residual kernel"). One scale c
cannot serve both. This script models that directly: for two members a ≠ b that both left task j out,
the errors e = y − μ at a query point are bivariate normal with

    Var e_a = A·E_a + B·N_a,    Cov(e_a, e_b) = ρ_E·A·√(E_a E_b) + ρ_N·B·√(N_a N_b),

(A, B, ρ_E, ρ_N) fitted by maximum (pairwise) likelihood on the training tasks' folds only. The error of
the mean of M members then has the variance

    v_M(x) = C̄(x) + (V̄(x) − C̄(x))/M,

V̄ the mean of the members' variances and C̄ the mean of their pairwise covariances. Three predictives
are scored on the draw's 600 held-out tasks: ``library`` (hbmeta's mixture as it is), ``pair``
(N(μ̄, v_M), a Student-t of that variance with the library's ν in the ``pair-t`` row) and ``pair+spread``
(N(μ̄, C̄ + S/(M − 1)), S the members' spread at x: the independent part read from the members
themselves). Columns: calibration error, 90% coverage overall, near (d < 0.22) and far (d ≥ 0.88) from the
support, by third of the tasks ranked by support spread, NLL and MSE.

Development draws only (``DEV_SEED`` of ``calibration_gap.py``): nothing here is a reported result.

Usage:
    python bench/pair_covariance.py --draws 4 --members 12
"""

from __future__ import annotations

import math
import os
import sys

import jax.numpy as jnp
import numpy as np
from scipy import optimize, special, stats

import hbmeta as hb
from hbmeta.inference.holdout import holdout_task_scale
from hbmeta.model.support_spread import spread_factor, support_spread

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from calibration_gap import calibration_error, coverage, held_out_mixture, mixture_logpdf, trained_draws


def member_parts(spec_task, theta, tasks, fit):
    """``(μ, E, N)`` of every member on ``tasks``: ``(M, T, Q)`` mean, variance of f and noise variance (with h_j)."""
    h = np.asarray(spread_factor(support_spread(tasks.y_support, tasks.support_mask), fit.spread_power,
                                 fit.spread_ref), np.float64)[None, :, None]
    mu, var = [], []
    for m in range(theta.shape[0]):
        p = hb.task_predictive(spec_task, jnp.asarray(theta[m]), tasks, tau=float(fit.tau[m]),
                               noise=float(fit.noise[m]))
        mu.append(np.asarray(p.mean, np.float64)[..., 0])
        var.append(np.asarray(p.var, np.float64)[..., 0])
    noise = (np.asarray(fit.noise, np.float64) ** 2)[:, None, None] * h
    var = np.stack(var) * h
    return np.stack(mu), np.maximum(var - noise, 1e-12), np.broadcast_to(noise, var.shape)


def pair_arrays(mu, e_var, n_var, y, out):
    """Every (a, b, task, point) with a < b both out of sample: errors and parts, flattened."""
    pairs = [(j, a, b) for j in range(y.shape[0]) for i, a in enumerate(np.flatnonzero(out[:, j] > 0))
             for b in np.flatnonzero(out[:, j] > 0)[i + 1:]]
    j, a, b = (np.asarray(v) for v in zip(*pairs))
    return [np.ravel(v) for v in (y[j] - mu[a, j], y[j] - mu[b, j], e_var[a, j], e_var[b, j], n_var[a, j], n_var[b, j])]


def unpack(u):
    return math.exp(u[0]), math.exp(u[1]), special.expit(u[2]), special.expit(u[3])


def fit_pairs(ea, eb, Ea, Eb, Na, Nb):
    """(A, B, ρ_E, ρ_N) by maximum pairwise likelihood."""
    def nll(u):
        A, B, rE, rN = unpack(u)
        va, vb = A * Ea + B * Na, A * Eb + B * Nb
        c = rE * A * np.sqrt(Ea * Eb) + rN * B * np.sqrt(Na * Nb)
        det = np.maximum(va * vb - c * c, 1e-18)
        return float(np.mean(0.5 * np.log(det) + 0.5 * (vb * ea ** 2 - 2 * c * ea * eb + va * eb ** 2) / det))
    best = min((optimize.minimize(nll, np.array(u0), method="Nelder-Mead",
                                  options={"maxiter": 4000, "xatol": 1e-5, "fatol": 1e-9})
                for u0 in ([0.0, 0.0, 0.0, -2.0], [0.0, -1.0, 2.0, -3.0], [-1.0, 0.0, 1.0, 0.0])),
               key=lambda r: r.fun)
    return unpack(best.x)


def pair_variance(params, e_var, n_var):
    """``(V̄, C̄)`` per point over the members (axis 0)."""
    A, B, rE, rN = params
    M = e_var.shape[0]
    vbar = np.mean(A * e_var + B * n_var, axis=0)
    se, sn = np.sqrt(e_var), np.sqrt(n_var)
    def cross(s):
        return (np.sum(s, 0) ** 2 - np.sum(s ** 2, 0)) / (M * (M - 1))

    return vbar, rE * A * cross(se) + rN * B * cross(sn)


def scores(cdf, logpdf, mean, y, held):
    xs, xq = np.asarray(held.x_support)[..., 0], np.asarray(held.x_query)[..., 0]
    d = np.abs(xq[:, :, None] - xs[:, None, :]).min(-1)
    s2 = np.asarray(support_spread(held.y_support, held.support_mask), np.float64)
    thirds = [coverage(cdf[g], 0.9) for g in np.array_split(np.argsort(s2, kind="stable"), 3)]
    return (calibration_error(cdf), coverage(cdf, 0.9), coverage(cdf[d < 0.22], 0.9), coverage(cdf[d >= 0.88], 0.9),
            *thirds, -float(np.mean(logpdf)), float(np.mean((mean - y) ** 2)))


def library_fit(spec_task, theta, train, index, held):
    """The library's fit without the per-point factor (these studies came before it) and its held-out mixture.

    Returns ``(fit, (μ, V, y, scores))``: the members' ``(M, T, Q, 1)`` means and variances on ``held``, its
    targets, and the :func:`scores` of the mixture.
    """
    fit = holdout_task_scale(spec_task, theta, train, index, distance_bins=1)
    mu, var, y, cdf, _, _ = held_out_mixture(spec_task, theta, held, fit)
    logpdf = mixture_logpdf(mu, var, y, fit.tail_nodes)[..., 0]
    return fit, (mu, var, y, scores(cdf, logpdf, mu.mean(0)[..., 0], y[..., 0], held))


def main(argv=None):
    print("| draw | predictive | A / B / ρ_E / ρ_N | calib. error | cov 90 | near / far | thirds | NLL | MSE |\n"
          "|---|---|---|---|---|---|---|---|---|")
    totals: dict = {}
    for draw, spec_task, train, held, theta, index in trained_draws(argv, __doc__.splitlines()[0]):
        fit, (mu_l, var_l, y3, library) = library_fit(spec_task, theta, train, index, held)
        M = theta.shape[0]
        y = y3[..., 0]
        rows = {"library": library}

        out = np.zeros((M, train.num_tasks))
        for m, idx in enumerate(np.asarray(index)):
            out[m, idx] = 1.0
        mu_t, e_t, n_t = member_parts(spec_task, theta, train, fit)
        params = fit_pairs(*pair_arrays(mu_t, e_t, n_t, np.asarray(train.y_query, np.float64)[..., 0], out))
        mu_h, e_h, n_h = member_parts(spec_task, theta, held, fit)
        mean = mu_h.mean(0)
        vbar, cbar = pair_variance(params, e_h, n_h)
        spread = mu_h.var(0)
        dof = fit.tail_dof
        for name, v in (("pair", cbar + (vbar - cbar) / M), ("pair+spread", cbar + spread / (M - 1))):
            sd = np.sqrt(v)
            rows[name] = scores(stats.norm.cdf(y, mean, sd), stats.norm.logpdf(y, mean, sd), mean, y, held)
            if name == "pair" and math.isfinite(dof):
                s = sd * math.sqrt((dof - 2) / dof)
                rows["pair-t"] = scores(stats.t.cdf(y, dof, mean, s), stats.t.logpdf(y, dof, mean, s), mean, y, held)
        for name, r in rows.items():
            totals.setdefault(name, []).append(r)
            pr = "/".join(f"{p:.3g}" for p in params) if name != "library" else f"c {fit.scale:.3f}, ν {dof:g}"
            print(f"| {draw} | {name} | {pr} | {r[0]:.4f} | {r[1]:.3f} | {r[2]:.3f} / {r[3]:.3f} | "
                  f"{r[4]:.3f} / {r[5]:.3f} / {r[6]:.3f} | {r[7]:.4f} | {r[8]:.4f} |", flush=True)
    print_summary(totals, "predictive")


def print_summary(totals, label):
    """The table over draws of ``{name: [rows of scores(...)]}``: the targets met and the mean figures."""
    print(f"\n| {label} | mean calib. error | draws ≤ 0.02 | cov 90 in [0.88, 0.92] | every third ≥ 0.85 | "
          "cov 90 near / far | mean NLL | largest NLL | mean MSE |\n|---|---|---|---|---|---|---|---|---|")
    for name, rows in totals.items():
        a = np.asarray(rows)
        n = len(a)
        print(f"| {name} | {a[:, 0].mean():.4f} | {int(np.sum(a[:, 0] <= 0.02))} of {n} | "
              f"{int(np.sum((a[:, 1] >= 0.88) & (a[:, 1] <= 0.92)))} of {n} | "
              f"{int(np.sum(a[:, 4:7].min(axis=1) >= 0.85))} of {n} | {a[:, 2].mean():.3f} / {a[:, 3].mean():.3f} | "
              f"{a[:, 7].mean():.4f} | {a[:, 7].max():.4f} | {a[:, 8].mean():.4f} |")


if __name__ == "__main__":
    main()
