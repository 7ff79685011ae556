"""The generalized Gauss–Newton (GGN) curvature of the posterior over θ: positive definite by construction.

The query log-likelihood of task j depends on θ only through the adapted
model's outputs ``F_j(θ) = f(x_Q; φ̂_j(θ))``. Its Hessian is
``J_jᵀ Λ_j J_j + Σ_q (∂ℓ/∂F) ∇²F``, with ``J_j = ∂F_j/∂θ`` (through the inner
gradient step) and ``Λ_j`` the Hessian of the negative log-likelihood in the
outputs. The GGN keeps the first term only (Schraudolph 2002; Martens 2020;
in Laplace approximations of networks, Immer et al. 2021):

    G(θ) = Σ_j J_jᵀ Λ_j J_j + diag(1/s²),
    Λ_j = w_q/σ² (Gaussian, per point and output)  or  diag(p_q) − p_q p_qᵀ (softmax),

where the last term is the exact curvature of the prior ``θ ~ N(μ, diag(s²))``.
Every ``Λ_j`` is positive semi-definite, so ``G`` is positive definite
whatever θ: the ReLU network's indefinite Hessian (negative eigenvalues where
the second-derivative term dominates) cannot occur. For a model whose outputs
are affine in θ (linear-Gaussian tasks) ``∇²F = 0`` and the GGN is the exact
Hessian. The other latent sites (``log σ``, ``log α``) keep their exact
diagonal blocks; their cross terms with θ are set to zero (for the Gaussian
noise scale that is exact in expectation: the Fisher information of the mean
and of ``log σ`` is block-diagonal).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hbmeta.model.spec import ModelSpec

CURVATURES = ("hessian", "ggn")


def check_ggn_spec(spec: ModelSpec) -> None:
    """``ValueError`` unless the GGN applies: the gradient-step model (no explicit φ_j, no task-level posterior)."""
    if spec.explicit_tau is not None or getattr(spec, "task_posterior", None) is not None:
        raise ValueError(
            "curvature='ggn' with explicit_tau or task_posterior set; expected the gradient-step model: those "
            "likelihoods are not a function of the adapted model's outputs alone (use curvature='hessian')"
        )


def _outputs_fn(spec: ModelSpec, alpha):
    rule = spec.rule

    def outputs(flat, xs, ys, ms, xq):
        return rule.apply(rule(spec.unravel(flat), xs, ys, ms, alpha), xq)

    return outputs


def ggn_likelihood(spec: ModelSpec, tasks, theta, *, noise=None, step_size=None, task_chunk: int = 16):
    """``Σ_j J_jᵀ Λ_j J_j``: the GGN of the negative query log-likelihood at the flat θ, ``(P, P)``.

    ``noise`` is σ (regression); ``step_size`` overrides the rule's α. Tasks
    are processed ``task_chunk`` at a time (memory ``task_chunk·M·o·P``
    floats for the Jacobians, plus the ``P × P`` sum). Masked query points
    have weight 0.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import hbmeta as hb
        >>> spec = hb.ModelSpec(hb.GradientSteps(hb.linear().apply, step_size=0.1), {"w": jnp.zeros(2)})
        >>> tasks = hb.LinearGaussian(dim=2).sample(jax.random.key(0), 5)
        >>> ggn_likelihood(spec, tasks, jnp.zeros(2), noise=0.5).shape
        (2, 2)
    """
    regression = spec.likelihood.regression
    if regression and (noise is None or not float(noise) > 0):
        raise ValueError(f"noise={noise!r}; expected σ > 0 for a regression likelihood")
    theta = jnp.asarray(theta)
    if theta.shape != (spec.num_params,):
        raise ValueError(f"theta has shape {theta.shape}; expected ({spec.num_params},), the flat θ")
    num_tasks = tasks.num_tasks
    chunk = max(1, min(int(task_chunk), num_tasks))
    padded = -(-num_tasks // chunk) * chunk
    index = np.minimum(np.arange(padded), num_tasks - 1)
    weight = (np.arange(padded) < num_tasks).astype(np.float32)
    qmask = np.ones(tasks.x_query.shape[:2], np.float32) if tasks.query_mask is None else np.asarray(
        tasks.query_mask, np.float32)
    data = tasks.take(index)
    w = jnp.asarray(qmask[index] * weight[:, None], theta.dtype)  # (T', M)
    arrays = (data.x_support, data.y_support, data.support_mask, data.x_query, w)
    arrays = jax.tree.map(lambda a: a.reshape((padded // chunk, chunk) + a.shape[1:]), arrays)
    outputs = _outputs_fn(spec, step_size)
    sigma = None if not regression else jnp.asarray(noise, theta.dtype)

    @jax.jit
    def run(theta, arrays):
        def one_chunk(total, a):
            xs, ys, ms, xq, wq = a
            jac = jax.vmap(jax.jacrev(outputs), in_axes=(None, 0, 0, 0, 0))(theta, xs, ys, ms, xq)  # (B, M, o, P)
            if regression:
                rows = jac * (jnp.sqrt(wq)[:, :, None, None] / sigma)
                rows = rows.reshape(-1, rows.shape[-1])
                return total + rows.T @ rows, None
            logits = jax.vmap(outputs, in_axes=(None, 0, 0, 0, 0))(theta, xs, ys, ms, xq)  # (B, M, k)
            p = jax.nn.softmax(logits, axis=-1)
            lam = (jax.vmap(jax.vmap(jnp.diag))(p) - p[..., :, None] * p[..., None, :]) * wq[..., None, None]
            return total + jnp.einsum("bmkp,bmkl,bmlr->pr", jac, lam, jac), None

        zero = jnp.zeros((theta.shape[0], theta.shape[0]), theta.dtype)
        return jax.lax.scan(one_chunk, zero, arrays)[0]

    return run(theta, arrays)


def ggn_precision(spec: ModelSpec, tasks, *, potential, u, unravel, sites: dict, task_chunk: int = 16) -> np.ndarray:
    """The GGN precision of the posterior in the unconstrained space ``u`` of all latent sites, ``(n, n)``.

    The θ block is :func:`ggn_likelihood` plus the prior's ``diag(1/s²)``;
    every other site's block is the exact Hessian of ``potential`` (the
    negative log posterior in ``u``) in that site's coordinates, and cross
    blocks are zero. ``unravel`` maps ``u`` to a dict of unconstrained site
    values; ``sites`` holds the constrained values at ``u`` (``"noise"`` σ,
    ``"step_size"`` α when inferred). Returns float64 numpy.

    Raises:
        ValueError: for the explicit variant (latent φ_j) and the task-level
            posterior option, whose likelihoods are not a function of the
            adapted model's outputs alone.
    """
    check_ggn_spec(spec)
    n = int(u.shape[0])
    index = unravel(jnp.arange(n, dtype=jnp.float32))
    blocks = {name: np.asarray(v, dtype=np.float64).round().astype(int).ravel() for name, v in index.items()}
    lik = spec.likelihood
    noise = sites.get("noise", getattr(lik, "noise", None)) if lik.regression else None
    h = np.zeros((n, n))
    theta_idx = blocks["theta"]
    g = ggn_likelihood(spec, tasks, unravel(u)["theta"], noise=noise, step_size=sites.get("step_size"),
                       task_chunk=task_chunk)
    _, scale = spec.prior_loc_scale()
    h[np.ix_(theta_idx, theta_idx)] = np.asarray(g, np.float64) + np.diag(np.asarray(scale, np.float64) ** -2.0)
    grad = jax.grad(potential)
    for name, idx in blocks.items():
        if name == "theta":
            continue
        basis = jnp.eye(n, dtype=u.dtype)[idx]
        cols = jax.vmap(lambda v: jax.jvp(grad, (u,), (v,))[1])(basis)  # rows of the Hessian at those coordinates
        h[np.ix_(idx, idx)] = np.asarray(cols, np.float64)[:, idx]
    return 0.5 * (h + h.T)
