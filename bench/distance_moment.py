"""The second-moment rule by distance to the support (issue 9), on development draws only.

hbmeta's regression ensemble scales every member's variance by one c, set so that the M-member mixture's
variance matches the estimated error of its mean (the second-moment identity, estimated without bias from
the two or three members that left each training task out: ``hbmeta.inference.holdout``). The held-out
predictive is then about twice too wide next to the support points and a little too narrow far from them:
near the support the members' mean is much better than the members. The identity holds for any subset of
points, so this script applies it per bin of the query point's distance d to its task's nearest support
point (bins: quintiles of d over the training tasks' query points), on top of the library's fit:

- ``mixture, c by distance``: member m at x is N(μ_m, c_b V_m(x)) with the library's tail nodes, and
  c_b = (r²_b − 2v_b(M − 1)/M) / V̄_b (floored at 0.01);
- ``mixture, c by distance, folds' lik. where V ≤ 0``: the same, but in a bin where r²_b − 2v_b(M − 1)/M ≤
  0.05² r²_b, c_b by the folds' mixture log-likelihood of that bin's points (the library's fallback, per bin);
- ``mixture, shrink then c``: the members pulled towards their mean by λ_b ≤ 1 first, their variance
  rescaled only where that is not enough, so that the mixture's variance matches per bin;
- ``centred, k by distance``: a Student-t (the library's ν) centred at the members' mean μ̄(x) with the
  variance k_b (V̄(x) + S(x)), S the members' spread at x and k_b = (r²_b − v_b(M − 1)/M) / (V̄_b + v_b(M − 1)/M):
  the mixture mean's estimated error over the mixture's variance, per bin.

The library adopted the first with a floor of 0.3 (``bench/distance_scale.py``).

r²_b, v_b and V̄_b are the members' out-of-sample squared error, half the squared gap of two of them and their
mean variance over the training tasks' points in bin b. Scored on the draw's 600 held-out tasks: calibration
error, 90% coverage overall, near (d < 0.22) and far (d ≥ 0.88), by third of the tasks ranked by support
spread, NLL and MSE. Development draws only (``DEV_SEED`` of ``calibration_gap.py``).

Usage:
    python bench/distance_moment.py --draws 14 --members 12      # about 50 s a draw on 2 cores
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
from scipy import stats

from hbmeta.inference.fold_scores import mixture_fold_score
from hbmeta.inference.holdout import out_of_sample_mask

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from calibration_gap import mixture_cdf, mixture_logpdf, trained_draws
from pair_covariance import library_fit, member_parts, print_summary, scores


def distance(tasks):
    xs, xq = np.asarray(tasks.x_support)[..., 0], np.asarray(tasks.x_query)[..., 0]
    return np.abs(xq[:, :, None] - xs[:, None, :]).min(-1)


def bin_moments(mu, var, y, out, bins, num_bins):
    """``(r², v, V̄)`` per bin from the out-of-sample members of every training task."""
    r2, v, vbar = np.zeros(num_bins), np.zeros(num_bins), np.zeros(num_bins)
    for b in range(num_bins):
        e, g, w = [], [], []
        for j in range(y.shape[0]):
            sel = bins[j] == b
            if not sel.any():
                continue
            ms = np.flatnonzero(out[:, j] > 0)
            e.append(((y[j, sel][None] - mu[ms][:, j, sel]) ** 2).ravel())
            w.append(var[ms][:, j, sel].ravel())
            g.extend(((mu[a, j, sel] - mu[c, j, sel]) ** 2 / 2) for i, a in enumerate(ms) for c in ms[i + 1:])
        r2[b], v[b], vbar[b] = np.mean(np.concatenate(e)), np.mean(np.concatenate(g)), np.mean(np.concatenate(w))
    return r2, v, vbar


def main(argv=None):
    print("| draw | predictive | factors by bin (near → far) | calib. error | cov 90 | near / far | thirds | NLL | MSE |\n"
          "|---|---|---|---|---|---|---|---|---|")
    totals: dict = {}
    for draw, spec_task, train, held, theta, index in trained_draws(argv, __doc__.splitlines()[0]):
        fit, (mu_l, var_l, y3, library) = library_fit(spec_task, theta, train, index, held)
        M = theta.shape[0]
        u = np.asarray(fit.tail_nodes)
        y = y3[..., 0]
        rows = {"library": (f"c {fit.scale:.3f}, ν {fit.tail_dof:g}", library)}

        mu_t, e_t, n_t = member_parts(spec_task, theta, train, fit)
        var_t = e_t + n_t
        d_t, d_h = distance(train), distance(held)
        edges = np.quantile(d_t, np.linspace(0, 1, 6)[1:-1])
        b_t, b_h = np.digitize(d_t, edges), np.digitize(d_h, edges)
        out = out_of_sample_mask(index, M, train.num_tasks)
        r2, v, vbar = bin_moments(mu_t, var_t, np.asarray(train.y_query, np.float64)[..., 0], out, b_t, 5)
        mu_h, var_h = mu_l[..., 0], var_l[..., 0]
        f = (M - 1) / M
        c_b = np.maximum((r2 - 2 * v * f) / vbar, 0.01)
        k_b = (r2 - v * f) / (vbar + v * f)
        var_c = var_h * c_b[b_h][None]
        cdf_c = mixture_cdf(mu_l, var_c[..., None], y3, 0.0, u)[..., 0]
        logpdf_c = mixture_logpdf(mu_h, var_c, y, u)
        rows["mixture, c by distance"] = ("/".join(f"{x:.2f}" for x in c_b),
                                          scores(cdf_c, logpdf_c, mu_h.mean(0), y, held))
        # where the spread alone exceeds the bin's error (V_b ≤ 0.05² r²_b), c_b by the folds' likelihood of the bin's
        # points instead, with the spread the folds' members lack against M added (the library's fallback, per bin)
        c_f = c_b.copy()
        y_t = np.asarray(train.y_query, np.float64)
        for b in np.flatnonzero(r2 - 2 * v * f <= 0.05 ** 2 * r2):
            w = (b_t == b).astype(np.float64)
            grid = np.geomspace(0.01, 4.0, 40)
            ll = [mixture_fold_score(mu_t[..., None], (var_t * g)[..., None], y_t, out, w, u, v[b]) for g in grid]
            c_f[b] = grid[int(np.argmax(ll))]
        var_f = var_h * c_f[b_h][None]
        cdf_f = mixture_cdf(mu_l, var_f[..., None], y3, 0.0, u)[..., 0]
        logpdf_f = mixture_logpdf(mu_h, var_f, y, u)
        rows["mixture, c by distance, folds' lik. where V ≤ 0"] = ("/".join(f"{x:.2f}" for x in c_f),
                                                                  scores(cdf_f, logpdf_f, mu_h.mean(0), y, held))
        # shrink the members towards their mean first (λ_b ≤ 1), then rescale their variance where that is not enough
        target = r2 - v * f
        base = 1.0  # the library's variances as they are
        lam2 = np.clip((target - base * vbar) / (v * f), 0.0, 1.0)
        c_s = np.where(lam2 >= 1.0, (target - v * f) / vbar, np.where(lam2 <= 0.0, target / vbar, base))
        lam_b, c_sb = np.sqrt(lam2)[b_h][None], c_s[b_h][None]
        mean = mu_h.mean(0)
        mu_s = mean[None] + lam_b * (mu_h - mean[None])
        var_s = var_h * c_sb
        cdf_s = mixture_cdf(mu_s[..., None], var_s[..., None], y3, 0.0, u)[..., 0]
        logpdf_s = mixture_logpdf(mu_s, var_s, y, u)
        rows["mixture, shrink then c"] = ("λ " + "/".join(f"{x:.2f}" for x in np.sqrt(lam2)) + ", c "
                                          + "/".join(f"{x:.2f}" for x in c_s), scores(cdf_s, logpdf_s, mean, y, held))
        var_k = k_b[b_h] * (var_h.mean(0) + mu_h.var(0))
        dof = fit.tail_dof
        if math.isfinite(dof):
            s = np.sqrt(var_k * (dof - 2) / dof)
            cdf_k, logpdf_k = stats.t.cdf(y, dof, mean, s), stats.t.logpdf(y, dof, mean, s)
        else:
            cdf_k, logpdf_k = stats.norm.cdf(y, mean, np.sqrt(var_k)), stats.norm.logpdf(y, mean, np.sqrt(var_k))
        rows["centred, k by distance"] = ("/".join(f"{x:.2f}" for x in k_b), scores(cdf_k, logpdf_k, mean, y, held))
        for name, (pr, r) in rows.items():
            totals.setdefault(name, []).append(r)
            print(f"| {draw} | {name} | {pr} | {r[0]:.4f} | {r[1]:.3f} | {r[2]:.3f} / {r[3]:.3f} | "
                  f"{r[4]:.3f} / {r[5]:.3f} / {r[6]:.3f} | {r[7]:.4f} | {r[8]:.4f} |", flush=True)
    print_summary(totals, "predictive")

if __name__ == "__main__":
    main()
