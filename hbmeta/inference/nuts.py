"""Posterior over θ by Hamiltonian Monte Carlo: NUTS or static HMC (NumPyro MCMC).

Samples ``p(θ, σ, α | tasks) ∝ p(θ) p(σ) p(α) Π_j p(Q_j | φ̂_j(θ, α), σ)``
with the model of :func:`~hbmeta.build_model`. The potential's gradient goes
through the inner gradient steps (second order). A Bayesian neural network
started at random often fails or diverges: start the chains at a point
estimate (``init=`` a MAML θ or an SVI/Laplace posterior).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import HMC, NUTS, init_to_uniform, init_to_value

from hbmeta.inference.chains import CHAIN_METHODS, sample_chains
from hbmeta.inference.common import (
    as_key,
    check_choice,
    check_int,
    init_values,
    json_settings,
    latent_transforms,
    make_posterior,
)
from hbmeta.inference.subspace_chains import full_theta, prepare
from hbmeta.model.hierarchical import build_model, check_tasks
from hbmeta.model.posterior import Posterior
from hbmeta.model.subspace import describe, subspace_indices
from hbmeta.tasks.sharding import check_divisible, place_tasks, resolve_mesh, shard_inputs

KERNELS = ("nuts", "hmc")


def default_chain_method(num_chains: int) -> str:
    """``"parallel"`` (one chain per device) when there are enough devices, else ``"vectorized"``."""
    if num_chains == 1:
        return "sequential"
    return "parallel" if jax.local_device_count() >= num_chains else "vectorized"


def choose_chain_method(num_chains: int, chain_method: str | None = None, *, task_devices: int = 1):
    """``(chain_method, reason)``: how the chains run, and why, in words for the user.

    With the tasks split over ``task_devices`` > 1 devices the devices are
    busy with the tasks, so chains are vectorised (all chains on every
    device's share of the tasks); otherwise :func:`default_chain_method`.

    Example:
        >>> choose_chain_method(4, task_devices=2)
        ('vectorized', '4 chains vectorised; the tasks are split over 2 devices')
    """
    n = jax.local_device_count()
    if chain_method is not None:
        if chain_method == "parallel" and task_devices > 1:
            raise ValueError(f"chain_method='parallel' with the tasks split over {task_devices} devices; expected "
                             "'vectorized' (or devices=None to give each chain a device)")
        return chain_method, f"{num_chains} chain(s) {chain_method}, as asked"
    if task_devices > 1:
        return "vectorized", f"{num_chains} chains vectorised; the tasks are split over {task_devices} devices"
    method = default_chain_method(num_chains)
    if method == "sequential":
        return method, "one chain"
    if method == "parallel":
        return method, f"{num_chains} chains in parallel, one per device ({n} devices)"
    return method, f"{num_chains} chains vectorised on one device (only {n} device(s) for {num_chains} chains)"


def _chain_modes(num_members: int, num_chains: int) -> np.ndarray:
    """Chain c starts at member ``c // (num_chains / num_members)``: ``(num_chains,)`` labels."""
    if num_chains % num_members:
        raise ValueError(f"num_chains={num_chains} with an init of {num_members} chains (ensemble members); expected "
                         f"a multiple of {num_members}, the same number of chains from every member")
    return np.repeat(np.arange(num_members), num_chains // num_members)


def _member_starts(model, tasks, spec, init: Posterior, modes):
    """Unconstrained initial values per chain: θ (and σ) of the member each chain starts from."""
    transforms = latent_transforms(model, tasks)
    values = {"theta": np.asarray(init.samples["theta"])[:, -1]}
    if "noise" in transforms:
        values["noise"] = np.asarray(init.noise())[:, -1]
    missing = sorted(set(transforms) - set(values))
    if missing:
        raise ValueError(f"init gives no values for the sites {missing}; expected an init with every latent site "
                         "of the model (or a single-chain init)")
    return {name: transforms[name].inv(jnp.asarray(v[modes])) for name, v in values.items()}


def run_nuts(
    spec,
    tasks,
    *,
    key,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 500,
    max_tree_depth: int = 8,
    target_accept_prob: float = 0.8,
    dense_mass: bool = False,
    kernel: str = "nuts",
    subspace="all",
    init=None,
    chain_method: str | None = None,
    devices=None,
    chunk_size: int | None = None,
    checkpoint=None,
    progress: bool = True,
) -> Posterior:
    """Sample the posterior over θ (and σ, α when inferred) with NUTS or HMC.

    Args:
        spec: the :class:`~hbmeta.ModelSpec`.
        tasks: the training :class:`~hbmeta.TaskBatch`.
        key: PRNG key (or int seed).
        num_chains, num_warmup, num_samples: chains, warm-up (step size and
            mass matrix adaptation) and kept draws per chain.
        max_tree_depth: NUTS's cap on the trajectory, ``2^depth`` leapfrog
            steps (ignored by ``kernel="hmc"``).
        target_accept_prob: the step-size adaptation's target.
        dense_mass: adapt a dense mass matrix instead of a diagonal one.
        kernel: ``"nuts"`` or ``"hmc"`` (static trajectory length 2π).
        subspace: ``"all"`` samples every coordinate of θ; ``"last_layer"``
            (or a pytree of booleans shaped like the params) samples only
            those coordinates, the others held at the θ each chain starts from
            (subspace inference, :mod:`hbmeta.model.subspace`): with an
            ensemble as ``init``, every member's chains sample the posterior of
            its last layer given its hidden layers, and the draws are the
            equal-weight mixture over members. ``samples["theta"]`` is the full
            θ either way.
        init: start every chain here: a params pytree (θ), a
            :class:`~hbmeta.MAMLResult`, or a one-chain
            :class:`~hbmeta.Posterior` (its mean draw). A Posterior with C > 1
            chains (an ensemble's members) starts ``num_chains / C`` chains
            at the last draw of each of its chains (superchains; the labels
            are ``settings["chain_modes"]``, for per-mode diagnostics).
            Default: uniform in (−2, 2) in unconstrained space.
        chain_method: ``"parallel"`` (a device per chain), ``"vectorized"``
            or ``"sequential"``; default parallel when there are at least
            ``num_chains`` devices, else vectorized (:func:`choose_chain_method`;
            the choice and its reason are in ``settings["chain_method"]`` and
            ``info["chain_method_reason"]``).
        devices: split the tasks over these devices (an int, a list of
            devices or a Mesh; see :func:`hbmeta.tasks.sharding.resolve_mesh`):
            the model's log density and its gradient are computed on every
            device's share of the tasks; the chains are then vectorised.
        chunk_size: transitions per compiled chunk (default: about a
            twentieth of warm-up plus sampling); progress is shown and a
            checkpoint saved between chunks.
        checkpoint: a :class:`~hbmeta.base.checkpoint.Checkpointer`: the
            chains' full state (position, step size, mass matrix, warm-up
            adaptation, PRNG keys) and the draws so far are saved as it asks,
            warm-up included, and a later call with the same arguments
            continues from the file, ending bit for bit where an uninterrupted
            run ends (:func:`sample_chains`).
        progress: show progress (transitions done, divergences, step size).

    Returns:
        :class:`~hbmeta.Posterior` with ``samples["theta"]`` of shape
        ``(num_chains, num_samples, P)`` and ``sample_stats`` (``diverging``,
        ``accept_prob``, ``step_size``, ``num_steps``, ``potential_energy``)
        of shape ``(num_chains, num_samples)``; ``info["num_divergences"]``,
        ``info["wall_time"]`` (seconds).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from hbmeta import GradientSteps, LinearGaussian, ModelSpec, NormalLikelihood, linear, run_nuts
        >>> spec = ModelSpec(GradientSteps(linear().apply, step_size=0.1), {"w": jnp.zeros(2)},
        ...                  likelihood=NormalLikelihood(noise=0.5))
        >>> tasks = LinearGaussian(dim=2).sample(jax.random.key(0), 10)
        >>> post = run_nuts(spec, tasks, key=jax.random.key(1), num_chains=1, num_warmup=50,
        ...                 num_samples=20, progress=False)
        >>> post.samples["theta"].shape, post.sample_stats["diverging"].shape
        ((1, 20, 2), (1, 20))
    """
    key = as_key(key)
    num_chains = check_int("num_chains", num_chains)
    num_warmup = check_int("num_warmup", num_warmup, minimum=0)
    num_samples = check_int("num_samples", num_samples)
    max_tree_depth = check_int("max_tree_depth", max_tree_depth)
    check_choice("kernel", kernel, KERNELS)
    idx = subspace_indices(spec, subspace)
    if chain_method is not None:
        check_choice("chain_method", chain_method, CHAIN_METHODS)
    if not 0.0 < float(target_accept_prob) < 1.0:
        raise ValueError(f"target_accept_prob={target_accept_prob!r}; expected a probability in (0, 1)")
    check_tasks(spec, tasks)
    mesh = resolve_mesh(devices)
    task_devices = 1 if mesh is None else mesh.devices.size
    check_divisible("the number of tasks", tasks.num_tasks, mesh)
    modes = None
    if isinstance(init, Posterior) and init.num_chains > 1:  # one superchain per chain of init (ensemble members)
        modes = _chain_modes(init.num_chains, num_chains)
        values = init_values(spec, Posterior({k: v[:1] for k, v in init.samples.items()}, init.spec, init.method, {}),
                             tasks.num_tasks)
    else:
        values = init_values(spec, init, tasks.num_tasks)
    chain_method, reason = choose_chain_method(num_chains, chain_method, task_devices=task_devices)
    tasks = place_tasks(tasks, mesh)

    model = shard_inputs(build_model(spec, subspace=idx), mesh)
    start = time.perf_counter()
    chains = None
    if idx is not None:  # anchors, Laplace whitening and starting points of every chain (inference.subspace_chains)
        chains = prepare(spec, tasks, model, init, num_chains, modes, idx)
        values = chains.values
    strategy = init_to_uniform if values is None else init_to_value(values=values)
    mass = {} if chains is None else {"inverse_mass_matrix": jnp.asarray(chains.inverse_mass, jnp.float32)}
    if kernel == "nuts":
        sampler = NUTS(
            model,
            target_accept_prob=target_accept_prob,
            dense_mass=dense_mass,
            max_tree_depth=max_tree_depth,
            init_strategy=strategy,
            **mass,
        )
    else:
        sampler = HMC(model, target_accept_prob=target_accept_prob, dense_mass=dense_mass, init_strategy=strategy,
                      **mass)
    if chains is not None:
        init_params = chains.init_params
    else:
        init_params = None if modes is None else _member_starts(model, tasks, spec, init, modes)
    label = kernel.upper() if idx is None else f"{kernel.upper()} in {describe(idx, spec.num_params, subspace)}"
    draws, stats = sample_chains(sampler, tasks, key=key, num_chains=num_chains, num_warmup=num_warmup,
                                 num_samples=num_samples, chain_method=chain_method, init_params=init_params,
                                 chain_args=() if chains is None else (chains.anchors, chains.whites),
                                 chunk_size=chunk_size, checkpoint=checkpoint, progress=progress, label=label)
    if chains is not None:  # the full θ of every draw: the chain's anchor with the subspace's entries moved
        draws = full_theta(chains, draws)
    wall = time.perf_counter() - start
    settings = json_settings(
        num_chains=num_chains,
        num_warmup=num_warmup,
        num_samples=num_samples,
        max_tree_depth=max_tree_depth,
        target_accept_prob=float(target_accept_prob),
        dense_mass=bool(dense_mass),
        kernel=kernel,
        subspace=subspace if isinstance(subspace, str) else "mask",
        chain_method=chain_method,
        devices=task_devices,
        init=None if init is None else type(init).__name__,
    )
    if modes is not None:
        settings["chain_modes"] = modes.tolist()
    info = {"num_divergences": int(np.sum(np.asarray(stats["diverging"]))), "wall_time": wall,
            "chain_method_reason": reason, "subspace_size": spec.num_params if idx is None else int(len(idx))}
    return make_posterior(spec, draws, method=kernel, settings=settings, sample_stats=stats, info=info)
