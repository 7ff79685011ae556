"""Posterior over θ by stochastic variational inference (NumPyro SVI, ELBO).

Fits a guide ``q_λ(θ, σ, α)`` by maximising the ELBO
``E_q[log p(θ, σ, α, tasks) − log q_λ(θ, σ, α)]`` with any optax optimiser,
then samples draws from the fitted guide. Guides:

- ``"mean_field"``: independent Normals per coordinate (``AutoNormal``). It
  under-estimates posterior variances when coordinates are correlated (its
  KL(q‖p) fit matches the conditional, not the marginal, precisions);
- ``"low_rank"``: ``N(μ, D + W Wᵀ)`` with ``W`` of ``rank`` columns;
- ``"full_rank"``: a full multivariate Normal;
- ``"map"``: a point mass, i.e. the MAP (MAML regularised by the prior).

Updates are NaN-safe (``stable_update``: a step that gives a non-finite loss
is skipped). With ``subsample_size`` the ELBO uses random task subsets scaled
by ``T/B``.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import SVI, Trace_ELBO, init_to_uniform, init_to_value
from numpyro.infer.autoguide import AutoDelta, AutoLowRankMultivariateNormal, AutoMultivariateNormal, AutoNormal

from hbmeta.adaptation.stability import NonFiniteError
from hbmeta.base.progress import run_in_chunks
from hbmeta.base.validate import check_positive
from hbmeta.inference.common import (
    as_key,
    check_choice,
    check_int,
    check_optimizer,
    default_optimizer,
    init_values,
    json_settings,
    make_posterior,
)
from hbmeta.model.hierarchical import build_model, check_tasks
from hbmeta.model.posterior import Posterior
from hbmeta.tasks.sharding import check_divisible, place_tasks, resolve_mesh, shard_inputs
from hbmeta.tasks.store import LAZY_TASKS

GUIDES = {
    "mean_field": AutoNormal,
    "low_rank": AutoLowRankMultivariateNormal,
    "full_rank": AutoMultivariateNormal,
    "map": AutoDelta,
}


class SVIRunResult(NamedTuple):
    """The fitted guide's ``params``, the final ``state`` (NumPyro's ``SVIState``) and the ``losses``."""

    params: dict
    state: Any
    losses: np.ndarray


def fit_svi(svi, key, tasks, *, num_steps: int, subsample_size=None, chunk_size=None, checkpoint=None,
            progress: bool = True, label: str = "SVI"):
    """``(state, losses)``: ``num_steps`` NaN-safe steps of NumPyro's ``svi.stable_update`` from ``svi.init``.

    The steps run in compiled chunks of ``chunk_size`` (a ``fori_loop`` whose
    trip count is an argument, so one compilation serves every chunk); between
    chunks the progress is shown and, with a ``checkpoint``, the state saved
    (:func:`~hbmeta.base.progress.run_in_chunks`), so a killed fit resumes
    where its last checkpoint left it and ends bit for bit where an
    uninterrupted one ends.
    """
    chunk = max(50, -(-num_steps // 20)) if chunk_size is None else check_int("chunk_size", chunk_size)
    chunk = min(chunk, num_steps)
    kwargs = {} if subsample_size is None else {"subsample_size": subsample_size}

    @jax.jit
    def steps(state, tasks, n):
        def body(i, carry):
            state, losses = carry
            state, loss = svi.stable_update(state, tasks, **kwargs)
            return state, losses.at[i].set(loss)

        return jax.lax.fori_loop(0, n, body, (state, jnp.full((chunk,), jnp.nan, jnp.float32)))

    def run(state, n):
        state, losses = steps(state, tasks, n)
        return state, np.asarray(losses)[:n]

    state = svi.init(key, tasks, **kwargs)
    return run_in_chunks(run, state, num_steps, chunk_size=chunk, label=label, progress=progress,
                         describe=lambda c: f"loss {float(np.nanmean(c)) if np.isfinite(c).any() else float('nan'):.4g}",
                         checkpoint=checkpoint)


def make_guide(model, guide: str, *, init_loc_fn, rank=None, init_scale=0.1):
    """The NumPyro autoguide named ``guide`` for ``model``."""
    if guide == "map":
        return AutoDelta(model, init_loc_fn=init_loc_fn)
    if guide == "low_rank":
        return AutoLowRankMultivariateNormal(model, init_loc_fn=init_loc_fn, init_scale=init_scale, rank=rank)
    return GUIDES[guide](model, init_loc_fn=init_loc_fn, init_scale=init_scale)


def run_svi(
    spec,
    tasks,
    *,
    key,
    guide: str = "mean_field",
    rank: int | None = None,
    optimizer=None,
    num_steps: int = 2000,
    num_draws: int = 1000,
    init=None,
    subsample_size: int | None = None,
    num_particles: int = 1,
    init_scale: float = 0.1,
    devices=None,
    chunk_size: int | None = None,
    checkpoint=None,
    progress: bool = True,
) -> Posterior:
    """Fit a variational posterior over θ (and σ, α when inferred) and draw from it.

    Args:
        spec: the :class:`~hbmeta.ModelSpec`.
        tasks: the training :class:`~hbmeta.TaskBatch`, or a
            :class:`~hbmeta.GeneratedTasks` or :class:`~hbmeta.StoredTasks` (with
            ``subsample_size``: each step generates, or reads from disk, the tasks
            it scores, so neither memory nor the time per step grow with T).
        key: PRNG key (or int seed).
        guide: ``"mean_field"``, ``"low_rank"``, ``"full_rank"`` or ``"map"``.
        rank: the low-rank guide's rank (default NumPyro's, ≈ √P); only
            with ``guide="low_rank"``.
        optimizer: any optax optimiser; default ``optax.adam(1e-2)``.
        num_steps: optimisation steps.
        num_draws: draws from the fitted guide (the ``"map"`` guide, a point
            mass, gives a single draw).
        init: the guide's initial location: a params pytree (θ), a
            :class:`~hbmeta.MAMLResult` or a :class:`~hbmeta.Posterior`.
        subsample_size: tasks per ELBO estimate (None: all tasks).
        num_particles: Monte Carlo samples per ELBO estimate.
        init_scale: the guide's initial standard deviations (not for ``"map"``).
        devices: split the tasks over these devices (an int, a list of
            devices or a Mesh; :func:`hbmeta.tasks.sharding.resolve_mesh`): each
            ELBO step computes every device's share of the tasks there.
        chunk_size: optimisation steps per compiled call (progress and
            checkpoints come between calls; default ``num_steps / 20``, at least 50).
        checkpoint: a :class:`~hbmeta.base.checkpoint.Checkpointer`: continue
            from its file if there is one, save the optimiser state as it asks;
            a resumed fit equals an uninterrupted one bit for bit on CPU.
        progress: show progress (a line about every tenth of the steps).

    Returns:
        :class:`~hbmeta.Posterior` with ``samples["theta"]`` of shape
        ``(1, num_draws, P)``; ``info["losses"]`` is the ``(num_steps,)``
        negative-ELBO history, ``info["params"]`` the fitted guide's params and
        ``info["skipped_steps"]`` the number of steps skipped because their
        loss or gradient was not finite (their loss is the non-finite value).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from hbmeta import GradientSteps, LinearGaussian, ModelSpec, NormalLikelihood, linear, run_svi
        >>> spec = ModelSpec(GradientSteps(linear().apply, step_size=0.1), {"w": jnp.zeros(2)},
        ...                  likelihood=NormalLikelihood(noise=0.5))
        >>> tasks = LinearGaussian(dim=2).sample(jax.random.key(0), 10)
        >>> post = run_svi(spec, tasks, key=jax.random.key(1), guide="full_rank", num_steps=100,
        ...                num_draws=50, progress=False)
        >>> post.samples["theta"].shape, post.info["losses"].shape
        ((1, 50, 2), (100,))
    """
    key = as_key(key)
    check_choice("guide", guide, GUIDES)
    num_steps = check_int("num_steps", num_steps)
    num_draws = check_int("num_draws", num_draws)
    num_particles = check_int("num_particles", num_particles)
    if rank is not None:
        if guide != "low_rank":
            raise ValueError(f"rank={rank!r} with guide={guide!r}; expected rank only with guide='low_rank'")
        rank = check_int("rank", rank)
    check_positive("init_scale", init_scale)
    optimizer = check_optimizer(optimizer)
    check_tasks(spec, tasks, subsample_size=subsample_size, generated=True)
    generated = isinstance(tasks, LAZY_TASKS)
    if generated and devices not in (None, 1):
        raise ValueError(f"devices={devices!r} with {type(tasks).__name__}; expected devices=None (such tasks "
                         "are made where the step runs; materialise them to split them over devices)")
    if subsample_size is not None and spec.explicit_tau is not None and guide in ("low_rank", "full_rank"):
        raise ValueError(
            f"subsample_size={subsample_size} with guide={guide!r} in the explicit variant; expected "
            "guide='mean_field' or 'map': a joint guide cannot subsample the per-task φ_j"
        )
    values = init_values(spec, init, tasks.num_tasks)
    mesh = resolve_mesh(devices)
    check_divisible("the number of tasks", tasks.num_tasks, mesh)
    if not generated:
        tasks = place_tasks(tasks, mesh)

    model = shard_inputs(build_model(spec), mesh)
    strategy = init_to_uniform if values is None else init_to_value(values=values)
    auto = make_guide(model, guide, init_loc_fn=strategy, rank=rank, init_scale=float(init_scale))
    if optimizer is None:
        optimizer, optimizer_name = default_optimizer("svi")
    else:
        optimizer_name = type(optimizer).__name__
    svi = SVI(model, auto, optimizer, loss=Trace_ELBO(num_particles=num_particles))
    k_fit, k_draw = jax.random.split(key)
    start = time.perf_counter()
    state, losses = fit_svi(svi, k_fit, tasks, num_steps=num_steps, subsample_size=subsample_size,
                            chunk_size=chunk_size, checkpoint=checkpoint, progress=progress)
    result = SVIRunResult(svi.get_params(state), state, losses)
    n = 1 if guide == "map" else num_draws
    skipped = int((~np.isfinite(result.losses)).sum())
    try:
        draws = auto.sample_posterior(k_draw, result.params, tasks, subsample_size=subsample_size, sample_shape=(n,))
    except ValueError as err:  # NumPyro's argument check: a scale that under- or overflowed
        raise NonFiniteError(
            f"SVI diverged: the fitted guide is not a distribution ({err}); {skipped} of {num_steps} steps were "
            "skipped as not finite. Lower the optimiser's learning rate (inference.svi.learning_rate)"
        ) from err
    draws = jax.tree.map(lambda a: a[None], draws)
    jax.block_until_ready(draws)
    wall = time.perf_counter() - start
    settings = json_settings(
        guide=guide,
        rank=rank,
        optimizer=optimizer_name,
        num_steps=num_steps,
        num_draws=n,
        subsample_size=subsample_size,
        num_particles=num_particles,
        init_scale=float(init_scale),
        devices=1 if mesh is None else int(mesh.devices.size),
        init=None if init is None else type(init).__name__,
    )
    info = {
        "losses": np.asarray(result.losses),
        "skipped_steps": skipped,
        "params": {k: np.asarray(v) for k, v in result.params.items()},
        "wall_time": wall,
    }
    return make_posterior(spec, draws, method="svi", settings=settings, info=info)
