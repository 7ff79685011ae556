"""An ensemble of MAML solutions as a posterior: M members meta-trained together under ``vmap``.

Member ``m`` starts at its own initialisation ``θ_m⁰ = init(key_m)``, meta-trains
with MAML (Algorithm 1, :func:`~hbmeta.maml_update`) on its own subset of the
training tasks and with its own order of meta-batches. All members run in one
compiled loop (``jax.vmap`` over members inside one ``lax.scan``), not M
sequential trainings; with several devices the members are spread over them
(:func:`choose_member_devices`): each device trains its own members, nothing
passes between them, and the result is the one-device result (to float32's
last bits: a smaller batch may compile to differently ordered sums). The
result is a :class:`~hbmeta.Posterior` whose chain axis is the member (one
draw each), so the predictive is the equal-weight mixture
``(1/M) Σ_m N(f_φ̂_m(x), σ_m²)`` with ``φ̂_m = adapt(θ_m, S*)``.
Deep ensembles approximate the predictive of full-batch HMC on neural networks
about as well as stochastic-gradient MCMC and better than mean-field VI
(Izmailov et al. 2021); each member is one mode of the posterior.

The noise scale σ is fitted on tasks that the members did not train on
(``holdout="folds"``). The T training tasks are shuffled and cut into M
blocks of ``⌈T/M⌉`` (wrapping around when M does not divide T); member m
holds out blocks m and m + 1 (modulo M) and trains on the others, so every
task is new to at least two members. Their out-of-sample errors and their
spread fix the σ at which the equal-weight mixture's variance matches the
error of its mean on new tasks (:mod:`hbmeta.inference.holdout`); with the
task-level posterior (``spec.task_posterior``) each member's τ_m and σ_m are
fitted by type-II maximum likelihood on its held-out tasks and then scaled
the same way. A σ from the members' own training residuals would be biased
low: MAML overfits a finite task set (on the default sinusoid with
|T| = 100 the training RMS residual is 0.58 and the error on new tasks 0.98).
With ``holdout="none"`` every member trains on every task and σ_m is its own
training RMS residual (biased low; for comparison only).
"""

from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from hbmeta.base.jax_checks import as_key
from hbmeta.base.progress import run_in_chunks
from hbmeta.base.validate import check_choice, check_int, check_type
from hbmeta.inference.class_scale import CLASS_SCALES
from hbmeta.inference.common import check_optimizer, json_settings, make_posterior
from hbmeta.inference.distance_scale import DISTANCE_BINS, DistanceFit
from hbmeta.inference.holdout import holdout_noise, holdout_task_scale, member_noise
from hbmeta.inference.spread_power import SPREAD_POWERS
from hbmeta.maml.train import _DEFAULT_OPTIMIZER, init_maml, maml_update
from hbmeta.model.hierarchical import check_tasks
from hbmeta.model.posterior import Posterior
from hbmeta.model.spec import ModelSpec
from hbmeta.tasks.sharding import place_along, spread_over_devices

HOLDOUTS = ("folds", "none")


def holdout_blocks(key, num_tasks: int, num_members: int, holdout: str = "folds"):
    """``(train_index, holdout_index)`` of every member: ``(M, T − 2b)`` and ``(M, 2b)``, ``b = ⌈T/M⌉``.

    The tasks are permuted with ``key``; member m holds out the ``2b``
    consecutive tasks of the permutation starting at ``m·b`` (modulo T),
    blocks m and m + 1, and trains on the others, listed in increasing order:
    every task is held out by at least two members. With ``holdout="none"``
    every member trains on all tasks and holds out none (``(M, 0)``).

    Example:
        >>> import jax, numpy as np
        >>> tr, ho = holdout_blocks(jax.random.key(0), 12, 4)
        >>> tr.shape, ho.shape, np.bincount(ho.ravel()).tolist() == [2] * 12
        ((4, 6), (4, 6), True)
    """
    check_choice("holdout", holdout, HOLDOUTS)
    everything = np.arange(num_tasks)
    if holdout == "none":
        return np.tile(everything, (num_members, 1)), np.zeros((num_members, 0), dtype=int)
    b = -(-num_tasks // num_members)
    if 2 * b >= num_tasks:
        raise ValueError(f"num_members={num_members} for {num_tasks} tasks with holdout='folds'; expected "
                         f"enough members that each holds out fewer than all tasks (2·⌈T/M⌉ = {2 * b} here; "
                         "use more members, or holdout='none')")
    perm = np.asarray(jax.random.permutation(key, num_tasks))
    held = np.stack([perm[(m * b + np.arange(2 * b)) % num_tasks] for m in range(num_members)])
    train = np.stack([np.setdiff1d(everything, h) for h in held])
    return train, held


def ensemble_train_size(num_tasks: int, num_members: int, holdout: str = "folds") -> int:
    """The tasks each member trains on: ``T − 2⌈T/M⌉`` with ``holdout="folds"``, ``T`` with ``"none"``."""
    return num_tasks if holdout == "none" else num_tasks - 2 * -(-num_tasks // num_members)


def _member_inits(init, spec: ModelSpec, keys, num_members: int):
    """Initial θ of every member as a params pytree with a leading member axis."""
    if init is None:
        raise ValueError(
            "init is None; expected the network's initialiser (e.g. hb.mlp(...).init, a function key -> params) "
            f"or the {num_members} members' initial params stacked along a leading axis"
        )
    if callable(init):  # one call per member: the initialiser need not be vmappable
        params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[init(k) for k in keys])
    else:
        params = init
    structure = jax.tree.structure(spec.params)
    if jax.tree.structure(params) != structure:
        raise ValueError(
            f"init gives params with tree structure {jax.tree.structure(params)}; expected the spec's {structure}"
        )
    for leaf, template in zip(jax.tree.leaves(params), jax.tree.leaves(spec.params)):
        shape, want = tuple(jnp.shape(leaf)), tuple(jnp.shape(template))
        if callable(init) and shape[1:] != want:
            raise ValueError(f"init(key) gives a leaf of shape {shape[1:]}; expected {want} like spec.params")
        if shape != (num_members,) + want:
            raise ValueError(f"init has a leaf of shape {shape}; expected {(num_members,) + want} "
                             "(num_members, *the spec's leaf shape)")
    flat = jax.vmap(spec.ravel)(params)
    if not bool(jnp.all(jnp.isfinite(flat))):
        raise ValueError("init gives NaN or infinite parameters; expected finite values")
    return params


def choose_member_devices(num_members: int, member_devices="auto"):
    """``(mesh, reason)``: the devices the members train on (None: one device), and why, in words.

    ``"auto"`` spreads them over the most of this process's devices that
    divide ``num_members`` (all of them when ``num_members`` is a multiple of
    the device count), else keeps them on one device; see
    :func:`hbmeta.tasks.sharding.spread_over_devices` for the other values.

    Example:
        >>> choose_member_devices(4, None)
        (None, '4 members vectorised on one device, as asked')
    """
    return spread_over_devices(num_members, member_devices, noun="members", argument="member_devices")


def make_ensemble_loop(*, rule, optimizer, meta_batch_size: int):
    """A compiled ``loop(states, member_tasks, n) -> (states, losses (n, M))`` for M members at once.

    ``states`` is a :class:`~hbmeta.MAMLState` with a leading member axis and
    ``member_tasks`` a :class:`~hbmeta.TaskBatch` with leading ``(M, T_m)``
    axes. Each iteration, every member splits its own key, picks
    ``meta_batch_size`` distinct tasks of its own set (as
    :class:`~hbmeta.FixedTasks` does) and takes one
    :func:`~hbmeta.maml_update`: member m follows exactly the path of
    ``train_maml`` on its own tasks with its own key and start.
    """

    def one(state, tasks):
        key, sub = jax.random.split(state.key)
        batch = tasks.take(jax.random.permutation(sub, tasks.num_tasks)[:meta_batch_size])
        return maml_update(state._replace(key=key), batch, rule=rule, optimizer=optimizer)

    step = jax.vmap(one)

    @partial(jax.jit, static_argnums=2)
    def loop(states, member_tasks, num_iterations):
        def body(s, _):
            s, info = step(s, member_tasks)
            return s, info.loss

        return jax.lax.scan(body, states, None, length=num_iterations)

    return loop


def run_ensemble(
    spec,
    tasks,
    *,
    key,
    num_members: int = 8,
    init=None,
    num_iterations: int = 10000,
    meta_batch_size: int = 25,
    optimizer=None,
    holdout: str = "folds",
    tails: bool = True,
    spread_scale: bool = True,
    class_scale: bool = True,
    distance_scale: bool = True,
    chunk_size: int = 1000,
    member_devices="auto",
    checkpoint=None,
    progress: bool = True,
) -> Posterior:
    """An ensemble of ``num_members`` MAML solutions as a posterior (one chain per member).

    Args:
        spec: the :class:`~hbmeta.ModelSpec` (its rule is the inner adaptation).
        tasks: the training :class:`~hbmeta.TaskBatch`.
        key: PRNG key (or int seed): initialisations, held-out blocks and
            meta-batch orders all derive from it.
        num_members: M, the members.
        init: the network's initialiser ``init(key) -> params`` (each member
            gets its own key), or the M initial params stacked along a leading
            axis.
        num_iterations: meta-iterations per member.
        meta_batch_size: tasks per meta-iteration (at most ``T − 2⌈T/M⌉``
            with ``holdout="folds"``).
        optimizer: any optax optimiser for the outer step (default
            ``optax.adam(1e-3)``, as :func:`~hbmeta.train_maml`).
        holdout: ``"folds"``: member m does not train on two blocks of
            ``⌈T/M⌉`` tasks, and one σ for all members is fitted on the
            members' predictions for tasks they did not train on (module
            docstring); ``"none"``: all members train on all tasks, σ_m from
            each member's training residuals (biased low).
        tails: with the task-level posterior and an inferred σ, let each
            member's predictive be a variance-preserving scale mixture of K = 8
            Gaussians (a discrete Student-t) whose ν is chosen on the folds
            (:mod:`hbmeta.inference.holdout`), one draw per node; False keeps
            one Gaussian per member.
        spread_scale: with the task-level posterior and an inferred σ, scale
            each task's (τ², σ²) by h_j = ((s_j²/s̄² + κ)/(1 + κ))^p, a power of
            the spread s_j² of its support targets, p chosen on the folds (0:
            every task the same; :mod:`hbmeta.inference.spread_power`); False
            gives every task the same scale.
        class_scale: with the task-level posterior and a categorical
            likelihood, multiply every τ_m² by the c with the lowest Brier
            score of the M-member mixture estimated on the folds
            (:func:`~hbmeta.inference.class_scale.mixture_brier`), or, where
            the mixture's estimated reliability gap there is significant, by
            the c whose gap is nearest zero
            (:func:`~hbmeta.inference.class_scale.fit_class_scale`); False
            keeps each member's own τ_m.
        distance_scale: with the task-level posterior and an inferred σ,
            multiply each query point's predictive variance by a factor c(d) of
            its distance d to the task's nearest support point (a factor c_b
            for each of five quantile bins by the second-moment rule in the
            bin, on the folds: :mod:`hbmeta.inference.distance_scale`; linear
            in d between the bins' midpoints); False gives every point the
            same scale.
        chunk_size: iterations per compiled chunk (progress between chunks).
        member_devices: where the members train. ``"auto"`` (default): spread
            over this process's devices when there are several, each device
            training the same number of members (the most devices that divide
            ``num_members``; all of them when ``num_members`` is a multiple of
            the device count), else all on one device. None or 1: all on one
            device. An int ``n``, a list of devices or a Mesh with a
            ``"members"`` axis: spread over those devices (their count must
            divide ``num_members``). Members exchange nothing while they
            train, so the result is the one-device result (to float32's last
            bits); the choice
            and its reason are in ``settings["member_devices"]`` (the device
            count) and ``info["member_devices_reason"]``
            (:func:`choose_member_devices`); the progress line ends with it
            when the members are spread.
        checkpoint: a :class:`~hbmeta.base.checkpoint.Checkpointer`: every
            member's parameters, optimiser state and PRNG key are saved as it
            asks, and a later call with the same arguments continues from the
            file, ending bit for bit where an uninterrupted one ends (with the
            same ``member_devices``).
        progress: show progress on standard error.

    Returns:
        :class:`~hbmeta.Posterior` with method ``"ensemble"``,
        ``samples["theta"]`` of shape ``(M, 1, P)`` and, for regression with
        an inferred noise, ``samples["noise"]`` ``(M, 1)``; with the
        task-level posterior ``samples["tau"]`` ``(M, 1)``, or ``(M, K)``
        draws (θ_m repeated, τ and σ scaled by √u_k) when ``tails`` chose a
        finite ν, and ``samples["spread_power"]``, ``samples["spread_ref"]``
        (p and s̄², the same in every draw) when the folds chose a per-task
        factor h_j = ((s_j²/s̄² + κ)/(1 + κ))^p on (τ², σ²)
        (:mod:`hbmeta.model.support_spread`), and ``samples["distance_edges"]``
        ``(M, K, B − 1)``, ``samples["distance_scales"]`` ``(M, K, B)`` (the
        same in every draw) with ``distance_scale``
        (:mod:`hbmeta.model.support_distance`); ``info``:
        ``losses`` ``(M, num_iterations)`` meta-losses, ``train_index`` and
        ``holdout_index`` (each member's task indices), ``member_keys``
        (``jax.random.key_data`` of each member's training key: member m is
        exactly ``train_maml(init_m, tasks.take(train_index[m]),
        key=wrap_key_data(member_keys[m]), ...)``), ``holdout_noise``
        (the :class:`~hbmeta.inference.holdout.HoldoutNoise` or
        :class:`~hbmeta.inference.holdout.TaskScale` figures as a dict, or None),
        ``member_devices_reason`` and ``wall_time`` (seconds).

    Example:
        >>> import jax
        >>> import hbmeta as hb
        >>> net = hb.mlp((1, 8, 1)); rule = hb.GradientSteps(net.apply, step_size=0.01)
        >>> tasks = hb.Sinusoid(num_support=5, num_query=5).sample(jax.random.key(0), 12)
        >>> spec = hb.ModelSpec(rule, net.init(jax.random.key(1)))
        >>> post = hb.run_ensemble(spec, tasks, key=jax.random.key(2), num_members=4, init=net.init,
        ...                        num_iterations=20, meta_batch_size=4, progress=False)
        >>> post.samples["theta"].shape, post.samples["noise"].shape
        ((4, 1, 25), (4, 1))
    """
    key = as_key(key)
    check_type("spec", spec, ModelSpec)
    num_members = check_int("num_members", num_members)
    num_iterations = check_int("num_iterations", num_iterations)
    meta_batch_size = check_int("meta_batch_size", meta_batch_size)
    chunk_size = check_int("chunk_size", chunk_size)
    check_choice("holdout", holdout, HOLDOUTS)
    if not isinstance(tails, bool):
        raise ValueError(f"tails={tails!r}; expected True or False")
    if not isinstance(spread_scale, bool):
        raise ValueError(f"spread_scale={spread_scale!r}; expected True or False")
    if not isinstance(class_scale, bool):
        raise ValueError(f"class_scale={class_scale!r}; expected True or False")
    if not isinstance(distance_scale, bool):
        raise ValueError(f"distance_scale={distance_scale!r}; expected True or False")
    optimizer = check_optimizer(optimizer)
    check_tasks(spec, tasks)
    if spec.task_posterior is not None and (holdout != "folds" or spec.task_posterior.tau is not None):
        raise ValueError(
            f"spec.task_posterior is set with holdout={holdout!r} and tau={spec.task_posterior.tau!r}; expected "
            "holdout='folds' and TaskPosterior(tau=None): each member's τ and σ are fitted on its held-out tasks"
        )
    num_tasks = tasks.num_tasks
    k_init, k_fold, k_train = jax.random.split(key, 3)
    train_index, holdout_index = holdout_blocks(k_fold, num_tasks, num_members, holdout)
    if meta_batch_size > train_index.shape[1]:
        raise ValueError(
            f"meta_batch_size={meta_batch_size}; expected at most {train_index.shape[1]}, the tasks each member "
            f"trains on ({num_tasks} tasks less {holdout_index.shape[1]} held out)"
        )
    params = _member_inits(init, spec, jax.random.split(k_init, num_members), num_members)
    optimizer = _DEFAULT_OPTIMIZER if optimizer is None else optimizer
    mesh, placement = choose_member_devices(num_members, member_devices)
    num_devices = 1 if mesh is None else mesh.devices.size
    where = f", {num_members // num_devices} per device on {num_devices} devices" if num_devices > 1 else ""

    start = time.perf_counter()
    member_keys = jax.random.split(k_train, num_members)
    states = jax.vmap(lambda p, k: init_maml(p, optimizer=optimizer, step_size=spec.rule.step_size, key=k))(
        params, member_keys
    )
    member_tasks = place_along(jax.vmap(tasks.take)(jnp.asarray(train_index)), mesh)
    loop = make_ensemble_loop(rule=spec.rule, optimizer=optimizer, meta_batch_size=meta_batch_size)
    # the member axis split over the devices: jit partitions the vmap over members (GSPMD), each device trains its
    # own; a state restored from a checkpoint (on one device) is placed the same way before its first chunk
    states, losses = run_in_chunks(
        lambda s, n: loop(place_along(s, mesh), member_tasks, n),
        place_along(states, mesh),
        num_iterations,
        chunk_size=chunk_size,
        label=f"ensemble meta-training ({num_members} members)",
        progress=progress,
        describe=lambda chunk: f"meta-loss {float(np.mean(chunk[-min(50, len(chunk)):])):.4f} (mean of members)"
                               + where,
        checkpoint=checkpoint,
    )
    final = states.params if mesh is None else jax.device_get(states.params)  # the σ fit on one device, as unsplit
    flat = jax.vmap(spec.ravel)(final)
    draws = {"theta": flat[:, None, :]}
    fitted = None
    lik = spec.likelihood
    if spec.task_posterior is not None:
        fitted = holdout_task_scale(spec, flat, tasks, holdout_index, tails=tails,
                                    spread_powers=SPREAD_POWERS if spread_scale else (0.0,),
                                    class_scales=CLASS_SCALES if class_scale else (1.0,),
                                    distance_bins=DISTANCE_BINS if distance_scale else 1)
        root = jnp.sqrt(jnp.asarray(fitted.tail_nodes, flat.dtype))  # (K,): one draw per node of the scale mixture
        draws["theta"] = jnp.repeat(flat[:, None, :], root.shape[0], axis=1)
        draws["tau"] = jnp.asarray(fitted.tau, flat.dtype)[:, None] * root
        if lik.regression and lik.noise is None:
            draws["noise"] = jnp.asarray(fitted.noise, flat.dtype)[:, None] * root
        if fitted.spread_power > 0:  # the per-task factor h_j on (τ², σ²), applied by the predictive
            draws["spread_power"] = jnp.full(draws["tau"].shape, fitted.spread_power, flat.dtype)
            draws["spread_ref"] = jnp.full(draws["tau"].shape, fitted.spread_ref, flat.dtype)
        if fitted.distance_fit is not None:  # the per-point factor by distance to the support, applied by the predictive
            for name, value in (("distance_edges", fitted.distance_edges), ("distance_scales", fitted.distance_scales)):
                draws[name] = jnp.broadcast_to(jnp.asarray(value, flat.dtype), (*draws["tau"].shape, len(value)))
    elif lik.regression and lik.noise is None:
        if holdout == "folds":
            fitted = holdout_noise(spec, flat, tasks, holdout_index)
            noise = jnp.full((num_members,), fitted.noise, flat.dtype)
        else:
            noise = member_noise(spec, flat, tasks, train_index)
        draws["noise"] = noise[:, None]
    jax.block_until_ready(draws)
    wall = time.perf_counter() - start
    settings = json_settings(num_members=num_members, num_iterations=num_iterations,
                             meta_batch_size=meta_batch_size, optimizer="adam(1e-3)" if optimizer is
                             _DEFAULT_OPTIMIZER else optimizer, holdout=holdout, tails=tails, spread_scale=spread_scale,
                             class_scale=class_scale, distance_scale=distance_scale,
                             init=type(init).__name__, member_devices=num_devices)
    info = {
        "losses": np.asarray(losses).T,
        "member_keys": np.asarray(jax.random.key_data(member_keys)),
        "train_index": train_index,
        "holdout_index": holdout_index,
        "holdout_noise": None if fitted is None else {
            k: (np.asarray(v) if isinstance(v, np.ndarray) else
                {f: np.asarray(x) for f, x in v._asdict().items()} if isinstance(v, DistanceFit) else v)
            for k, v in fitted._asdict().items()},
        "member_devices_reason": placement,
        "wall_time": wall,
    }
    return make_posterior(spec, draws, method="ensemble", settings=settings, info=info)

