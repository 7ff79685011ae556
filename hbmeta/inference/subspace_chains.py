"""Markov chains in a subspace of θ: anchors, Laplace whitening and starting points for every chain.

Each chain c moves the coordinates ``idx`` of θ (:mod:`hbmeta.model.subspace`)
and holds the others at its anchor θ̂_c: the member of an ensemble it starts
from, or the one starting point of every chain. Before sampling, each distinct
anchor's subspace posterior gets a Laplace approximation: BFGS
(``jax.scipy.optimize``) to its mode ẑ_c, then the exact Hessian H_c of the
potential there (k + 1 or so coordinates, so this is cheap), eigenvalues
floored to keep it positive definite, and the subspace is whitened by it:

    Σ_c = (H_c⁻¹)_EE = L_c L_cᵀ,     θ_E = ẑ_c + L_c u,

so that the sampler's coordinates u are close to independent with unit scale
from the first transition: the dense mass matrix of each chain's own mode,
which NumPyro's warm-up then refines (one shared mass matrix could not fit
modes whose hidden layers differ). The chains start at the mode, and the other
latent sites (σ, and α or τ when inferred) get their Laplace variances as
their initial inverse mass.

Why the exact Hessian and not the generalized Gauss–Newton (GGN) matrix, which
is positive definite by construction: the query outputs depend on the last
layer through the inner gradient step too (the hidden layers' update is
proportional to the output weights), so the curvature has a large
residual-weighted second-order term. On the default sinusoid model the exact
Hessian in GGN-whitened coordinates had eigenvalues from −10 to 99, and NUTS
needed step sizes near 0.1; whitened by the Hessian at the mode it runs at
0.4–0.5 with about 15 leapfrog steps per draw.

Example:
    >>> import jax, numpy as np
    >>> import hbmeta as hb
    >>> from hbmeta.model.hierarchical import build_model
    >>> from hbmeta.model.subspace import subspace_indices
    >>> net = hb.mlp((1, 8, 1)); spec = hb.ModelSpec(hb.GradientSteps(net.apply), net.init(jax.random.key(0)))
    >>> tasks = hb.Sinusoid(num_support=5, num_query=5).sample(jax.random.key(1), 6)
    >>> idx = subspace_indices(spec, "last_layer")
    >>> sc = prepare(spec, tasks, build_model(spec, subspace=idx), net.init(jax.random.key(0)), 2, None, idx)
    >>> sc.whites.shape, sorted(sc.init_params), sc.inverse_mass.shape
    ((2, 9, 9), ['noise', 'theta_white'], (10,))
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.scipy.optimize import minimize
from numpyro.infer.util import potential_energy

from hbmeta.inference.common import init_values, latent_transforms
from hbmeta.model.posterior import Posterior
from hbmeta.model.subspace import embed


class SubspaceChains(NamedTuple):
    """Everything a sampler needs to run chains in a subspace.

    - ``idx``: the moving coordinates of θ, ``(k,)``.
    - ``anchors``: θ̂ of every chain, ``(chains, P)``.
    - ``whites``: ``L_c``, lower-triangular, ``(chains, k, k)``.
    - ``values``: constrained starting values of the first chain (NumPyro's ``init_to_value``).
    - ``init_params``: unconstrained starting values per chain (leading chain axis).
    - ``inverse_mass``: the initial diagonal inverse mass over NumPyro's flattened
      latent vector (sites in sorted order), ``(k + others,)``.
    """

    idx: np.ndarray
    anchors: jax.Array
    whites: jax.Array
    values: dict
    init_params: dict
    inverse_mass: np.ndarray


def _anchors_and_noise(spec, init, num_chains: int, modes):
    """θ̂ and the starting σ of every chain: its member's (``modes``) or the single start of ``init`` for all."""
    lik = spec.likelihood
    if modes is not None:
        theta = np.asarray(init.samples["theta"])[:, -1][modes]
        noise = np.asarray(init.noise())[:, -1][modes] if "noise" in init.samples else None
        others = init_values(spec, Posterior({k: v[:1] for k, v in init.samples.items()}, init.spec, init.method, {}), 0)
    else:
        others = init_values(spec, init, 0)
        if others is None or "theta" not in others:
            raise ValueError("subspace sampling with init=None; expected an init whose θ anchors the chains (the "
                             "members of an ensemble, a MAMLResult, a params pytree or a Posterior): the coordinates "
                             "outside the subspace are held at it")
        theta = np.repeat(np.asarray(others["theta"])[None], num_chains, axis=0)
        noise = np.full(num_chains, float(others["noise"])) if "noise" in others else None
    if lik.regression and lik.noise is not None:
        noise = np.full(num_chains, float(np.mean(lik.noise)))
    elif lik.regression and noise is None:
        noise = np.ones(num_chains)  # the start of σ's mode search when init has none
    others = {k: v for k, v in (others or {}).items() if k not in ("theta", "noise", "phi")}
    return theta, noise, others


def _laplace_all(model, tasks, anchors, starts: dict, unravel, maxiter: int = 200):
    """Mode and curvature of every distinct chain's subspace posterior, in one compiled, vectorised call.

    BFGS (``jax.scipy.optimize.minimize``) on NumPyro's potential in
    unconstrained space from each start (identity whitening), then its exact
    Hessian at the point found (the start where the search did not improve on
    it). Returns ``(u, H)`` with leading member axes.
    """
    k = len(starts["theta_white"][0])
    eye = jnp.eye(k)

    def fun(u, anchor):
        return potential_energy(model, (tasks, anchor, eye), {}, unravel(u))

    @jax.jit
    def run(u0, anchors):
        def one(u0, anchor):
            found = minimize(fun, u0, args=(anchor,), method="BFGS", options={"maxiter": maxiter})
            better = jnp.isfinite(found.fun) & (found.fun <= fun(u0, anchor))
            u = jnp.where(better, found.x, u0)
            return u, jax.hessian(fun)(u, anchor)

        return jax.vmap(one)(u0, anchors)

    u0 = jax.vmap(lambda d: ravel_pytree(d)[0])(starts)
    return run(u0, anchors)


def _positive_definite(h) -> np.ndarray:
    """``h`` symmetrised with its eigenvalues floored at 10⁻³ of the largest (float64)."""
    h = np.asarray(h, np.float64)
    vals, vecs = np.linalg.eigh(0.5 * (h + h.T))
    vals = np.maximum(vals, 1e-3 * max(float(vals.max()), 1e-12))
    return (vecs * vals) @ vecs.T


def prepare(spec, tasks, model, init, num_chains: int, modes, idx) -> SubspaceChains:
    """Anchors, whitening and starts of ``num_chains`` chains of ``model`` (:func:`~hbmeta.build_model` with ``idx``).

    ``modes`` labels the member each chain starts from (``init`` an ensemble's
    Posterior), or is None to start every chain at ``init``.
    """
    anchors, noise, others = _anchors_and_noise(spec, init, num_chains, modes)
    regression = spec.likelihood.regression
    inferred_noise = regression and spec.likelihood.noise is None
    k = len(idx)
    keys = [(np.asarray(anchors[c], np.float32).tobytes(), float(noise[c]) if regression else None)
            for c in range(num_chains)]
    first_of = {key: c for c, key in reversed(list(enumerate(keys)))}
    distinct = sorted(first_of.values())
    member_of = np.array([distinct.index(first_of[key]) for key in keys])

    start = dict(others)
    start["theta_white"] = jnp.zeros(k)
    if inferred_noise:
        start["noise"] = jnp.asarray(noise[0], jnp.float32)
    bound = partial(model, anchor=jnp.asarray(anchors[0]), white=jnp.eye(k))
    transforms = latent_transforms(bound, tasks)
    missing = sorted(set(transforms) - set(start))
    if missing:
        raise ValueError(f"init gives no values for the sites {missing}; expected an init with every latent site "
                         "of the model")
    u_template, unravel = ravel_pytree({n: transforms[n].inv(jnp.asarray(start[n], jnp.float32)) for n in transforms})
    starts = {n: jnp.stack([transforms[n].inv(jnp.asarray(
        noise[c] if n == "noise" else start[n], jnp.float32)) for c in distinct]) for n in transforms}
    u, hessians = _laplace_all(model, tasks, jnp.asarray(anchors[distinct], jnp.float32), starts, unravel)
    layout = {n: np.asarray(v).round().astype(int).ravel()
              for n, v in unravel(jnp.arange(u_template.shape[0], dtype=jnp.float32)).items()}
    z = layout["theta_white"]
    whites, centres, inverse_mass = [], [], None
    for m in range(len(distinct)):
        cov = np.linalg.inv(_positive_definite(hessians[m]))
        whites.append(np.linalg.cholesky(0.5 * (cov[np.ix_(z, z)] + cov[np.ix_(z, z)].T)).astype(np.float32))
        centre = np.array(anchors[distinct[m]], np.float32)
        centre[idx] += np.asarray(u[m])[z]  # the subspace mode: u = 0 there
        centres.append(centre)
        if inverse_mass is None:  # the other sites' inverse mass: their Laplace variances (first member's)
            inverse_mass = np.diag(cov).copy()
            inverse_mass[z] = 1.0
    anchors = jnp.asarray(np.stack(centres)[member_of])
    whites = jnp.asarray(np.stack(whites)[member_of])
    per_chain = {n: jnp.asarray(v)[member_of] for n, v in jax.vmap(unravel)(u).items()}
    per_chain["theta_white"] = jnp.zeros((num_chains, k))
    first = {n: transforms[n](v[0]) for n, v in per_chain.items()}
    return SubspaceChains(np.asarray(idx), anchors, whites, first, per_chain, inverse_mass)


def full_theta(chains: SubspaceChains, draws: dict) -> dict:
    """Draws with ``"theta_white"`` replaced by the full ``"theta"``: θ = θ̂_c, θ_E = θ̂_{c,E} + L_c u."""
    draws = dict(draws)
    u = jnp.asarray(draws.pop("theta_white"))  # (chains, draws, k)
    z = chains.anchors[:, None, chains.idx] + jnp.einsum("ckl,cdl->cdk", chains.whites, u)
    draws["theta"] = np.asarray(embed(chains.anchors[:, None, :], chains.idx, z))
    return draws
