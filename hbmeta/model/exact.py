"""The exact posterior over θ for linear-Gaussian tasks, and the distance of draws to it.

With the linear model ``f_θ(x) = xᵀθ`` and the squared loss
``L_j(θ) = (1/K_j) Σ_k (y_k − x_kᵀθ)²`` over the ``K_j`` real support points,
one gradient step is affine in θ:

    φ = A_j θ + b_j,   A_j = I − (2α/K_j) X_jᵀX_j,   b_j = (2α/K_j) X_jᵀ y_j,

so ``n`` steps give ``φ̂_j = A_jⁿ θ + c_j`` with ``c_j = Σ_{i<n} A_jⁱ b_j``.
With the prior ``θ ~ N(μ, diag(s²))`` and the query likelihood
``y_q ~ N(x_qᵀφ̂_j, σ²)``, the posterior over θ is Gaussian with

    G_j = X_q,j A_jⁿ,   r_j = y_q,j − X_q,j c_j,
    Λ = diag(s⁻²) + σ⁻² Σ_j G_jᵀ G_j,       (precision)
    m = Λ⁻¹ (μ ⊙ s⁻² + σ⁻² Σ_j G_jᵀ r_j),   (mean)

(masked points drop out of every sum). It is computed in float64 with numpy,
whatever JAX's precision, and every inference method is checked against it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from hbmeta.base.validate import check_positive, check_type
from hbmeta.tasks.batch import TaskBatch


class GaussianPosterior(NamedTuple):
    """A Gaussian over θ: ``mean`` ``(P,)``, ``cov`` ``(P, P)`` (float64 numpy)."""

    mean: np.ndarray
    cov: np.ndarray

    @property
    def sd(self) -> np.ndarray:
        return np.sqrt(np.diag(self.cov))


def _per_param(value, p, name):
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 0:
        a = np.full(p, float(a))
    if a.shape != (p,):
        raise ValueError(f"{name} has shape {a.shape}; expected a scalar or ({p},)")
    return a


def linear_gaussian_posterior(
    tasks: TaskBatch, *, step_size: float, noise: float, num_steps: int = 1, prior_loc=0.0, prior_scale=1.0
) -> GaussianPosterior:
    """The exact posterior ``p(θ | tasks)`` of the linear model with gradient-step adaptation.

    Args:
        tasks: regression tasks with one output, ``y`` of shape ``(T, K, 1)``.
        step_size: α of the inner gradient steps (on the mean squared error).
        noise: σ, the fixed standard deviation of the query likelihood.
        num_steps: n ≥ 0 inner steps.
        prior_loc, prior_scale: μ and s of the prior ``θ ~ N(μ, diag(s²))``,
            scalars or ``(P,)`` vectors.

    Returns:
        :class:`GaussianPosterior` (mean and covariance, float64).

    Example:
        >>> import jax
        >>> from hbmeta import LinearGaussian, linear_gaussian_posterior
        >>> tasks = LinearGaussian(dim=2).sample(jax.random.key(0), 20)
        >>> post = linear_gaussian_posterior(tasks, step_size=0.1, noise=0.5)
        >>> post.mean.shape, post.cov.shape
        ((2,), (2, 2))
    """
    check_type("tasks", tasks, TaskBatch)
    if tasks.y_query.ndim != 3 or tasks.y_query.shape[-1] != 1:
        raise ValueError(f"tasks.y_query has shape {tasks.y_query.shape}; expected (T, M, 1) real targets")
    check_positive("step_size", step_size)
    check_positive("noise", noise)
    if int(num_steps) != num_steps or num_steps < 0:
        raise ValueError(f"num_steps={num_steps!r}; expected a non-negative integer")
    xs, ys, xq, yq = (np.asarray(a, dtype=np.float64) for a in (tasks.x_support, tasks.y_support, tasks.x_query, tasks.y_query))
    T, K, P = xs.shape
    ms = np.ones((T, K)) if tasks.support_mask is None else np.asarray(tasks.support_mask, dtype=np.float64)
    mq = np.ones(xq.shape[:2]) if tasks.query_mask is None else np.asarray(tasks.query_mask, dtype=np.float64)
    loc = _per_param(prior_loc, P, "prior_loc")
    scale = _per_param(prior_scale, P, "prior_scale")
    if not np.all(scale > 0):
        raise ValueError("prior_scale has non-positive entries; expected positive standard deviations")
    precision = np.diag(scale**-2.0)
    h = loc * scale**-2.0
    eye = np.eye(P)
    for j in range(T):
        k = ms[j].sum()
        xw = xs[j] * ms[j][:, None]
        a = eye - (2 * step_size / k) * xw.T @ xs[j]
        b = (2 * step_size / k) * xw.T @ ys[j, :, 0]
        an, c = eye, np.zeros(P)
        for _ in range(int(num_steps)):
            an, c = a @ an, a @ c + b
        g = xq[j] @ an
        r = yq[j, :, 0] - xq[j] @ c
        gw = g * mq[j][:, None]
        precision += gw.T @ g / noise**2
        h += gw.T @ r / noise**2
    cov = np.linalg.inv(precision)
    cov = 0.5 * (cov + cov.T)
    return GaussianPosterior(cov @ h, cov)


def gaussian_distance(draws, exact: GaussianPosterior) -> dict:
    """How far draws ``(N, P)`` of θ are from a Gaussian posterior.

    Returns plain floats: ``max_mean_diff_sd`` = max_i |mean̂_i − m_i| / sd_i
    (posterior standard deviations; Monte Carlo error alone gives about
    1/√ESS), ``sd_ratio_min`` and ``sd_ratio_max`` (the fitted over the exact
    standard deviations; 1 is perfect) and ``num_draws``.

    Example:
        >>> import numpy as np
        >>> g = GaussianPosterior(np.zeros(2), np.eye(2))
        >>> d = gaussian_distance(np.random.default_rng(0).normal(size=(4000, 2)), g)
        >>> d["max_mean_diff_sd"] < 0.1, 0.9 < d["sd_ratio_min"] <= d["sd_ratio_max"] < 1.1
        (True, True)
    """
    draws = np.asarray(draws, dtype=np.float64)
    p = exact.mean.shape[0]
    if draws.ndim != 2 or draws.shape[1] != p or draws.shape[0] < 2:
        raise ValueError(f"draws has shape {draws.shape}; expected (N, {p}) with N >= 2")
    sd = exact.sd
    ratio = draws.std(axis=0, ddof=1) / sd
    return {
        "max_mean_diff_sd": float(np.max(np.abs(draws.mean(axis=0) - exact.mean) / sd)),
        "sd_ratio_min": float(ratio.min()),
        "sd_ratio_max": float(ratio.max()),
        "num_draws": int(draws.shape[0]),
    }
