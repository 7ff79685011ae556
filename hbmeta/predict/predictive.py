"""The posterior predictive over adapted models: sample φ̂ˢ for new tasks and predict.

For every posterior draw s (θˢ, and αˢ, σˢ where inferred) and every new task
j with support set S_j and query inputs x_q:

    φ̂ˢ_j = adapt(θˢ, S_j; αˢ)                       (the spec's rule, e.g. one gradient step)
    regression:      μˢ_jq = f_φ̂ˢ_j(x_q),   yˢ_jq ~ N(μˢ_jq, (σˢ)²)
    classification:  pˢ_jq = softmax(f_φ̂ˢ_j(x_q)),  yˢ_jq ~ Categorical(pˢ_jq)

so the predictive of a new point is the mixture (1/S) Σ_s N(μˢ, σˢ²) (or the
average of the pˢ). With the task-level option (``spec.task_posterior``) each
draw predicts with the linearised task posterior instead
(:func:`~hbmeta.task_predictive`, τˢ from the ``"tau"`` draws or the fixed τ):
μˢ_jq is its mean and the per-point sd sqrt(var_linearised + σˢ²) replaces σˢ;
pˢ_jq are its mean-field class probabilities. With ``"spread_power"`` and
``"spread_ref"`` draws (p and s̄², an ensemble's per-task scale) a regression
task's (τˢ², σˢ²) are multiplied by h_j = ((s_j²/s̄² + κ)/(1 + κ))^p, s_j² the
spread of its support targets (:mod:`hbmeta.model.support_spread`), which
multiplies its predictive variance by h_j. With ``"distance_edges"`` and
``"distance_scales"`` draws (an ensemble's per-point factor) each query point's
variance is multiplied by the factor c(d) of its distance d to the task's nearest
support point, linear in d between the bins' midpoints (:mod:`hbmeta.model.support_distance`). Draws that share θ and α (an
ensemble member's scale-mixture nodes, or repeated draws) are adapted and
linearised once per chunk; only the conditioning on the support, a K·o × K·o
solve, is done per draw. Draws and tasks are processed in fixed-size chunks by one
compiled function, padded at the ends so that it compiles once; results move
to host memory chunk by chunk, so device memory does not grow with the number
of draws or tasks.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hbmeta.base.jax_checks import as_key
from hbmeta.base.memory import check_memory
from hbmeta.base.validate import check_positive_int, check_type
from hbmeta.model.posterior import Posterior
from hbmeta.predict.kernel import chunk_noise, compiled_chunk, pad_rows
from hbmeta.tasks.batch import TaskBatch
from hbmeta.tasks.sharding import resolve_mesh, task_sharding, to_host


class Predictive(NamedTuple):
    """Posterior-predictive draws for a batch of tasks (numpy arrays on the host).

    Shapes with ``C`` chains, ``S`` draws, ``T`` tasks, ``M`` query points,
    ``o`` outputs and ``k`` classes:

    - ``mean``: ``(C, S, T, M, o)`` adapted-model outputs μˢ (regression), else None.
    - ``probs``: ``(C, S, T, M, k)`` class probabilities pˢ (classification), else None.
    - ``y``: sampled targets: ``(C, S, T, M, o)`` μˢ + σˢε (regression) or
      ``(C, S, T, M)`` integer labels (classification).
    - ``noise``: ``(C, S)`` σˢ (regression), else None; with the task-level
      option (``spec.task_posterior``) the per-point predictive sd
      ``(C, S, T, M, o)``, sqrt(linearised variance + σˢ²), NaN at masked points.
    - ``params``: the adapted parameters φ̂ˢ_j as a pytree with leading
      ``(C, S, T)`` axes when requested, else None.
    - ``query_mask``: ``(T, M)`` booleans or None. Masked points hold NaN in
      ``mean``, ``probs`` and ``y`` (label −1 for classification).
    """

    mean: Any
    probs: Any
    y: Any
    noise: Any
    params: Any
    query_mask: Any

    @property
    def regression(self) -> bool:
        return self.mean is not None

    @property
    def num_chains(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_draws(self) -> int:
        return int(self.y.shape[1])


def _check_inputs(posterior, tasks):
    check_type("posterior", posterior, Posterior)
    check_type("tasks", tasks, TaskBatch)
    spec = posterior.spec
    theta = np.shape(posterior.samples.get("theta"))
    if len(theta) != 3 or theta[2] != spec.num_params:
        raise ValueError(
            f"posterior.samples['theta'] has shape {theta}; expected (chain, draw, {spec.num_params})"
        )
    regression = spec.likelihood.regression
    if regression and tasks.y_support.ndim != 3:
        raise ValueError(
            f"tasks.y_support has shape {tasks.y_support.shape}; the likelihood is a regression one, "
            "expected real targets (tasks, points, outputs)"
        )
    if not regression and (tasks.y_support.ndim != 2 or tasks.y_support.dtype.kind not in "iu"):
        raise ValueError(
            f"tasks.y_support has shape {tasks.y_support.shape} and dtype {tasks.y_support.dtype}; "
            "the likelihood is categorical, expected integer labels (tasks, points)"
        )
    return regression


def _unravel_batch(spec, flat):
    """Params pytree with leading batch axes from flat vectors ``(..., P)`` (numpy, on the host)."""
    leaves, treedef = jax.tree.flatten(spec.params)
    parts, start = [], 0
    for leaf in leaves:
        size = int(np.size(leaf))
        parts.append(flat[..., start : start + size].reshape(flat.shape[:-1] + np.shape(leaf)))
        start += size
    return jax.tree.unflatten(treedef, parts)


def predictive_bytes(num_draws: int, num_tasks: int, out_shape) -> float:
    """Host bytes of a predictive's ``mean`` and ``y`` (float32): ``2 · 4 · draws · tasks · M · o``.

    ``out_shape`` is the network's output for one task's query set, ``(M, o)`` or ``(M, classes)``.
    """
    return 8.0 * num_draws * num_tasks * float(np.prod(out_shape, dtype=np.int64))


def sample_predictive(
    posterior: Posterior,
    tasks: TaskBatch,
    *,
    key,
    draw_chunk: int = 64,
    task_chunk: int = 32,
    return_params: bool = False,
    devices=None,
) -> Predictive:
    """Adapt every posterior draw to every task's support set and predict its query points.

    For draw s and task j: ``φ̂ˢ_j = rule(θˢ, S_j; αˢ)``; regression returns
    μˢ_jq = f_φ̂ˢ_j(x_q) and yˢ_jq = μˢ_jq + σˢ εˢ_jq, ε ~ N(0, 1);
    classification returns pˢ_jq = softmax f_φ̂ˢ_j(x_q) and yˢ_jq ~ Categorical(pˢ_jq).
    The noise of draw s on task j uses the key ``fold_in(fold_in(key, s), j)``,
    so results do not depend on the chunk sizes. (With the explicit variant the
    new tasks are adapted by the same gradient-step rule, the MAP-like estimate
    that the explicit model's latent φ_j approximates.)

    Memory: one compiled call handles ``D = draw_chunk`` draws × ``B =
    task_chunk`` tasks; its device memory is about
    ``4 · D · B · (3P + A)`` bytes in float32, for ``P`` parameters and ``A``
    activations per task (≈ (K + M) × hidden widths, twice for the inner
    gradient). For the 1–40–40–1 MLP (P = 1761) with K = M = 10 and the
    defaults D = 64, B = 32, XLA's memory analysis of the compiled chunk gives
    31 MB of temporaries (the formula's bound: 45 MB), plus ``4·D·B·P`` = 14 MB
    of output when ``return_params``. The host holds the outputs:
    ``2 · 4 · C·S·T·M·o`` bytes (``mean`` and ``y``; e.g. 4 chains × 500 draws
    × 100 tasks × 100 points = 160 MB), plus ``4 · C·S·T·P`` bytes when
    ``return_params`` (the same sizes: 1.4 GB, so ask for params on few tasks).
    Those host bytes are checked before any work against the available memory
    (or ``HBMETA_MEMORY_CAP``): :class:`~hbmeta.base.memory.MemoryLimitError`
    with the estimate when they do not fit.

    Args:
        posterior: a :class:`~hbmeta.Posterior` from any method.
        tasks: a :class:`~hbmeta.TaskBatch`; its support sets are adapted to
            and its query inputs predicted (``y_query`` is not used).
        key: PRNG key (or int seed) for the sampled targets.
        draw_chunk, task_chunk: chunk sizes (clipped to the number of draws and tasks).
        return_params: also return the adapted parameters (host memory above).
        devices: split each chunk's tasks over these devices (an int, a list
            of devices or a Mesh; :func:`hbmeta.tasks.sharding.resolve_mesh`);
            ``task_chunk`` is rounded up to a multiple of their number (the
            padding tasks are discarded), so any number of tasks works.

    Returns:
        :class:`Predictive`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import hbmeta as hb
        >>> net = hb.mlp((1, 8, 1)); theta = net.init(jax.random.key(0))
        >>> spec = hb.ModelSpec(hb.GradientSteps(net.apply), theta, likelihood=hb.NormalLikelihood(noise=0.1))
        >>> flat = spec.ravel(theta) + 0.01 * jax.random.normal(jax.random.key(1), (2, 5, spec.num_params))
        >>> post = hb.Posterior({"theta": flat}, spec, "custom", {})
        >>> tasks = hb.Sinusoid().sample(jax.random.key(2), 3)
        >>> hb.sample_predictive(post, tasks, key=jax.random.key(3)).mean.shape
        (2, 5, 3, 10, 1)
    """
    blocks = predictive_blocks(posterior, tasks, key=key, draw_chunk=draw_chunk, task_chunk=task_chunk,
                               return_params=return_params, devices=devices)
    spec, regression = posterior.spec, blocks.regression
    C, S = posterior.num_chains, posterior.num_draws
    N, T, M = C * S, tasks.num_tasks, tasks.x_query.shape[1]
    check_memory(predictive_bytes(N, T, blocks.out_shape) + (4.0 * N * T * spec.num_params if return_params else 0.0),
                 what=f"the predictive ({N} draws × {T} tasks × {M} query points"
                      f"{', with the adapted parameters' if return_params else ''})",
                 lower="the number of draws or tasks (or pass fewer query points)")
    first_out = y_out = phi_out = sd_out = None
    for b in blocks:
        if first_out is None:
            first_out = np.empty((N, T) + b.first.shape[2:], b.first.dtype)
            y_out = np.empty((N, T) + b.y.shape[2:], b.y.dtype)
            phi_out = None if b.params is None else np.empty((N, T, b.params.shape[-1]), b.params.dtype)
            sd_out = None if b.sd is None else np.empty((N, T) + b.sd.shape[2:], b.sd.dtype)
        first_out[b.draws, b.tasks] = b.first
        y_out[b.draws, b.tasks] = b.y
        if phi_out is not None:
            phi_out[b.draws, b.tasks] = b.params
        if sd_out is not None:
            sd_out[b.draws, b.tasks] = b.sd
    shape = (C, S, T, M)
    first_out = first_out.reshape(shape + first_out.shape[3:])
    y_out = y_out.reshape(shape + y_out.shape[3:])
    params = _unravel_batch(spec, phi_out.reshape((C, S, T, -1))) if return_params else None
    noise = blocks.sigma.reshape(C, S) if regression else None
    if sd_out is not None:
        noise = sd_out.reshape(shape + sd_out.shape[3:])
    mask = None if tasks.query_mask is None else np.asarray(tasks.query_mask)
    if regression:
        return Predictive(first_out, None, y_out, noise, params, mask)
    return Predictive(None, first_out, y_out, None, params, mask)


class Block(NamedTuple):
    """One block of the predictive on the host: flat draws ``draws`` (index ``c·S + s``) × tasks ``tasks``.

    ``first`` is μ (regression) or p (classification), ``y`` the sampled targets, ``params`` the flat adapted
    parameters (or None), ``sd`` the per-point sd of the task-level option (or None); each has leading axes
    ``(len(draws), len(tasks))``.
    """

    draws: slice
    tasks: slice
    first: Any
    y: Any
    params: Any
    sd: Any


class PredictiveBlocks:
    """An iterator over the :class:`Block` s of a predictive, set up (and the inputs checked) when created.

    Attributes: ``regression``, ``out_shape`` (one task's output, ``(M, o)`` or ``(M, k)``), ``sigma`` (σˢ per
    flat draw, ``(C·S,)``). Iterate it once.
    """

    def __init__(self, steps, *, regression, out_shape, sigma):
        self._steps, self.regression, self.out_shape, self.sigma = steps, regression, out_shape, sigma

    def __iter__(self):
        return self._steps


def predictive_blocks(posterior: Posterior, tasks: TaskBatch, *, key, draw_chunk: int = 64, task_chunk: int = 32,
                      return_params: bool = False, devices=None) -> PredictiveBlocks:
    """:func:`sample_predictive` one block at a time (≤ ``draw_chunk`` flat draws × ≤ ``task_chunk`` tasks).

    The blocks hold exactly the values :func:`sample_predictive` returns at their positions (same keys), so a
    consumer can write or reduce a predictive far larger than memory; the next block is computed while the
    last one is handed over. Arguments as :func:`sample_predictive`; no memory check (nothing is kept).
    """
    regression = _check_inputs(posterior, tasks)
    key = as_key(key)
    draw_chunk = check_positive_int("draw_chunk", draw_chunk)
    task_chunk = check_positive_int("task_chunk", task_chunk)
    spec = posterior.spec
    N, T = posterior.num_chains * posterior.num_draws, tasks.num_tasks
    flat = np.asarray(posterior.samples["theta"]).reshape(N, -1)
    has_alpha = "step_size" in posterior.samples
    alpha = np.asarray(posterior.samples["step_size"]).reshape(N) if has_alpha else np.ones(N, flat.dtype)
    sigma = np.asarray(posterior.noise()).reshape(N) if regression else np.ones(N, flat.dtype)
    sigma = sigma.astype(flat.dtype)
    tau = _tau_draws(posterior, N).astype(flat.dtype)
    power, ref = (np.asarray(posterior.samples[k]).reshape(N).astype(flat.dtype) if k in posterior.samples else
                  np.full(N, fill, flat.dtype) for k, fill in (("spread_power", 0.0), ("spread_ref", 1.0)))
    if "distance_scales" in posterior.samples:  # the per-point factor by distance to the support, per draw
        edges = np.asarray(posterior.samples["distance_edges"]).reshape(N, -1).astype(flat.dtype)
        scales = np.asarray(posterior.samples["distance_scales"]).reshape(N, -1).astype(flat.dtype)
    else:
        edges, scales = np.zeros((N, 0), flat.dtype), np.ones((N, 1), flat.dtype)
    D, B = min(draw_chunk, N), min(task_chunk, T)
    # Draws that share θ and α (an ensemble member's tail nodes, repeated draws) adapt and linearise once.
    _, first_of, inverse = np.unique(np.concatenate([flat, alpha[:, None]], axis=1), axis=0, return_index=True,
                                     return_inverse=True)
    inverse = inverse.reshape(-1)
    if spec.task_posterior is not None:  # the linearised posterior's Jacobians cost ~(K + M)² per distinct θ, task
        repeats = max(1, N // len(first_of))
        d, B = _task_level_chunks(-(-D // repeats), B, tasks.x_support.shape[1] + tasks.x_query.shape[1])
        D = min(D, d * repeats)
    mesh = resolve_mesh(devices)
    put = lambda a, axis=0: a
    if mesh is not None:
        n_dev = mesh.devices.size
        B = -(-B // n_dev) * n_dev
        task_axis = task_sharding(mesh, axis_name=mesh.axis_names[0])
        noise_axis = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, mesh.axis_names[0]))
        put = lambda a, axis=0: jax.device_put(a, task_axis if axis == 0 else noise_axis)
    n_pad, t_pad = -(-N // D) * D, -(-T // B) * B
    inverse = pad_rows(inverse, n_pad)
    distinct = [np.unique(inverse[i : i + D], return_inverse=True) for i in range(0, n_pad, D)]
    U = max(len(rows) for rows, _ in distinct)  # distinct (θ, α) per block, padded to the largest (one compile)
    sigma_pad, tau_pad, power_pad, ref_pad, edges_pad, scales_pad = (
        pad_rows(a, n_pad) for a in (sigma, tau, power, ref, edges, scales))
    fields = (*tasks.support(), tasks.x_query, tasks.query_mask)
    data = [None if a is None else pad_rows(np.asarray(a), t_pad) for a in fields]
    run = compiled_chunk(spec, regression=regression, has_alpha=has_alpha, want_params=return_params)
    out_shape = tuple(jax.eval_shape(spec.rule.apply, spec.params, tasks.x_query[0]).shape)

    def finish(i, j, res):
        first, y, phi, sd = to_host(res)
        rows, cols = slice(i, min(i + D, N)), slice(j, min(j + B, T))
        n, m = rows.stop - i, cols.stop - j
        cut = lambda a: None if a is None else a[:n, :m]
        return Block(rows, cols, cut(first), cut(y), cut(phi), cut(sd))

    def steps():
        pending = None
        for b, i in enumerate(range(0, n_pad, D)):
            rows, local = distinct[b]
            rows = first_of[pad_rows(rows, U)]
            draw_args = (flat[rows], alpha[rows], local.reshape(-1).astype(np.int32), sigma_pad[i : i + D],
                         tau_pad[i : i + D], power_pad[i : i + D], ref_pad[i : i + D], edges_pad[i : i + D],
                         scales_pad[i : i + D])
            for j in range(0, t_pad, B):
                args = [None if a is None else put(a[j : j + B]) for a in data]
                eps = put(chunk_noise(key, jnp.arange(i, i + D), jnp.arange(j, j + B), out_shape, not regression), 1)
                res = run(eps, *draw_args, *args)
                if pending is not None:
                    yield finish(*pending)
                pending = (i, j, res)
        yield finish(*pending)

    return PredictiveBlocks(steps(), regression=regression, out_shape=out_shape, sigma=sigma)


_TASK_LEVEL_BUDGET = 2**22  # draws × tasks × (K + M)² per block of the task-level predictive


def _task_level_chunks(draws: int, tasks: int, points: int) -> tuple[int, int]:
    """Smaller blocks for the task-level predictive: ``D·B·(K + M)² ≤`` :data:`_TASK_LEVEL_BUDGET`.

    Each Jacobian of the K + M support and query outputs is a reverse-mode pass per output, whose
    intermediates hold (K + M)² activations per layer: 64 draws × 32 tasks at 205 points would need
    about 40 GB. Tasks are cut first, then draws; at least one of each. The values do not depend on
    the blocks (the noise of each draw and task comes from its own key).
    """
    per = points * points
    tasks = max(1, min(tasks, _TASK_LEVEL_BUDGET // max(1, draws * per)))
    draws = max(1, min(draws, _TASK_LEVEL_BUDGET // max(1, tasks * per)))
    return draws, tasks


def _tau_draws(posterior, n):
    """τ per draw, ``(n,)``: the ``"tau"`` draws, else the spec's fixed τ (ones when there is no task-level option)."""
    tp = posterior.spec.task_posterior
    if "tau" in posterior.samples:
        return np.asarray(posterior.samples["tau"]).reshape(n)
    if tp is None:
        return np.ones(n)
    if tp.tau is None:
        raise ValueError(
            "posterior has no 'tau' draws and spec.task_posterior.tau is None; expected one of them: fit the "
            "posterior with the task-level model, add 'tau' draws (e.g. from hbmeta.fit_task_hyperparameters) "
            "or fix τ in hbmeta.TaskPosterior(tau=...)"
        )
    return np.full(n, float(tp.tau))
