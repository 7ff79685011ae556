"""The maths of task-level posteriors: the network linearised at φ̂_j, a Gaussian prior φ_j ~ N(μ_j, τ²I).

MAML's gradient step gives a point φ̂_j(θ); a task's predictive then has no
spread of its own. Here the integral over φ_j is done (LLAMA, Grant et al.
2018, with the generalized Gauss–Newton curvature instead of K-FAC; the
linearised predictive of Immer et al. 2021). Linearise the network at φ̂_j,

    f(x; φ) ≈ f(x; φ̂) + J(x)(φ − φ̂),       J(x) = ∂f(x; φ)/∂φ at φ̂,

with the prior φ_j ~ N(μ_j, τ²I) and, for regression, y ~ N(f, σ²). The prior
mean μ_j is the adapted point φ̂_j(θ) (``TaskPosterior(prior_mean="adapted")``,
the default: the gradient step is the prior guess and τ how far the task may
still move from it) or θ itself (``prior_mean="theta"``: the hierarchical
model φ_j ~ N(θ, τ²I) of Grant et al., with φ̂_j only the linearisation
point). The support and query outputs are then jointly Gaussian with NTK
kernels K_ab = J_a J_bᵀ (``n = K·o`` support rows, ``m = M·o`` query rows),
and with d = μ − φ̂ (zero for ``"adapted"``):

    r   = y_S − f(x_S; φ̂) − J_S d                           (support residual under the prior)
    A   = τ² K_SS + σ² I                                      (n × n)
    m_Q = f(x_Q; φ̂) + J_Q d + τ² K_QS A⁻¹ r
    C_Q = τ² K_QQ − τ⁴ K_QS A⁻¹ K_SQ                         (covariance of f at the query inputs)
    p(Q | S, θ, τ, σ)  = N(y_Q; m_Q, C_Q + σ² I)
    p(S | θ, τ, σ)     = N(r; 0, A)                           (the support marginal, for type-II ML)

This is the Gaussian posterior N(φ̄, (J_SᵀΛJ_S + τ⁻²I)⁻¹), Λ = σ⁻²I, pushed
through the linearised model (Woodbury: only n × n solves, never P × P), and
exact Bayesian linear regression when f is linear in φ (J constant: with
``"theta"`` the result does not depend on the inner steps at all; with
``"adapted"`` the prior mean is the affine φ̂_j = A_j θ + b_j). A masked
support point has no influence (its Jacobian row and residual are zero);
masked query points drop out of the likelihood (the marginal of the
observed points).

Classification (logits f, y ~ Categorical(softmax f)): Λ is the softmax
Hessian diag(p) − ppᵀ per support point at φ̂ (the GGN), factored as
Λ = L Lᵀ with L = diag(√p) − p√pᵀ, and the posterior mean is one
Gauss–Newton step from φ̂ on −log p(S | φ) + ‖φ − μ‖²/2τ² (for a Gaussian
likelihood this step lands exactly on the linearised posterior mean above).
With e = p_S − onehot(y_S) and B = I + τ² Lᵀ K_SS L:

    m_Q = f(x_Q; φ̂) − τ² K_QS e + J_Q d + τ² K_QS L B⁻¹ Lᵀ (τ² K_SS e − J_S d)
    C_Q = τ² K_QQ − τ⁴ K_QS L B⁻¹ Lᵀ K_SQ                     (per point, k × k)

and the class probabilities of N(m, C) are approximated without sampling by
the pairwise mean-field (probit) rule of Lu et al. (2020): writing
softmax_i = 1 / (1 + Σ_{j≠i} exp(−(z_i − z_j))) and replacing each
E exp(−(z_i − z_j)) term by the probit-scaled exp(−(m_i − m_j)/√(1 + π/8 · v_ij)),
v_ij = C_ii + C_jj − 2 C_ij, then normalising. It uses the covariances
between logits (a shift shared by all logits changes nothing) and is
deterministic and differentiable, so τ can be fitted through it.

The functions here work on one task and are pure, jit-, vmap- and
grad-friendly; the Jacobians are formed per task, ``(K + M)·o × P`` numbers.
The public functions over task batches are in :mod:`hbmeta.model.task_posterior`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_MASKED_VAR = 1.0 / (2 * math.pi)  # a masked dimension with residual 0 and this variance adds exactly 0 to log N


class Linearised(NamedTuple):
    """One task's network linearised at φ̂ (rows flattened over outputs; masked support rows zero)."""

    f_s: jax.Array  # (n,) f(x_S; φ̂)
    f_q: jax.Array  # (m,) f(x_Q; φ̂)
    js_d: jax.Array  # (n,) J_S (φ̂ − μ), μ the prior mean (zero when μ = φ̂)
    jq_d: jax.Array  # (m,) J_Q (φ̂ − μ)
    k_ss: jax.Array  # (n, n)
    k_qs: jax.Array  # (m, n)
    k_qq: jax.Array  # (m, m) full, or (M, o, o) diagonal blocks


def linearise(spec, theta, xs, ys, ms, xq, alpha=None, *, full_query=True) -> Linearised:
    """One task's network linearised at φ̂ = rule(θ, S): outputs, J(φ̂ − μ) and NTK kernels.

    ``theta`` is the flat θ; ``alpha`` overrides the rule's step size. The
    prior mean (``spec.task_posterior.prior_mean``, default ``"adapted"``)
    sets ``js_d``, ``jq_d`` = J(φ̂ − μ): zero when μ = φ̂. Pure and
    differentiable in θ and α (internal; used by the model and the functions below).
    """
    phi = spec.rule(spec.unravel(theta), xs, ys, ms, alpha)
    phi_flat, unravel = ravel_pytree(phi)

    def f(p, x):
        return spec.rule.apply(unravel(p), x).reshape(-1)

    f_s, f_q = f(phi_flat, xs), f(phi_flat, xq)
    j_s = jax.jacrev(f)(phi_flat, xs)  # (n, P)
    j_q = jax.jacrev(f)(phi_flat, xq)  # (m, P)
    if ms is not None:
        o = f_s.shape[0] // ms.shape[0]
        j_s = j_s * jnp.repeat(ms, o).astype(j_s.dtype)[:, None]
    tp = spec.task_posterior
    d = phi_flat - theta if tp is not None and tp.prior_mean == "theta" else jnp.zeros_like(phi_flat)
    k_ss = j_s @ j_s.T
    k_qs = j_q @ j_s.T
    if full_query:
        k_qq = j_q @ j_q.T
    else:
        jq = j_q.reshape(xq.shape[0], -1, j_q.shape[-1])
        k_qq = jnp.einsum("mop,mqp->moq", jq, jq)
    return Linearised(f_s, f_q, j_s @ d, j_q @ d, k_ss, k_qs, k_qq)


def regression_condition(lin, ys, ms, tau, noise):
    """``(m_Q, C_Q, chol A, r)``: the linearised query mean and f-covariance given the support (see module)."""
    n = lin.f_s.shape[0]
    tau2, noise2 = jnp.square(tau), jnp.square(noise)
    r = ys.reshape(-1) - lin.f_s + lin.js_d
    diag = jnp.full((n,), noise2, lin.f_s.dtype)
    if ms is not None:
        keep = jnp.repeat(ms, n // ms.shape[0])
        r = jnp.where(keep, r, 0.0)
        diag = jnp.where(keep, diag, _MASKED_VAR)
    chol = jnp.linalg.cholesky(tau2 * lin.k_ss + jnp.diag(diag + _jitter(tau2 * lin.k_ss)))
    w = jax.scipy.linalg.cho_solve((chol, True), r)
    mean = lin.f_q - lin.jq_d + tau2 * lin.k_qs @ w
    v = jax.scipy.linalg.solve_triangular(chol, tau2 * lin.k_qs.T, lower=True)  # (n, m)
    if lin.k_qq.ndim == 2:
        cov = tau2 * lin.k_qq - v.T @ v
    else:
        vb = v.reshape(n, lin.k_qq.shape[0], lin.k_qq.shape[1])
        cov = tau2 * lin.k_qq - jnp.einsum("nmo,nmq->moq", vb, vb)
    return mean, cov, chol, r


def _jitter(kernel):
    """Rounding-level regularisation, 10 ε · mean diag(kernel): keeps Cholesky factors finite in float32
    when τ²K dwarfs σ² (the conditional covariance is a difference of such matrices). In float64 it is ~1e-15."""
    eps = jnp.finfo(kernel.dtype).eps
    return 10 * eps * jnp.maximum(jnp.mean(jnp.diagonal(kernel)), jnp.finfo(kernel.dtype).tiny)


def support_log_marginal(chol, r):
    """log N(r; 0, A) from chol A (masked dimensions, with r = 0 and variance 1/2π, add exactly 0)."""
    w = jax.scipy.linalg.solve_triangular(chol, r, lower=True)
    return -0.5 * jnp.sum(w * w) - jnp.sum(jnp.log(jnp.diag(chol))) - r.shape[0] * _HALF_LOG_2PI


def query_gaussian(lin, ys, ms, yq, mq, tau, noise):
    """``(mean, scale_tril)`` of p(y_Q | S) over the ``M·o`` query values; masked values get mean y, sd 1/√2π."""
    mean, cov, _, _ = regression_condition(lin, ys, ms, tau, noise)
    m = mean.shape[0]
    jitter = _jitter(jnp.square(tau) * (lin.k_qq if lin.k_qq.ndim == 2 else jnp.eye(m)))
    cov = cov + (jnp.square(noise) + jitter) * jnp.eye(m, dtype=cov.dtype)
    if mq is not None:
        keep = jnp.repeat(mq, m // mq.shape[0])
        both = keep[:, None] & keep[None, :]
        cov = jnp.where(both, cov, jnp.diag(jnp.full((m,), _MASKED_VAR, cov.dtype)))
        mean = jnp.where(keep, mean, yq.reshape(-1))
    return mean, jnp.linalg.cholesky(cov)


def gaussian_log_prob(y, mean, chol):
    w = jax.scipy.linalg.solve_triangular(chol, y - mean, lower=True)
    return -0.5 * jnp.sum(w * w) - jnp.sum(jnp.log(jnp.diag(chol))) - y.shape[0] * _HALF_LOG_2PI


def classification_condition(lin, ys, ms, tau, num_classes):
    """``(m_Q (M, k), C_Q blocks (M, k, k))`` after one Gauss–Newton step from φ̂ (see module)."""
    k = num_classes
    n = lin.f_s.shape[0]
    tau2 = jnp.square(tau)
    p = jax.nn.softmax(lin.f_s.reshape(-1, k), axis=-1)  # (K, k)
    e = p - jax.nn.one_hot(ys, k, dtype=p.dtype)
    sq = jnp.sqrt(p)
    lt = jax.vmap(lambda a, b: jnp.diag(a) - b[:, None] * a[None, :])(sq, p)  # rows i: L_i = diag(√p) − p √pᵀ
    if ms is not None:
        e = e * ms[:, None].astype(e.dtype)
        lt = lt * ms[:, None, None].astype(lt.dtype)
    big_l = _block_diag(lt)  # (n, n), Λ = L Lᵀ
    e = e.reshape(-1)
    b = jnp.eye(n, dtype=p.dtype) + tau2 * big_l.T @ lin.k_ss @ big_l
    chol = jnp.linalg.cholesky(b)
    kl = lin.k_qs @ big_l  # (m, n)
    rhs = big_l.T @ (tau2 * lin.k_ss @ e + lin.js_d)
    mean = lin.f_q - tau2 * lin.k_qs @ e - lin.jq_d + tau2 * kl @ jax.scipy.linalg.cho_solve((chol, True), rhs)
    u = jax.scipy.linalg.solve_triangular(chol, tau2 * kl.T, lower=True)  # (n, m)
    num_points = lin.k_qq.shape[0]
    ub = u.reshape(n, num_points, k)
    cov = tau2 * lin.k_qq - jnp.einsum("nmo,nmq->moq", ub, ub)
    return mean.reshape(num_points, k), cov


def _block_diag(blocks):
    """Block-diagonal matrix from ``(B, k, k)`` blocks."""
    nb, k, _ = blocks.shape
    eye = jnp.eye(nb, dtype=blocks.dtype)
    return jnp.einsum("ab,aij->aibj", eye, blocks).reshape(nb * k, nb * k)


def mean_field_probs(mean, cov):
    """Pairwise mean-field (probit) approximation of E softmax(z), z ~ N(mean, cov), per point.

    ``p_i ∝ 1 / (1 + Σ_{j≠i} exp(−(m_i − m_j) / √(1 + π/8 · v_ij)))``, ``v_ij =
    C_ii + C_jj − 2 C_ij`` (Lu et al. 2020), normalised over classes. ``mean``
    is ``(..., k)``, ``cov`` ``(..., k, k)``.

    Example:
        >>> import jax.numpy as jnp
        >>> p = mean_field_probs(jnp.array([2.0, 0.0]), 4.0 * jnp.eye(2))
        >>> round(float(p[0]), 3)  # σ(2 / √(1 + π/8 · 8)); without the variance σ(2) = 0.881
        0.728
    """
    diag = jnp.diagonal(cov, axis1=-2, axis2=-1)
    v = diag[..., :, None] + diag[..., None, :] - 2 * cov
    t = (mean[..., :, None] - mean[..., None, :]) / jnp.sqrt(1 + (math.pi / 8) * jnp.maximum(v, 0.0))
    k = mean.shape[-1]
    off = ~jnp.eye(k, dtype=bool)
    q = 1 / (1 + jnp.sum(jnp.where(off, jnp.exp(-jnp.where(off, t, 0.0)), 0.0), axis=-1))
    return q / jnp.sum(q, axis=-1, keepdims=True)


def predictive_one(spec, theta, xs, ys, ms, xq, alpha, tau, noise):
    """``(mean, var, probs)`` of one task's query points (see :func:`task_predictive`); pure, internal."""
    lin = linearise(spec, theta, xs, ys, ms, xq, alpha, full_query=False)
    return condition_one(spec, lin, ys, ms, xq.shape[0], tau, noise)


def condition_one(spec, lin, ys, ms, num_points, tau, noise):
    """``(mean, var, probs)`` of one task's ``num_points`` query points from its linearisation (``full_query=False``).

    The Jacobians are in ``lin``; conditioning on the support for a given (τ, σ) is only K·o × K·o
    solves, so draws that share θ and α (an ensemble member's tail nodes) linearise once.
    """
    if spec.likelihood.regression:
        mean, cov, _, _ = regression_condition(lin, ys, ms, tau, noise)
        var = jnp.diagonal(cov, axis1=-2, axis2=-1) + jnp.square(noise)
        return mean.reshape(num_points, -1), jnp.maximum(var, jnp.square(noise)), None
    mean, cov = classification_condition(lin, ys, ms, tau, lin.k_qq.shape[-1])
    return mean, jnp.diagonal(cov, axis1=-2, axis2=-1), mean_field_probs(mean, cov)


def log_likelihood_one(spec, lin, ys, ms, yq, mq, tau, noise):
    if spec.likelihood.regression:
        mean, chol = query_gaussian(lin, ys, ms, yq, mq, tau, noise)
        return gaussian_log_prob(yq.reshape(-1), mean, chol)
    mean, cov = classification_condition(lin, ys, ms, tau, lin.k_qq.shape[-1])
    p = mean_field_probs(mean, cov)
    py = jnp.take_along_axis(p, yq[:, None].astype(jnp.int32), axis=-1)[:, 0]
    logp = jnp.log(jnp.maximum(py, jnp.finfo(p.dtype).tiny))
    return jnp.sum(logp if mq is None else jnp.where(mq, logp, 0.0))


def query_gaussian_one(spec, theta, xs, ys, ms, xq, yq, mq, alpha, tau, noise):
    """``(mean, scale_tril)`` of p(y_Q | S, θ, τ, σ) over one task's ``M·o`` query values (regression)."""
    lin = linearise(spec, theta, xs, ys, ms, xq, alpha, full_query=True)
    return query_gaussian(lin, ys, ms, yq, mq, tau, noise)
