"""Posterior over θ by Stein variational gradient descent (NumPyro's Stein module).

A set of particles ``{θ_i}`` (with σ and α when inferred), moved along

    φ(x) = (1/n) Σ_i [ k(θ_i, x) ∇ log p(θ_i | tasks) + ∇_{θ_i} k(θ_i, x) ],

an attraction to high posterior density and a repulsion between particles
(RBF kernel ``k``, median-heuristic bandwidth): the inference behind BMAML
(Yoon et al. 2018). The particles are the draws: one chain, one draw per
particle. Particles move in unconstrained space.
"""

from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
from numpyro.contrib.einstein import SVGD, RBFKernel
from numpyro.distributions import biject_to
from numpyro.infer import init_to_uniform
from numpyro.optim import optax_to_numpyro

from hbmeta.base.progress import run_in_chunks
from hbmeta.base.validate import check_positive
from hbmeta.inference.common import (
    as_key,
    check_int,
    check_optimizer,
    default_optimizer,
    init_values,
    json_settings,
    make_posterior,
)
from hbmeta.model.hierarchical import build_model, check_tasks
from hbmeta.model.posterior import Posterior
from hbmeta.tasks.sharding import check_divisible, resolve_mesh, shard_inputs


def init_near(site=None, values=None, radius=0.1):
    """Initialise a site uniformly within ``radius`` of ``values[name]`` in unconstrained space.

    A NumPyro init strategy (sites not in ``values`` fall back to
    ``init_to_uniform``); gives each SVGD particle a different start near one point.
    """
    if site is None:
        return partial(init_near, values=values, radius=radius)
    if site["type"] != "sample" or site["is_observed"]:
        return None
    if site["name"] not in values:
        return init_to_uniform(site)
    transform = biject_to(site["fn"].support)
    centre = transform.inv(jnp.asarray(values[site["name"]]))
    rng_key = site["kwargs"].get("rng_key")
    noise = jax.random.uniform(rng_key, jnp.shape(centre), minval=-radius, maxval=radius, dtype=centre.dtype)
    return transform(centre + noise)


def run_svgd(
    spec,
    tasks,
    *,
    key,
    num_particles: int = 10,
    num_steps: int = 2000,
    optimizer=None,
    init=None,
    init_radius: float = 0.1,
    chunk_size: int = 500,
    devices=None,
    checkpoint=None,
    progress: bool = True,
) -> Posterior:
    """SVGD particles approximating the posterior over θ (and σ, α when inferred).

    Args:
        spec, tasks: the model (:class:`~hbmeta.ModelSpec`) and training tasks.
        key: PRNG key (or int seed).
        num_particles: the number of particles (the draws).
        num_steps: SVGD steps.
        optimizer: any optax optimiser applied to the Stein force; default
            ``optax.adagrad(0.1)`` (Adagrad is the usual choice for SVGD).
        init: start the particles uniformly within ``init_radius`` of this
            point (unconstrained space): a params pytree (θ), a
            :class:`~hbmeta.MAMLResult` or a :class:`~hbmeta.Posterior`.
            Default: uniform in (−2, 2).
        init_radius: the spread of the initial particles around ``init``.
        chunk_size: steps per compiled chunk; progress is shown between chunks.
        devices: split the tasks over these devices (an int, a list of
            devices or a Mesh; :func:`hbmeta.tasks.sharding.resolve_mesh`).
        checkpoint: a :class:`~hbmeta.base.checkpoint.Checkpointer`: continue
            from its file if there is one, save the particles and optimiser
            state as it asks (a resumed run equals an uninterrupted one bit for bit on CPU).
        progress: show progress between chunks.

    Returns:
        :class:`~hbmeta.Posterior` with ``samples["theta"]`` of shape
        ``(1, num_particles, P)``; ``info["losses"]`` is the norm of the Stein
        force per step.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from hbmeta import GradientSteps, LinearGaussian, ModelSpec, NormalLikelihood, linear, run_svgd
        >>> spec = ModelSpec(GradientSteps(linear().apply, step_size=0.1), {"w": jnp.zeros(2)},
        ...                  likelihood=NormalLikelihood(noise=0.5))
        >>> tasks = LinearGaussian(dim=2).sample(jax.random.key(0), 10)
        >>> post = run_svgd(spec, tasks, key=jax.random.key(1), num_particles=5, num_steps=20, progress=False)
        >>> post.samples["theta"].shape
        (1, 5, 2)
    """
    key = as_key(key)
    num_particles = check_int("num_particles", num_particles, minimum=2)
    num_steps = check_int("num_steps", num_steps)
    chunk_size = check_int("chunk_size", chunk_size)
    optimizer = check_optimizer(optimizer)
    check_positive("init_radius", init_radius)
    check_tasks(spec, tasks)
    values = init_values(spec, init, tasks.num_tasks)
    mesh = resolve_mesh(devices)
    check_divisible("the number of tasks", tasks.num_tasks, mesh)

    model = shard_inputs(build_model(spec), mesh)
    strategy = init_to_uniform if values is None else init_near(values=values, radius=float(init_radius))
    opt, opt_name = default_optimizer("svgd") if optimizer is None else (optimizer, optimizer)
    svgd = SVGD(
        model,
        optax_to_numpyro(opt),
        RBFKernel(),
        num_stein_particles=num_particles,
        guide_kwargs={"init_loc_fn": strategy},
    )
    start = time.perf_counter()
    state = svgd.init(key, tasks)

    @partial(jax.jit, static_argnums=1)
    def run(state, n):
        return jax.lax.scan(lambda s, _: svgd.update(s, tasks), state, None, length=n)

    state, losses = run_in_chunks(run, state, num_steps, chunk_size=chunk_size, label="SVGD", progress=progress,
                                  describe=lambda chunk: f"Stein force {float(chunk[-1]):.3g}",
                                  checkpoint=checkpoint)
    suffix = "_auto_loc"
    draws = {k[: -len(suffix)]: v[None] for k, v in svgd.get_params(state).items() if k.endswith(suffix)}
    jax.block_until_ready(draws)
    wall = time.perf_counter() - start
    settings = json_settings(
        num_particles=num_particles,
        num_steps=num_steps,
        optimizer=opt_name,
        init=None if init is None else type(init).__name__,
        init_radius=float(init_radius),
    )
    info = {"losses": losses, "wall_time": wall}
    return make_posterior(spec, draws, method="svgd", settings=settings, info=info)
