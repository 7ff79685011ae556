"""Laplace approximation of the posterior over θ around its mode.

In the unconstrained space ``u`` of all latent sites (θ as is, ``log σ``,
``log α``, φ_j), with ``U(u) = −log p(u | tasks)`` (the potential, including
the log-Jacobian of the transforms):

    u* = argmin U(u)             (MAP, by an optax optimiser on the exact U)
    H  = ∇²U(u*)                  (Hessian by automatic differentiation)
    p(u | tasks) ≈ N(u*, H⁻¹)

Draws of u are pushed back through the transforms. For a Gaussian posterior
(linear-Gaussian tasks, fixed noise) the approximation is exact. If ``H`` is
not positive definite (a saddle point, a flat direction such as a network's
unused unit, or an optimiser that has not converged), there is no Gaussian to
draw from and :class:`numpy.linalg.LinAlgError` (a ``ValueError``) says so.
``curvature="ggn"`` replaces H by the generalized Gauss–Newton matrix
(:mod:`hbmeta.inference.ggn`), positive definite by construction, so the
approximation exists at any point of a ReLU network's posterior.
"""

from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from numpyro.infer import init_to_uniform, init_to_value
from numpyro.infer.util import initialize_model

from hbmeta.base.progress import run_in_chunks
from hbmeta.base.validate import check_choice
from hbmeta.inference.common import (
    as_key,
    check_int,
    check_optimizer,
    default_optimizer,
    init_values,
    json_settings,
    latent_transforms,
    make_posterior,
)
from hbmeta.inference.ggn import CURVATURES, check_ggn_spec, ggn_precision
from hbmeta.model.hierarchical import build_model, check_tasks
from hbmeta.model.posterior import Posterior
from hbmeta.tasks.sharding import check_divisible, resolve_mesh, shard_inputs


def minimize(fun, x0, *, optimizer, num_steps: int, chunk_size: int = 500, progress: bool = False, label="MAP",
             checkpoint=None):
    """Minimise ``fun`` from ``x0`` with an optax optimiser; NaN-safe. Returns ``(x, losses)``.

    The optimiser is called with ``value``, ``grad`` and ``value_fn`` extra
    arguments, so line-search methods (``optax.lbfgs``) work as well as
    first-order ones. A step that gives a non-finite value or point is
    rejected (the point stays where it was). With ``checkpoint`` (a
    :class:`~hbmeta.base.checkpoint.Checkpointer`) the search continues from
    its file and saves the point and optimiser state between chunks.
    """
    opt = optax.with_extra_args_support(optimizer)
    value_and_grad = jax.value_and_grad(fun)

    def step(carry, _):
        x, state = carry
        value, grad = value_and_grad(x)
        updates, new_state = opt.update(grad, state, x, value=value, grad=grad, value_fn=fun)
        new_x = optax.apply_updates(x, updates)
        ok = jnp.isfinite(value) & jnp.all(jnp.isfinite(new_x))
        x = jnp.where(ok, new_x, x)
        new_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_state, state)
        return (x, new_state), value

    @partial(jax.jit, static_argnums=1)
    def run(carry, n):
        return jax.lax.scan(step, carry, None, length=n)

    carry = (x0, opt.init(x0))
    carry, losses = run_in_chunks(run, carry, num_steps, chunk_size=chunk_size, label=label, progress=progress,
                                  describe=lambda chunk: f"loss {float(chunk[-1]):.4f}", checkpoint=checkpoint)
    return carry[0], losses


def hessian(fun, x, *, chunk_size: int = 128):
    """``∇²fun(x)`` by forward-over-reverse products, ``chunk_size`` columns at a time (bounded memory)."""
    grad = jax.grad(fun)
    n = x.shape[0]
    chunk = min(chunk_size, n)
    pad = (-n) % chunk

    @jax.jit
    def run(x):
        basis = jnp.concatenate([jnp.eye(n, dtype=x.dtype), jnp.zeros((pad, n), x.dtype)]).reshape(-1, chunk, n)
        cols = jax.lax.map(jax.vmap(lambda v: jax.jvp(grad, (x,), (v,))[1]), basis)
        return cols.reshape(-1, n)[:n]

    return run(x)


def laplace_cov_factor(hessian, *, rtol=None, grad_norm=None):
    """``L`` with ``L Lᵀ = H⁻¹`` from the eigendecomposition of symmetric ``H``.

    Raises :class:`numpy.linalg.LinAlgError` (a ``ValueError``) when ``H`` has
    non-finite entries or an eigenvalue ``≤ rtol · max|λ|`` (singular or not
    positive definite, up to the rounding of ``H``'s dtype: default
    ``rtol = 10 · eps``), naming the smallest eigenvalue, how many are below
    the threshold and, when given, the gradient norm at the point.
    """
    h = np.asarray(hessian, dtype=np.float64)
    if not np.all(np.isfinite(h)):
        raise np.linalg.LinAlgError(
            "the Hessian of the negative log posterior at the MAP has NaN or infinite entries; "
            "expected finite curvature (check the MAP run's losses for divergence)"
        )
    h = 0.5 * (h + h.T)
    eig, vec = np.linalg.eigh(h)
    rtol = 10 * np.finfo(np.asarray(hessian).dtype).eps if rtol is None else rtol
    threshold = rtol * max(float(np.max(np.abs(eig))), np.finfo(np.float64).tiny)
    if eig[0] <= threshold:
        kind = "singular" if abs(eig[0]) <= threshold else "not positive definite"
        grad = "" if grad_norm is None else f" The gradient norm there is {grad_norm:.3g}."
        raise np.linalg.LinAlgError(
            f"the Hessian of the negative log posterior at the MAP is {kind}: smallest eigenvalue "
            f"{eig[0]:.3g} (largest {eig[-1]:.3g}; {int(np.sum(eig <= threshold))} of {len(eig)} eigenvalues "
            f"≤ {threshold:.3g}); expected all eigenvalues > {threshold:.3g}.{grad} The MAP search may have "
            "stopped at a saddle point or before converging (raise num_steps, or start it elsewhere with "
            "init=), or the posterior is flat in some direction: use SVI or NUTS instead"
        )
    return vec / np.sqrt(eig), eig


def run_laplace(
    spec,
    tasks,
    *,
    key,
    num_steps: int = 2000,
    optimizer=None,
    num_draws: int = 1000,
    init=None,
    curvature: str = "hessian",
    devices=None,
    chunk_size: int = 500,
    checkpoint=None,
    progress: bool = True,
) -> Posterior:
    """Laplace approximation around the MAP: ``N(u*, H⁻¹)`` in unconstrained space.

    Args:
        spec, tasks: the model (:class:`~hbmeta.ModelSpec`) and training tasks.
        key: PRNG key (or int seed).
        num_steps: optimiser steps for the MAP.
        optimizer: any optax optimiser; default L-BFGS with a backtracking
            line search (the objective is deterministic, so a quasi-Newton
            method converges far faster than Adam).
        num_draws: draws from the Gaussian approximation.
        init: where the MAP search starts: a params pytree (θ), a
            :class:`~hbmeta.MAMLResult` or a :class:`~hbmeta.Posterior`.
        curvature: ``"hessian"`` (the exact Hessian of the potential) or
            ``"ggn"`` (the generalized Gauss–Newton matrix of the query
            likelihood through φ̂(θ) plus the prior precision, positive
            definite by construction; :mod:`hbmeta.inference.ggn`).
        devices: split the tasks of the potential over these devices (an
            int, a list of devices or a Mesh; :func:`hbmeta.tasks.sharding.resolve_mesh`).
        chunk_size: MAP-search steps per compiled chunk (progress and
            checkpoints come between chunks).
        checkpoint: a :class:`~hbmeta.base.checkpoint.Checkpointer` for the
            MAP search: continue from its file if there is one, save as it asks.
        progress: show progress of the MAP search.

    Returns:
        :class:`~hbmeta.Posterior` with ``samples["theta"]`` of shape
        ``(1, num_draws, P)``; ``info["map"]`` (the MAP θ, flat),
        ``info["map_sites"]`` (every site at the MAP), ``info["losses"]``
        (the potential per step), ``info["hessian_eigenvalues"]`` and
        ``info["grad_norm"]`` (the potential's gradient norm at the MAP).

    Raises:
        numpy.linalg.LinAlgError: a ``ValueError`` subclass, when the Hessian
            at the MAP is singular or not positive definite.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from hbmeta import GradientSteps, LinearGaussian, ModelSpec, NormalLikelihood, linear, run_laplace
        >>> spec = ModelSpec(GradientSteps(linear().apply, step_size=0.1), {"w": jnp.zeros(2)},
        ...                  likelihood=NormalLikelihood(noise=0.5))
        >>> tasks = LinearGaussian(dim=2).sample(jax.random.key(0), 10)
        >>> post = run_laplace(spec, tasks, key=jax.random.key(1), num_steps=50, num_draws=20, progress=False)
        >>> post.samples["theta"].shape, post.info["map"].shape
        ((1, 20, 2), (2,))
    """
    key = as_key(key)
    num_steps = check_int("num_steps", num_steps)
    num_draws = check_int("num_draws", num_draws)
    optimizer = check_optimizer(optimizer)
    check_choice("curvature", curvature, CURVATURES)
    check_tasks(spec, tasks)
    values = init_values(spec, init, tasks.num_tasks)
    if curvature == "ggn":
        check_ggn_spec(spec)
    mesh = resolve_mesh(devices)
    check_divisible("the number of tasks", tasks.num_tasks, mesh)

    model = shard_inputs(build_model(spec), mesh)
    k_init, k_draw = jax.random.split(key)
    strategy = init_to_uniform if values is None else init_to_value(values=values)
    start = time.perf_counter()
    info0 = initialize_model(k_init, model, model_args=(tasks,), init_strategy=strategy)
    u0, unravel = ravel_pytree(info0.param_info.z)
    potential = info0.potential_fn

    def fun(u):
        return potential(unravel(u))

    opt, opt_name = default_optimizer("laplace") if optimizer is None else (optimizer, optimizer)
    u_map, losses = minimize(fun, u0, optimizer=opt, num_steps=num_steps, progress=progress,
                             chunk_size=check_int("chunk_size", chunk_size), checkpoint=checkpoint)
    grad_norm = float(jnp.linalg.norm(jax.jit(jax.grad(fun))(u_map)))
    transforms = latent_transforms(model, tasks)

    def constrain(u):
        return {name: transforms[name](v) for name, v in unravel(u).items()}

    if curvature == "ggn":
        curv = ggn_precision(spec, tasks, potential=fun, u=u_map, unravel=unravel, sites=constrain(u_map))
    else:
        curv = hessian(fun, u_map)
    factor, eig = laplace_cov_factor(curv, grad_norm=grad_norm)
    z = jax.random.normal(k_draw, (num_draws, u0.shape[0]), dtype=u0.dtype)
    u_draws = u_map + z @ jnp.asarray(factor.T, dtype=u0.dtype)

    draws = jax.vmap(constrain)(u_draws)
    draws = jax.tree.map(lambda a: a[None], draws)
    map_sites = {k: (v[:, 0, :] if k == "phi" else v) for k, v in constrain(u_map).items()}
    jax.block_until_ready(draws)
    wall = time.perf_counter() - start
    settings = json_settings(
        num_steps=num_steps,
        optimizer=opt_name,
        num_draws=num_draws,
        init=None if init is None else type(init).__name__,
        curvature=curvature,
    )
    info = {
        "map": np.asarray(map_sites["theta"]),
        "map_sites": {k: np.asarray(v) for k, v in map_sites.items()},
        "losses": losses,
        "hessian_eigenvalues": eig,
        "grad_norm": grad_norm,
        "wall_time": wall,
    }
    return make_posterior(spec, draws, method="laplace", settings=settings, info=info)
