"""Microcanonical Langevin Monte Carlo (blackjax's MCLMC) from the members of an ensemble.

Chains start at the members of an ensemble (:func:`~hbmeta.run_ensemble`),
``chains_per_member`` per member: each member is one mode of the posterior
and its chains form a superchain that samples that mode (Sommer et al. 2024,
arXiv 2402.01484; MILE, ICLR 2025, arXiv 2502.06335). MCLMC (Robnik et al.
2023) moves with unit speed along an energy-conserving flow with partial
momentum refreshment, one gradient per step and no accept/reject; blackjax's
``mclmc_find_L_and_step_size`` tunes the step size (to a target energy
error per dimension) and the momentum decoherence length ``L`` from each
chain's start. The target is NumPyro's potential of :func:`~hbmeta.build_model`
in unconstrained space, so every site (θ, and σ when it is inferred) moves.

Modes are weighted equally, as in a deep ensemble: MCMC within one mode
cannot weigh it against another. The chains of one member have the same
label in ``settings["chain_modes"]``, which :func:`~hbmeta.diagnose` uses to
check R-hat within each mode and the stratified ESS of the mixture
(:mod:`hbmeta.diagnostics.modes`) instead of the plain R-hat across modes.

blackjax is an optional dependency (``pip install hbmeta[mclmc]``).
"""

from __future__ import annotations

import os
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer import init_to_value
from numpyro.infer.util import initialize_model

from hbmeta.base.checkpoint import Checkpointer
from hbmeta.base.jax_checks import as_key
from hbmeta.base.progress import run_in_chunks
from hbmeta.base.validate import check_int, check_positive, check_type
from hbmeta.inference.common import json_settings, latent_transforms, make_posterior
from hbmeta.model.hierarchical import build_model, check_tasks
from hbmeta.model.posterior import Posterior


def _blackjax():
    try:  # optional dependency, imported only when MCLMC is asked for
        import blackjax  # optional: the mclmc extra
    except ImportError as err:
        raise ImportError("run_mclmc needs blackjax: pip install 'hbmeta[mclmc]' (or pip install blackjax)") from err
    return blackjax


def _starts(spec, init: Posterior, chains_per_member: int):
    """Initial site values per chain: member m's θ (and σ) for chains ``m·k … m·k + k − 1``."""
    theta = np.asarray(init.samples["theta"])
    if theta.shape[-1] != spec.num_params:
        raise ValueError(f"init has θ of length {theta.shape[-1]}; expected {spec.num_params}, this spec's")
    members = theta[:, -1]  # the last draw of every chain (an ensemble has one)
    values = {"theta": np.repeat(members, chains_per_member, axis=0)}
    lik = spec.likelihood
    if lik.regression and lik.noise is None:
        noise = np.asarray(init.noise())[:, -1] if "noise" in init.samples else np.full(len(members), 1.0)
        values["noise"] = np.repeat(noise, chains_per_member, axis=0)
    labels = np.repeat(np.arange(len(members)), chains_per_member)
    return values, labels


def run_mclmc(
    spec,
    tasks,
    *,
    key,
    init=None,
    chains_per_member: int = 2,
    num_samples: int = 200,
    thinning: int = 10,
    num_tuning_steps: int = 2000,
    initial_step_size: float = 1e-3,
    initial_L: float = 1.0,
    chunk_size: int = 50,
    checkpoint=None,
    progress: bool = True,
) -> Posterior:
    """Sample the posterior over θ with MCLMC, ``chains_per_member`` chains from each ensemble member.

    Args:
        spec: the :class:`~hbmeta.ModelSpec` (gradient-step or task-level model).
        tasks: the training :class:`~hbmeta.TaskBatch`.
        key: PRNG key (or int seed).
        init: a :class:`~hbmeta.Posterior` whose chains are the starting
            modes, e.g. from :func:`~hbmeta.run_ensemble` (the last draw of
            every chain is used).
        chains_per_member: chains started at each member (a superchain).
        num_samples: kept draws per chain, after tuning.
        thinning: MCLMC steps (one gradient each) between kept draws.
        num_tuning_steps: steps of blackjax's ``mclmc_find_L_and_step_size``
            per chain (step size and L; without diagonal preconditioning,
            whose estimate collapsed on ReLU networks here).
        initial_step_size, initial_L: where the tuning starts (blackjax's
            default ``sqrt(dim)`` is far too large for a network's weights).
        chunk_size: kept draws per compiled chunk (progress between chunks).
        checkpoint: a :class:`~hbmeta.base.checkpoint.Checkpointer`: the tuned
            chains (state, step size and L) are saved beside it
            (``<name>-tuned.npz``) when tuning ends, and every chain's state,
            key and draws so far after every chunk of sampling. Called again
            with the same arguments and checkpoint, it continues from the last
            save (tuning, if done, is not repeated) and ends bit for bit where
            an uninterrupted run ends; at most one chunk (or the tuning) is lost.
        progress: show progress on standard error.

    Returns:
        :class:`~hbmeta.Posterior` (method ``"mclmc"``) with draws
        ``(M·chains_per_member, num_samples, …)``, ``sample_stats``
        ``energy_change``, ``settings["chain_modes"]`` (the member of every
        chain) and ``info``: ``step_size`` and ``L`` per chain,
        ``num_gradients``, ``wall_time``.

    Example:
        >>> import jax
        >>> import hbmeta as hb
        >>> net = hb.mlp((1, 8, 1)); spec = hb.ModelSpec(hb.GradientSteps(net.apply), net.init(jax.random.key(0)))
        >>> tasks = hb.Sinusoid(num_support=5, num_query=5).sample(jax.random.key(1), 12)
        >>> ens = hb.run_ensemble(spec, tasks, key=2, num_members=4, init=net.init, num_iterations=20,
        ...                       meta_batch_size=4, progress=False)
        >>> post = hb.run_mclmc(spec, tasks, key=3, init=ens, num_samples=5, thinning=2, num_tuning_steps=50,
        ...                     progress=False)
        >>> post.samples["theta"].shape, post.settings["chain_modes"]
        ((8, 5, 25), [0, 0, 1, 1, 2, 2, 3, 3])
    """
    blackjax = _blackjax()
    key = as_key(key)
    check_type("init", init, Posterior, hint=" (the ensemble whose members start the chains, e.g. run_ensemble's)")
    chains_per_member = check_int("chains_per_member", chains_per_member)
    num_samples = check_int("num_samples", num_samples, minimum=2)
    thinning = check_int("thinning", thinning)
    num_tuning_steps = check_int("num_tuning_steps", num_tuning_steps, minimum=10)
    chunk_size = check_int("chunk_size", chunk_size)
    step0 = check_positive("initial_step_size", initial_step_size)
    l0 = check_positive("initial_L", initial_L)
    check_tasks(spec, tasks)
    values, labels = _starts(spec, init, chains_per_member)
    num_chains = len(labels)

    model = build_model(spec)
    first = {k: jnp.asarray(v[0]) for k, v in values.items()}
    start = time.perf_counter()
    info0 = initialize_model(jax.random.key(0), model, model_args=(tasks,), init_strategy=init_to_value(values=first))
    _, unravel = ravel_pytree(info0.param_info.z)
    transforms = latent_transforms(model, tasks)
    u0 = jax.vmap(lambda site_values: ravel_pytree(
        {name: transforms[name].inv(site_values[name]) for name in info0.param_info.z})[0])(
        {k: jnp.asarray(v) for k, v in values.items()})
    potential = info0.potential_fn

    def logdensity(u):
        return -potential(unravel(u))

    dim = u0.shape[1]
    kernel = blackjax.mcmc.mclmc.build_kernel(integrator=blackjax.mcmc.integrators.isokinetic_mclachlan)
    params0 = blackjax.adaptation.mclmc_adaptation.MCLMCAdaptationState(
        jnp.asarray(l0, u0.dtype), jnp.asarray(step0, u0.dtype), jnp.ones((dim,), u0.dtype))
    k_init, k_tune, k_run = jax.random.split(key, 3)

    @jax.jit
    def tune(u, k_state, k_tune):
        state = blackjax.mcmc.mclmc.init(position=u, logdensity_fn=logdensity, rng_key=k_state)
        state, params, _ = blackjax.mclmc_find_L_and_step_size(
            mclmc_kernel=kernel, num_steps=num_tuning_steps, state=state, rng_key=k_tune, logdensity_fn=logdensity,
            diagonal_preconditioning=False, frac_tune3=0.0, params=params0)
        return state, params

    tune_args = (u0, jax.random.split(k_init, num_chains), jax.random.split(k_tune, num_chains))
    tuned_ck = None if checkpoint is None else Checkpointer(os.path.splitext(checkpoint.path)[0] + "-tuned.npz")
    restored = None
    if tuned_ck is not None:  # the tuned chains of an interrupted run, checked against this run's shapes
        like = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(jax.vmap(tune), *tune_args))
        restored = tuned_ck.restore(like)
    if restored is None:
        states, params = jax.vmap(tune)(*tune_args)
        if tuned_ck is not None:
            tuned_ck.maybe_save((states, params), 0, np.zeros(0, np.float32), final=True)
    else:
        (states, params), _, _ = restored

    def one_chain(state, params, chain_key, n):
        step = partial(kernel, logdensity_fn=logdensity, inverse_mass_matrix=params.inverse_mass_matrix,
                       L=params.L, step_size=params.step_size)

        def thin(s, k):
            s, info = step(rng_key=k, state=s)
            return s, info.energy_change

        def draw(s, k):
            s, de = jax.lax.scan(thin, s, jax.random.split(k, thinning))
            return s, (s.position, jnp.max(jnp.abs(de)))

        return jax.lax.scan(draw, state, jax.random.split(chain_key, n))

    @partial(jax.jit, static_argnums=1)
    def run(carry, n):
        """``n`` kept draws of every chain: values ``(n, chains, dim + 1)``, the position and |energy change|."""
        states, k = carry
        k, sub = jax.random.split(k)
        states, out = jax.vmap(lambda s, p, c: one_chain(s, p, c, n))(states, params, jax.random.split(sub, num_chains))
        values = jnp.concatenate([out[0], out[1][..., None].astype(out[0].dtype)], axis=-1)
        return (states, k), jnp.swapaxes(values, 0, 1)

    _, values = run_in_chunks(run, (states, k_run), num_samples, chunk_size=chunk_size,
                              label=f"MCLMC ({num_chains} chains from {num_chains // chains_per_member} members)",
                              progress=progress, checkpoint=checkpoint,
                              describe=lambda v: f"max |energy change| {float(np.max(v[..., -1])):.3g}")
    energy = values[..., -1]
    positions = jnp.swapaxes(jnp.asarray(values[..., :-1]), 0, 1)  # (chains, draws, dim)
    draws = jax.vmap(jax.vmap(lambda u: {n: transforms[n](v) for n, v in unravel(u).items()}))(positions)
    jax.block_until_ready(draws)
    wall = time.perf_counter() - start
    settings = json_settings(chains_per_member=chains_per_member, num_samples=num_samples, thinning=thinning,
                             num_tuning_steps=num_tuning_steps, initial_step_size=step0, initial_L=l0)
    settings["chain_modes"] = labels.tolist()
    info = {"step_size": np.asarray(params.step_size), "L": np.asarray(params.L), "wall_time": wall,
            "num_gradients": int(num_chains * (num_tuning_steps + num_samples * thinning))}
    return make_posterior(spec, draws, method="mclmc", settings=settings,
                          sample_stats={"energy_change": np.asarray(energy).T}, info=info)
