"""MAML meta-training (Finn et al. 2017, Algorithm 1) as pure functions plus a driver.

The meta-objective over a meta-batch of tasks is

    ℒ(θ) = (1/B) Σ_j L_j(Q_j; φ̂_j(θ)),   φ̂_j(θ) = adapt(θ, S_j),

and each meta-iteration takes one optax step on ``∇_θ ℒ`` (second order
through the inner step unless the rule is first-order). With Meta-SGD the
step sizes α are meta-learned too.
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hbmeta.adaptation.stability import NonFiniteError
from hbmeta.adaptation.steps import GradientSteps
from hbmeta.base.progress import run_in_chunks
from hbmeta.base.validate import check_positive_int
from hbmeta.tasks.batch import TaskBatch
from hbmeta.tasks.families import FixedTasks
from hbmeta.tasks.sharding import check_divisible, constrain_tasks, resolve_mesh

# optax ≥ 0.2.5 has optax.tree.norm and deprecates optax.global_norm.
_tree_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm


class MAMLState(NamedTuple):
    """Carried state of meta-training.

    - ``params``: θ, the meta-parameters (pytree).
    - ``step_size``: α, scalar or pytree like θ (learned when Meta-SGD is on).
    - ``opt_state``: the optax optimiser state.
    - ``key``: PRNG key for sampling meta-batches.
    - ``iteration``: int32 scalar, meta-iterations done.
    """

    params: Any
    step_size: Any
    opt_state: Any
    key: jax.Array
    iteration: jax.Array


class MAMLInfo(NamedTuple):
    """Per-iteration information: ``loss`` (meta-loss before the step) and ``grad_norm``."""

    loss: jax.Array
    grad_norm: jax.Array


class MAMLResult(NamedTuple):
    """What :func:`train_maml` returns.

    - ``params``: the meta-trained θ.
    - ``step_size``: α (meta-learned if requested, else as given).
    - ``losses``: ``(num_iterations,)`` numpy array, meta-loss per iteration.
    - ``state``: the final :class:`MAMLState`, to resume training.
    """

    params: Any
    step_size: Any
    losses: np.ndarray
    state: MAMLState


def meta_loss(params, tasks: TaskBatch, *, rule: GradientSteps, step_size=None):
    """``(1/T) Σ_j L_j(Q_j; φ̂_j(θ))``: the MAML objective on a task batch.

    Example:
        >>> import jax
        >>> from hbmeta import GradientSteps, Sinusoid, meta_loss, mlp
        >>> net = mlp((1, 40, 40, 1)); theta = net.init(jax.random.key(0))
        >>> tasks = Sinusoid().sample(jax.random.key(1), 25)
        >>> float(meta_loss(theta, tasks, rule=GradientSteps(net.apply))) > 0
        True
    """
    return jnp.mean(rule.query_losses(params, tasks, step_size))


def _trainable(state: MAMLState, learn_step_size: bool):
    return (state.params, state.step_size) if learn_step_size else state.params


def init_maml(params, *, optimizer, step_size, key, learn_step_size: bool = False) -> MAMLState:
    """The initial :class:`MAMLState` for meta-training ``params`` with ``optimizer``."""
    step_size = jax.tree.map(jnp.asarray, step_size)
    trainable = (params, step_size) if learn_step_size else params
    return MAMLState(params, step_size, optimizer.init(trainable), key, jnp.zeros((), jnp.int32))


def maml_update(state: MAMLState, tasks: TaskBatch, *, rule, optimizer, learn_step_size=False):
    """One meta-iteration on a given meta-batch: returns ``(state, MAMLInfo)``. Pure."""

    def objective(trainable):
        params, step_size = trainable if learn_step_size else (trainable, state.step_size)
        return meta_loss(params, tasks, rule=rule, step_size=step_size)

    trainable = _trainable(state, learn_step_size)
    loss, grads = jax.value_and_grad(objective)(trainable)
    updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    params, step_size = trainable if learn_step_size else (trainable, state.step_size)
    if learn_step_size:  # keep step sizes positive
        step_size = jax.tree.map(lambda a: jnp.maximum(a, 1e-6), step_size)
    new = MAMLState(params, step_size, opt_state, state.key, state.iteration + 1)
    return new, MAMLInfo(loss, _tree_norm(grads))


def _as_source(tasks):
    if isinstance(tasks, TaskBatch):
        return FixedTasks(tasks=tasks)
    if not hasattr(tasks, "sample"):
        raise ValueError(
            f"tasks is a {type(tasks).__name__}; expected a task family (with .sample), "
            "FixedTasks or a TaskBatch"
        )
    return tasks


def make_train_loop(source, *, rule, optimizer, meta_batch_size, learn_step_size=False, mesh=None):
    """A compiled ``loop(state, num_iterations) -> (state, MAMLInfo)`` over fresh meta-batches.

    Each iteration splits the state's key, samples ``meta_batch_size`` tasks
    from ``source`` and takes one :func:`maml_update`; the iterations run in a
    ``lax.scan`` (``num_iterations`` is static). With a ``mesh`` the
    meta-batch is split over its devices (a sharding constraint inside the
    loop), and the meta-gradient is summed across them by XLA.
    """

    def one(state, _):
        key, sub = jax.random.split(state.key)
        tasks = constrain_tasks(source.sample(sub, meta_batch_size), mesh)
        state, info = maml_update(
            state._replace(key=key), tasks, rule=rule, optimizer=optimizer, learn_step_size=learn_step_size
        )
        return state, info

    @partial(jax.jit, static_argnums=1)
    def loop(state, num_iterations):
        return jax.lax.scan(one, state, None, length=num_iterations)

    return loop


_DEFAULT_OPTIMIZER = optax.adam(1e-3)


@lru_cache(maxsize=32)
def _cached_train_loop(source, rule, optimizer, meta_batch_size, learn_step_size, mesh=None):
    return make_train_loop(
        source, rule=rule, optimizer=optimizer, meta_batch_size=meta_batch_size, learn_step_size=learn_step_size,
        mesh=mesh,
    )


def _train_loop(source, rule, optimizer, meta_batch_size, learn_step_size, mesh=None):
    """The compiled loop, reused across calls with the same (hashable) configuration.

    Reuse means resuming training (``state=``) or training again with the same
    rule, optimiser object and task source does not retrace or recompile.
    Configurations that cannot be hashed (a fixed task set of arrays, a
    pytree of step sizes) get a fresh loop.
    """
    config = (source, rule, optimizer, int(meta_batch_size), bool(learn_step_size), mesh)
    try:
        hash(config)
    except TypeError:
        return make_train_loop(
            source, rule=rule, optimizer=optimizer, meta_batch_size=meta_batch_size, learn_step_size=learn_step_size,
            mesh=mesh,
        )
    return _cached_train_loop(*config)


def train_maml(
    params,
    tasks,
    *,
    rule: GradientSteps,
    key,
    num_iterations: int,
    optimizer=None,
    meta_batch_size: int = 25,
    learn_step_size: bool = False,
    chunk_size: int = 1000,
    progress: bool = True,
    state: MAMLState | None = None,
    checkpoint=None,
    devices=None,
) -> MAMLResult:
    """Meta-train θ with MAML (Algorithm 1).

    Args:
        params: initial θ (pytree).
        tasks: a task family (fresh tasks each iteration), a :class:`FixedTasks`
            or a :class:`TaskBatch` (meta-batches drawn from the finite set).
        rule: the inner adaptation (:class:`GradientSteps`).
        key: PRNG key; a given key reproduces the run exactly.
        num_iterations: meta-iterations.
        optimizer: any optax optimiser for the outer step; default ``optax.adam(1e-3)``.
        meta_batch_size: tasks per meta-iteration.
        learn_step_size: meta-learn α (Meta-SGD when ``rule.step_size`` is a pytree).
        chunk_size: iterations per compiled chunk; progress is shown between chunks.
        progress: show progress on standard error.
        state: resume from a previous :class:`MAMLState` (then ``params`` is ignored).
        devices: split each meta-batch over these devices (an int, a list of
            devices or a Mesh; :func:`hbmeta.tasks.sharding.resolve_mesh`);
            ``meta_batch_size`` must be a multiple of their number.
        checkpoint: a :class:`~hbmeta.base.checkpoint.Checkpointer`: continue from its file if there
            is one and save the state between chunks (a resumed run ends bit for bit where an
            uninterrupted one does).

    Raises:
        NonFiniteError: (a ``ValueError``) when the meta-loss stops being finite, naming the iteration.

    Returns:
        :class:`MAMLResult` with θ, α, the loss history and the final state.

    Example:
        >>> import jax, optax
        >>> from hbmeta import GradientSteps, Sinusoid, mlp, train_maml
        >>> net = mlp((1, 40, 40, 1))
        >>> res = train_maml(net.init(jax.random.key(0)), Sinusoid(),
        ...                  rule=GradientSteps(net.apply, step_size=0.01),
        ...                  key=jax.random.key(1), num_iterations=20, progress=False)
        >>> res.losses.shape
        (20,)
    """
    check_positive_int("num_iterations", num_iterations)
    check_positive_int("meta_batch_size", meta_batch_size)
    check_positive_int("chunk_size", chunk_size)
    source = _as_source(tasks)
    if isinstance(source, FixedTasks) and meta_batch_size > source.num_tasks:
        raise ValueError(
            f"meta_batch_size={meta_batch_size}; expected at most the {source.num_tasks} tasks in the set"
        )
    mesh = resolve_mesh(devices)
    check_divisible("meta_batch_size", meta_batch_size, mesh)
    optimizer = _DEFAULT_OPTIMIZER if optimizer is None else optimizer
    if state is None:
        state = init_maml(
            params, optimizer=optimizer, step_size=rule.step_size, key=key, learn_step_size=learn_step_size
        )
    loop = _train_loop(source, rule, optimizer, meta_batch_size, learn_step_size, mesh)
    def run(s, n):
        new, info = loop(s, n)
        losses = np.asarray(info.loss)
        if not np.isfinite(losses).all():
            i = int(np.flatnonzero(~np.isfinite(losses))[0])
            before = f"{losses[i - 1]:.4g}" if i > 0 else "not known"
            raise NonFiniteError(
                f"meta-training diverged: the meta-loss is {losses[i]} at iteration {int(s.iteration) + i} (the one "
                f"before: {before}); lower maml.learning_rate, clip the meta-gradient (maml.clip_norm, e.g. 10) or "
                "lower adaptation.step_size below 2/λ_max of the support loss (hbmeta.check_step_size)")
        return new, losses

    state, losses = run_in_chunks(
        run,
        state,
        num_iterations,
        chunk_size=chunk_size,
        label="meta-training",
        progress=progress,
        describe=lambda chunk: f"meta-loss {float(np.mean(chunk)):.4f}",
        checkpoint=checkpoint,
    )
    return MAMLResult(state.params, state.step_size, losses, state)
