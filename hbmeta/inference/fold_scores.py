"""The folds' scores of an ensemble's predictive: tail nodes and the out-of-sample mixture log-likelihood.

Shared by :mod:`hbmeta.inference.holdout` (c, ν and the noise share),
:mod:`hbmeta.inference.spread_power` (the per-task scale) and
:mod:`hbmeta.inference.class_scale` (classification's c); the rules they
implement are in the module docstring of :mod:`hbmeta.inference.holdout`.
Arrays: ``mu``, ``var`` ``(M, T, Q, o)``, every member's predictive mean and
variance on every training task; ``out`` ``(M, T)``, 1 where member m did not
train on task j; ``w`` ``(T, Q)``, point weights.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from scipy import stats

TAIL_NODES = 8  # K, the Gaussians of each member's scale mixture
TAIL_DOFS = (2.5, 3.0, 4.0, 6.0, 10.0, 30.0)  # the ν tried, besides ∞ (the Gaussian)


@jax.jit
def _moments(mu, y, out, w):
    """``(r², v)`` from predictions ``mu`` ``(M, T, Mq, o)``, targets ``y``, mask ``out`` ``(M, T)``, weights ``w``."""
    o = mu.shape[-1]
    c = out.astype(mu.dtype)[:, :, None]  # (M, T, 1): member m is out of sample on task j
    sq = jnp.sum(jnp.square(mu - y), axis=-1) / o  # (M, T, Mq)
    r2 = jnp.sum(c * sq * w) / jnp.sum(c * w)
    n = jnp.sum(c, axis=0)  # (T, 1): out-of-sample members per task
    # Σ_{a<b} c_a c_b ‖μ_a − μ_b‖² = n Σ_a c_a ‖μ_a‖² − ‖Σ_a c_a μ_a‖²  (per point)
    s1 = jnp.sum(c[..., None] * mu, axis=0)
    pair_sq = (n * jnp.sum(c * jnp.sum(jnp.square(mu), -1), axis=0) - jnp.sum(jnp.square(s1), -1)) / o
    v = 0.5 * jnp.sum(pair_sq * w) / jnp.sum(0.5 * n * (n - 1) * w)
    return r2, v


def scale_nodes(dof: float, num_nodes: int = TAIL_NODES) -> np.ndarray:
    """Relative variances ``u_k`` of a discrete, variance-preserving Student-t with ``dof`` degrees of freedom.

    ``u_k = F⁻¹((k − ½)/K)`` of InvGamma(ν/2, (ν − 2)/2), divided by their mean
    so that ``mean_k u_k = 1`` exactly: ``(1/K) Σ_k N(0, u_k s²)`` has variance
    ``s²`` and, as K grows, tends to the Student-t with ν degrees of freedom
    and variance s². ``dof = inf`` gives one node, ``[1.0]`` (the Gaussian).

    Example:
        >>> u = scale_nodes(4.0)
        >>> len(u), round(float(u.mean()), 6), bool(u[0] < 1 < u[-1])
        (8, 1.0, True)
    """
    if math.isinf(dof):
        return np.ones(1)
    if not dof > 2:
        raise ValueError(f"dof={dof!r}; expected more than 2 (a Student-t with a finite variance) or inf")
    q = (np.arange(num_nodes) + 0.5) / num_nodes
    u = stats.invgamma.ppf(q, a=dof / 2, scale=(dof - 2) / 2)
    return u / u.mean()


@jax.jit
def _fold_loglik(mu, var, y, out, w, u):
    """Mean over weighted points of log (1/|O_j|) Σ_{m ∈ O_j} (1/K) Σ_k N(y; μ_m, u_k v_m), tasks with O_j ≠ ∅."""
    sd = jnp.sqrt(var[:, None] * u[None, :, None, None, None])  # (M, K, T, Q, o)
    lp = jax.scipy.stats.norm.logpdf(y[None, None], mu[:, None], sd)
    lp = jnp.sum(logsumexp(lp, axis=1) - jnp.log(u.shape[0]), axis=-1)  # (M, T, Q): the outputs of a point
    c = out[:, :, None]
    n = jnp.sum(out, axis=0)  # (T,)
    mix = logsumexp(jnp.where(c > 0, lp, -jnp.inf), axis=0) - jnp.log(jnp.maximum(n, 1.0))[:, None]
    ww = w * (n > 0)[:, None]
    return jnp.sum(jnp.where(ww > 0, mix, 0.0) * ww) / jnp.sum(ww)


def fit_tails(mu, var, y, out, w, *, dofs=TAIL_DOFS, num_nodes: int = TAIL_NODES):
    """ν of the members' scale mixtures, by out-of-sample log-likelihood on the training tasks (module docstring).

    ``mu``, ``var`` ``(M, T, Q, o)``: each member's predictive mean and variance
    on every training task; ``out`` ``(M, T)``: 1 where member m did not train on
    task j; ``w`` ``(T, Q)``: point weights. Returns ``(ν, u, scores)``: the
    best of ``dofs`` and ``inf``, its :func:`scale_nodes` and
    ``{ν: mean log-likelihood per point}``.
    """
    mu, var, y = jnp.asarray(mu), jnp.asarray(var), jnp.asarray(y)
    out, w = jnp.asarray(out, mu.dtype), jnp.asarray(w, mu.dtype)
    scores = {}
    for dof in (*dofs, math.inf):
        u = jnp.asarray(scale_nodes(dof, num_nodes), mu.dtype)
        scores[float(dof)] = float(_fold_loglik(mu, var, y, out, w, u))
    best = max(scores, key=lambda d: (scores[d], d))  # ties: the lighter tail
    return best, scale_nodes(best, num_nodes), scores


def mixture_fold_score(mu, var, y, out, w, nodes, spread) -> float:
    """Out-of-sample log-likelihood per point of the members' mixture on the folds, with M members' spread.

    ``var`` is each member's variance after scaling and ``nodes`` its scale
    mixture; ``v(1/n_j − 1/M)`` (``spread`` = v) is added to every member's
    variance on task j before the nodes scale it, the spread that the ``n_j``
    members that left it out lack against all M (as in the fallback of
    :func:`~hbmeta.inference.holdout.choose_scale`): ``mean_j,q log (1/n_j) Σ_{m ∈ O_j} (1/K) Σ_k
    N(y; μ_m, u_k (v_m + v(1/n_j − 1/M)))``.
    """
    mu = jnp.asarray(mu)
    num_members = mu.shape[0]
    out = jnp.asarray(out, mu.dtype)
    n = jnp.sum(out, axis=0)
    missing = (spread * (1 / jnp.maximum(n, 1.0) - 1 / num_members)).astype(mu.dtype)[None, :, None, None]
    return float(_fold_loglik(mu, jnp.asarray(var, mu.dtype) + missing, jnp.asarray(y, mu.dtype), out,
                              jnp.asarray(w, mu.dtype), jnp.asarray(nodes, mu.dtype)))
