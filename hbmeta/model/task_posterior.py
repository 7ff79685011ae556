"""Task-level posteriors p(φ_j | S_j, θ) over task batches: predictive, log-likelihoods, type-II ML.

For each task the network is linearised at the gradient-step estimate φ̂_j
and the prior φ_j ~ N(μ_j, τ²I) is integrated out in closed form (LLAMA,
Grant et al. 2018, with the generalized Gauss–Newton curvature; the
linearised predictive of Immer et al. 2021). μ_j is φ̂_j(θ) by default or θ
(``TaskPosterior(prior_mean=...)``). For regression, with NTK kernels
K_ab = J_a J_bᵀ at φ̂_j, d = μ_j − φ̂_j and r = y_S − f(x_S; φ̂) − J_S d,

    p(Q_j | S_j, θ, τ, σ) = N(y_Q; f(x_Q; φ̂) + J_Q d + τ²K_QS A⁻¹ r,
                               τ²K_QQ − τ⁴K_QS A⁻¹K_SQ + σ²I),   A = τ²K_SS + σ²I,

which needs only (K·o) × (K·o) solves. The derivation, the classification
case (GGN Λ = diag(p) − ppᵀ, one Gauss–Newton step, mean-field
probabilities) and the handling of masks are in
:mod:`hbmeta.model.task_linearised`.

- :func:`task_predictive`: per-point predictive mean and variance (and class probabilities).
- :func:`~hbmeta.model.task_scales.task_predictive_scales`: the same for several (τ, σ) at once.
- :func:`task_log_likelihood`: ``log p(Q_j | S_j, θ, τ, σ)`` per task (full covariance).
- :func:`support_log_marginal`: ``log p(S_j | θ, τ, σ)`` per task.
- :func:`fit_task_hyperparameters`: τ and σ by type-II maximum likelihood on given tasks.

The prior mean is read from ``spec.task_posterior`` (``"adapted"`` when the
spec has no task-level option). Every function takes θ as a flat ``(P,)`` vector or a params pytree, maps
over tasks ``task_chunk`` at a time (``jax.lax.map`` with ``batch_size``, so
memory is bounded) and is compiled once per spec and shapes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hbmeta.model import task_linearised
from hbmeta.model.spec import ModelSpec
from hbmeta.model.task_linearised import linearise, log_likelihood_one, predictive_one, regression_condition
from hbmeta.tasks.batch import TaskBatch


class TaskPredictive(NamedTuple):
    """The linearised task-level predictive of every task's query points (``T`` tasks, ``M`` points).

    - ``mean``: ``(T, M, o)`` predictive mean of y (regression) or ``(T, M, k)``
      mean logits (classification).
    - ``var``: ``(T, M, o)`` predictive variance of y, the linearised
      variance of f plus σ² (regression); ``(T, M, k)`` variance of each logit
      (classification).
    - ``probs``: ``(T, M, k)`` approximate class probabilities (classification), else None.
    """

    mean: jax.Array
    var: jax.Array
    probs: jax.Array | None


class TaskHyperparameters(NamedTuple):
    """τ and σ fitted by type-II maximum likelihood (:func:`fit_task_hyperparameters`).

    ``tau`` and ``noise`` are floats (``noise`` None for classification);
    ``losses`` is the objective per optimiser step (minus the mean
    log-likelihood per query point).
    """

    tau: float
    noise: float | None
    losses: np.ndarray


def _concrete(value):
    try:
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_positive(name, value, expected="a positive scalar"):
    if value is None or isinstance(value, bool) or jnp.ndim(value) != 0:
        raise ValueError(f"{name}={value!r}; expected {expected}")
    v = _concrete(value)
    if v is not None and not (np.isfinite(v) and v > 0):
        raise ValueError(f"{name}={float(v)!r}; expected {expected}")


def _check(spec, theta, tasks, tau, noise, step_size, task_chunk):
    """Validate the public functions' arguments (before anything is traced); return the flat θ."""
    if not isinstance(spec, ModelSpec):
        raise ValueError(f"spec is a {type(spec).__name__}; expected hbmeta.ModelSpec")
    if not isinstance(tasks, TaskBatch):
        raise ValueError(f"tasks is a {type(tasks).__name__}; expected hbmeta.TaskBatch")
    if isinstance(theta, jax.Array | np.ndarray) and jnp.ndim(theta) == 1:
        if theta.shape != (spec.num_params,):
            raise ValueError(f"theta has shape {theta.shape}; expected ({spec.num_params},), the flat θ of spec")
        flat = jnp.asarray(theta)
    else:
        if jax.tree.structure(theta) != jax.tree.structure(spec.params):
            raise ValueError(
                f"theta has tree structure {jax.tree.structure(theta)}; expected a flat ({spec.num_params},) "
                f"vector or params with the spec's structure {jax.tree.structure(spec.params)}"
            )
        for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(spec.params)):
            if jnp.shape(a) != jnp.shape(b):
                raise ValueError(f"theta has a leaf of shape {jnp.shape(a)}; expected {jnp.shape(b)} like spec.params")
        flat = spec.ravel(theta)
    _check_positive("tau", tau)
    regression = spec.likelihood.regression
    if regression:
        _check_positive("noise", noise, "a positive scalar σ (the likelihood is a regression one)")
        if tasks.y_query.ndim != 3 or not jnp.issubdtype(tasks.y_query.dtype, jnp.floating):
            raise ValueError(f"tasks.y_query has shape {tasks.y_query.shape}; expected real targets (T, M, outputs)")
    else:
        if noise is not None:
            raise ValueError(f"noise={noise!r}; expected None: a categorical likelihood has no noise scale")
        if tasks.y_query.ndim != 2 or not jnp.issubdtype(tasks.y_query.dtype, jnp.integer):
            raise ValueError(f"tasks.y_query has shape {tasks.y_query.shape}; expected integer labels (T, M)")
    if step_size is not None:
        _check_positive("step_size", step_size)
    if task_chunk is not None and (isinstance(task_chunk, bool) or int(task_chunk) != task_chunk or task_chunk < 1):
        raise ValueError(f"task_chunk={task_chunk!r}; expected a positive integer or None (all tasks at once)")
    return flat


def _map_tasks(fn, xs, task_chunk):
    """``fn`` over the leading task axis of the pytree ``xs``, ``task_chunk`` tasks at a time (vmapped within)."""
    num_tasks = jax.tree.leaves(xs)[0].shape[0]
    if task_chunk is None or task_chunk >= num_tasks:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=int(task_chunk))


def _task_arrays(tasks):
    return (tasks.x_support, tasks.y_support, tasks.support_mask, tasks.x_query, tasks.y_query, tasks.query_mask)


def _predictive_task(spec, flat, args, alpha, tau, noise):
    xs, ys, ms, xq, _, _ = args
    return predictive_one(spec, flat, xs, ys, ms, xq, alpha, tau, noise)


def _log_likelihood_task(spec, flat, args, alpha, tau, noise):
    xs, ys, ms, xq, yq, mq = args
    lin = linearise(spec, flat, xs, ys, ms, xq, alpha, full_query=spec.likelihood.regression)
    return log_likelihood_one(spec, lin, ys, ms, yq, mq, tau, noise)


def _support_task(spec, flat, args, alpha, tau, noise):
    xs, ys, ms, xq, _, _ = args
    lin = linearise(spec, flat, xs, ys, ms, xq[:1], alpha, full_query=False)
    _, _, chol, r = regression_condition(lin, ys, ms, tau, noise)
    return task_linearised.support_log_marginal(chol, r)


def _linearise_task(spec, flat, args, alpha, tau, noise):
    xs, ys, ms, xq, _, _ = args
    return linearise(spec, flat, xs, ys, ms, xq, alpha, full_query=spec.likelihood.regression)


_COMPILED: dict = {}


def _compiled(spec, per_task, task_chunk):
    """``fn(flat, arrays, alpha, tau, noise)`` mapped over tasks and jitted, cached per spec (no recompilation)."""
    cache_key = (id(spec), per_task, task_chunk)
    hit = _COMPILED.get(cache_key)
    if hit is not None and hit[0] is spec:
        return hit[1]

    def run(flat, arrays, alpha, tau, noise):
        return _map_tasks(lambda a: per_task(spec, flat, a, alpha, tau, noise), arrays, task_chunk)

    if len(_COMPILED) >= 32:
        _COMPILED.clear()
    _COMPILED[cache_key] = (spec, jax.jit(run))
    return _COMPILED[cache_key][1]


def _call(per_task, spec, theta, tasks, tau, noise, step_size, task_chunk):
    flat = _check(spec, theta, tasks, tau, noise, step_size, task_chunk)
    return _compiled(spec, per_task, task_chunk)(flat, _task_arrays(tasks), step_size, tau, noise)


def task_predictive(spec, theta, tasks, *, tau, noise=None, step_size=None, task_chunk=32) -> TaskPredictive:
    """The linearised task-level predictive of every task's query points given its support set.

    For task j, φ̂_j = rule(θ, S_j) and the network linearised there, with
    the prior φ_j ~ N(θ, τ²I): regression gives the marginal
    ``N(m_Q, diag C_Q + σ²)`` per point and output; classification the mean
    and variance of the logits and the mean-field class probabilities.

    Args:
        spec: the :class:`~hbmeta.ModelSpec` (rule, network, likelihood).
        theta: θ, a flat ``(P,)`` vector or a params pytree.
        tasks: a :class:`~hbmeta.TaskBatch`; ``y_query`` is not used.
        tau: τ > 0, the prior scale of φ_j around θ.
        noise: σ > 0 for regression; None for classification.
        step_size: α, overriding the rule's (an inferred or meta-learned α).
        task_chunk: tasks per vmapped chunk (memory); None for all at once.

    Returns:
        :class:`TaskPredictive`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import hbmeta as hb
        >>> net = hb.mlp((1, 8, 1)); theta = net.init(jax.random.key(0))
        >>> spec = hb.ModelSpec(hb.GradientSteps(net.apply), theta)
        >>> tasks = hb.Sinusoid(num_support=5).sample(jax.random.key(1), 3)
        >>> pred = hb.task_predictive(spec, theta, tasks, tau=0.1, noise=0.5)
        >>> pred.mean.shape, bool(jnp.all(pred.var >= 0.25))
        ((3, 10, 1), True)
    """
    return TaskPredictive(*_call(_predictive_task, spec, theta, tasks, tau, noise, step_size, task_chunk))


def task_log_likelihood(spec, theta, tasks, *, tau, noise=None, step_size=None, task_chunk=32) -> jax.Array:
    """``log p(Q_j | S_j, θ, τ, σ)`` per task, ``(T,)``: the query set given the support set.

    Regression: the exact Gaussian log density of the linearised model,
    ``N(y_Q; m_Q, C_Q + σ²I)`` with the full covariance over the task's query
    points (masked points marginalised out). Classification has no closed
    form: the sum over query points of ``log p̂(y_q)`` under the mean-field
    probabilities (pointwise, not joint). Arguments as :func:`task_predictive`.

    Example:
        >>> import jax
        >>> import hbmeta as hb
        >>> net = hb.mlp((1, 8, 1)); theta = net.init(jax.random.key(0))
        >>> spec = hb.ModelSpec(hb.GradientSteps(net.apply), theta)
        >>> tasks = hb.Sinusoid(num_support=5).sample(jax.random.key(1), 3)
        >>> hb.task_log_likelihood(spec, theta, tasks, tau=0.1, noise=0.5).shape
        (3,)
    """
    return _call(_log_likelihood_task, spec, theta, tasks, tau, noise, step_size, task_chunk)


def support_log_marginal(spec, theta, tasks, *, tau, noise, step_size=None, task_chunk=32) -> jax.Array:
    """``log p(S_j | θ, τ, σ)`` per task, ``(T,)``: ``N(r; 0, τ²K_SS + σ²I)`` (regression only).

    The marginal likelihood of the support set alone under the linearised
    prior (masked support points marginalised out). Arguments as
    :func:`task_predictive`.

    Example:
        >>> import jax
        >>> import hbmeta as hb
        >>> net = hb.mlp((1, 8, 1)); theta = net.init(jax.random.key(0))
        >>> spec = hb.ModelSpec(hb.GradientSteps(net.apply), theta)
        >>> tasks = hb.Sinusoid(num_support=5).sample(jax.random.key(1), 3)
        >>> hb.support_log_marginal(spec, theta, tasks, tau=0.1, noise=0.5).shape
        (3,)
    """
    if isinstance(spec, ModelSpec) and not spec.likelihood.regression:
        raise ValueError("spec has a categorical likelihood; expected a regression one (no closed-form marginal)")
    return _call(_support_task, spec, theta, tasks, tau, noise, step_size, task_chunk)


def _minimise(fun, x0, num_steps):
    """L-BFGS (optax, backtracking line search) on a deterministic objective; a step that does not lower it is rejected.

    A line search that fails can still return a step that raises the
    objective (float32 near a flat optimum); keeping only steps that do not
    raise it means the result is never worse than ``x0``.
    """
    opt = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(max_backtracking_steps=20))
    value_and_grad = jax.value_and_grad(fun)

    def step(carry, _):
        x, state = carry
        value, grad = value_and_grad(x)
        updates, new_state = opt.update(grad, state, x, value=value, grad=grad, value_fn=fun)
        new_x = optax.apply_updates(x, updates)
        new_value = fun(new_x)
        ok = jnp.isfinite(new_value) & (new_value <= value)
        return (jnp.where(ok, new_x, x), jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_state, state)), value

    (x, _), losses = jax.lax.scan(step, (x0, opt.init(x0)), None, length=num_steps)
    return x, losses


_TYPE_TWO: dict = {}


def _type_two_fit(spec, regression: bool, fit_noise: bool, num_steps: int):
    """The jitted grid search and L-BFGS of :func:`fit_task_hyperparameters`, cached per spec (no recompilation).

    ``run(grid, data, count, fixed_noise) -> (u, losses)`` with ``u = (log τ[, log σ])``.
    """
    cache_key = (id(spec), regression, fit_noise, num_steps)
    hit = _TYPE_TWO.get(cache_key)
    if hit is not None and hit[0] is spec:
        return hit[1]

    def loss(u, data, count, fixed_noise):
        tau = jnp.exp(u[0])
        sigma = (jnp.exp(u[1]) if fit_noise else fixed_noise) if regression else None
        per_task = jax.vmap(lambda *a: log_likelihood_one(spec, *a, tau, sigma))(*data)
        return -jnp.sum(per_task) / count

    def run(grid, data, count, fixed_noise):
        values = jax.lax.map(lambda u: loss(u, data, count, fixed_noise), grid)
        start = grid[jnp.argmin(jnp.where(jnp.isfinite(values), values, jnp.inf))]
        return _minimise(lambda u: loss(u, data, count, fixed_noise), start, num_steps)

    if len(_TYPE_TWO) >= 32:
        _TYPE_TWO.clear()
    _TYPE_TWO[cache_key] = (spec, jax.jit(run))
    return _TYPE_TWO[cache_key][1]


def fit_task_hyperparameters(
    spec, theta, tasks, *, noise=None, step_size=None, num_steps: int = 100, task_chunk=32
) -> TaskHyperparameters:
    """τ (and σ) by type-II maximum likelihood: ``argmax Σ_j log p(Q_j | S_j, θ, τ, σ)`` on ``tasks``.

    The Jacobians at φ̂_j do not depend on τ and σ, so the kernels are
    computed once per task; the objective (minus the mean log-likelihood per
    query value, :func:`task_log_likelihood`) is then cheap. It is started at
    the best point of a grid over (log τ, log σ) and minimised with optax's
    L-BFGS over the logarithms. ``noise`` fixes σ (only τ is fitted);
    classification fits τ alone.

    Call it on tasks θ was **not** trained on: a held-out fold of the
    training tasks (leave-tasks-out), never the tasks that are reported. θ
    overfits the tasks it was meta-trained on, so their query residuals are
    smaller than a new task's errors and τ and σ fitted on them are too
    small (on the default sinusoid model, |T| = 100, MAML's RMS residual on
    its training query sets is 0.58 against 0.98 on held-out tasks); the
    predictive is then overconfident.

    Args:
        spec, theta: the model and θ (flat or a params pytree).
        tasks: the tasks to fit on (a fold of training tasks θ did not see).
        noise: σ > 0 to keep fixed, or None to fit it (regression).
        step_size: α, overriding the rule's.
        num_steps: L-BFGS steps after the grid search.
        task_chunk: tasks per vmapped chunk while the kernels are computed.

    Returns:
        :class:`TaskHyperparameters`.

    Example:
        >>> import jax
        >>> import hbmeta as hb
        >>> net = hb.mlp((1, 8, 1)); theta = net.init(jax.random.key(0))
        >>> spec = hb.ModelSpec(hb.GradientSteps(net.apply), theta)
        >>> fold = hb.Sinusoid(num_support=5).sample(jax.random.key(1), 8)
        >>> fit = hb.fit_task_hyperparameters(spec, theta, fold, num_steps=20)
        >>> fit.tau > 0 and fit.noise > 0
        True
    """
    regression = isinstance(spec, ModelSpec) and spec.likelihood.regression
    fixed_noise = noise is not None
    _check(spec, theta, tasks, 1.0, (noise if fixed_noise else 1.0) if regression else None, step_size, task_chunk)
    if not regression and fixed_noise:
        raise ValueError(f"noise={noise!r}; expected None: a categorical likelihood has no noise scale")
    if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r}; expected a positive integer")
    lin = _call(_linearise_task, spec, theta, tasks, 1.0, (noise if fixed_noise else 1.0) if regression else None,
                step_size, task_chunk)
    ys, ms, yq, mq = tasks.y_support, tasks.support_mask, tasks.y_query, tasks.query_mask
    mask = jnp.ones(yq.shape[:2], bool) if mq is None else jnp.asarray(mq)
    dtype = lin.f_q.dtype
    count = jnp.sum(mask) * (yq.shape[-1] if regression else 1)
    if regression:
        y_obs = np.asarray(yq)[np.asarray(mask)]
        scale = float(np.sqrt(np.mean(np.square(y_obs)))) or 1.0
    fit_noise = regression and not fixed_noise
    data = (lin, ys, ms, yq, mq)
    grid_tau = np.linspace(math.log(1e-3), math.log(10.0), 25)
    if fit_noise:
        grid_sigma = np.linspace(math.log(1e-3 * scale), math.log(2.0 * scale), 25)
        grid = np.stack(np.meshgrid(grid_tau, grid_sigma, indexing="ij"), -1).reshape(-1, 2)
    else:
        grid = grid_tau[:, None]
    fixed = jnp.asarray(noise if fixed_noise else 1.0, dtype)
    run = _type_two_fit(spec, regression, fit_noise, int(num_steps))
    u, losses = run(jnp.asarray(grid, dtype), data, jnp.asarray(count, dtype), fixed)
    sigma = (float(noise) if fixed_noise else float(jnp.exp(u[1]))) if regression else None
    return TaskHyperparameters(float(jnp.exp(u[0])), sigma, np.asarray(losses))
