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
import numpy as np
from numpyro.infer import HMC, MCMC, NUTS, init_to_uniform, init_to_value

from hbmeta.inference.common import (
    as_key,
    check_choice,
    check_int,
    init_values,
    json_settings,
    make_posterior,
)
from hbmeta.model.hierarchical import build_model, check_tasks
from hbmeta.model.posterior import Posterior

KERNELS = ("nuts", "hmc")
CHAIN_METHODS = ("parallel", "vectorized", "sequential")
_EXTRA_FIELDS = ("diverging", "accept_prob", "adapt_state.step_size", "num_steps", "potential_energy")


def default_chain_method(num_chains: int) -> str:
    """``"parallel"`` (one chain per device) when there are enough devices, else ``"vectorized"``."""
    if num_chains == 1:
        return "sequential"
    return "parallel" if jax.local_device_count() >= num_chains else "vectorized"


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
    init=None,
    chain_method: str | None = None,
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
        init: start every chain here: a params pytree (θ), a
            :class:`~hbmeta.MAMLResult`, or a :class:`~hbmeta.Posterior`
            (its mean draw). Default: uniform in (−2, 2) in unconstrained space.
        chain_method: ``"parallel"`` (a device per chain), ``"vectorized"``
            or ``"sequential"``; default parallel when there are at least
            ``num_chains`` devices, else vectorized.
        progress: show NumPyro's progress bar.

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
    if chain_method is not None:
        check_choice("chain_method", chain_method, CHAIN_METHODS)
    if not 0.0 < float(target_accept_prob) < 1.0:
        raise ValueError(f"target_accept_prob={target_accept_prob!r}; expected a probability in (0, 1)")
    check_tasks(spec, tasks)
    values = init_values(spec, init, tasks.num_tasks)
    chain_method = default_chain_method(num_chains) if chain_method is None else chain_method

    model = build_model(spec)
    strategy = init_to_uniform if values is None else init_to_value(values=values)
    if kernel == "nuts":
        sampler = NUTS(
            model,
            target_accept_prob=target_accept_prob,
            dense_mass=dense_mass,
            max_tree_depth=max_tree_depth,
            init_strategy=strategy,
        )
    else:
        sampler = HMC(model, target_accept_prob=target_accept_prob, dense_mass=dense_mass, init_strategy=strategy)
    mcmc = MCMC(
        sampler,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=chain_method,
        progress_bar=progress,
    )
    start = time.perf_counter()
    mcmc.run(key, tasks, extra_fields=_EXTRA_FIELDS)
    draws = mcmc.get_samples(group_by_chain=True)
    jax.block_until_ready(draws)
    wall = time.perf_counter() - start
    extra = mcmc.get_extra_fields(group_by_chain=True)
    stats = {name.replace("adapt_state.", ""): extra[name] for name in _EXTRA_FIELDS}
    settings = json_settings(
        num_chains=num_chains,
        num_warmup=num_warmup,
        num_samples=num_samples,
        max_tree_depth=max_tree_depth,
        target_accept_prob=float(target_accept_prob),
        dense_mass=bool(dense_mass),
        kernel=kernel,
        chain_method=chain_method,
        init=None if init is None else type(init).__name__,
    )
    info = {"num_divergences": int(np.sum(np.asarray(stats["diverging"]))), "wall_time": wall}
    return make_posterior(spec, draws, method=kernel, settings=settings, sample_stats=stats, info=info)
