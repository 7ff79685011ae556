"""The compiled function behind :func:`~hbmeta.sample_predictive`: one chunk of draws × tasks.

For a chunk of D flat draws and B tasks, :func:`compiled_chunk` returns a jitted function that adapts each
distinct (θ, α) of the chunk to every task's support set once (the query outputs, or with the task-level
option the linearisation of :func:`~hbmeta.model.task_linearised.linearise`) and then, per draw, conditions
on the support with that draw's τ and σ (times the per-task factor h_j of the support spread), multiplies
each query point's variance by the factor c(d) of its distance d to the support, and samples the targets from
the noise of :func:`chunk_noise` (standard normal, or Gumbel for the categorical likelihood, keyed by draw
and task so that results do not depend on the chunk sizes). :func:`pad_rows` pads the last chunk.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from hbmeta.model.support_distance import distance_factor, support_distance
from hbmeta.model.support_spread import spread_factor, support_spread
from hbmeta.model.task_linearised import condition_one, linearise


def pad_rows(a, n, axis=0):
    """Pad axis ``axis`` to length ``n`` by repeating the last entry (results there are discarded)."""
    if a is None or a.shape[axis] == n:
        return a
    idx = np.minimum(np.arange(n), a.shape[axis] - 1)
    return np.take(a, idx, axis=axis)


KERNEL_CACHE: dict = {}


def compiled_chunk(spec, *, regression, has_alpha, want_params):
    """The compiled chunk function, cached per (rule, params layout, flags) so repeated calls do not recompile."""
    layout = tuple((np.shape(a), str(jnp.asarray(a).dtype)) for a in jax.tree.leaves(spec.params))
    task_level = None if spec.task_posterior is None else spec.task_posterior.prior_mean  # part of the cache key
    cache_key = (id(spec.rule), jax.tree.structure(spec.params), layout, regression, has_alpha, want_params, task_level)
    hit = KERNEL_CACHE.get(cache_key)
    if hit is not None and hit[0] is spec.rule:
        return hit[1]
    rule, apply = spec.rule, spec.rule.apply

    def adapt(flat, alpha, xs, ys, ms, xq):
        """One distinct (θ, α) on one task: the linearisation (task level) or the query outputs, and φ̂ if asked."""
        a = alpha if has_alpha else None
        phi = rule(spec.unravel(flat), xs, ys, ms, a) if want_params or not task_level else None
        flat_phi = ravel_pytree(phi)[0] if want_params else None
        if task_level:
            return linearise(spec, flat, xs, ys, ms, xq, a, full_query=False), flat_phi
        return apply(phi, xq), flat_phi

    def one(adapted, sigma, tau, power, ref, edges, scales, eps, xs, ys, ms, xq, mq):
        sd = None
        if task_level and regression:  # the per-task factor h_j on (τ², σ²): 1 when p = 0
            root = jnp.sqrt(spread_factor(support_spread(ys, ms), power, ref)).astype(tau.dtype)
            tau, sigma = tau * root, sigma * root
        if task_level:  # the linearised task posterior: per-point sd; logits → mean-field probabilities
            mean, var, probs = condition_one(spec, adapted, ys, ms, xq.shape[0], tau, sigma if regression else None)
            if regression:  # the per-point factor c(d) by distance to the support: 1 with one bin
                var = var * distance_factor(support_distance(xs, xq, ms), edges, scales).astype(var.dtype)[:, None]
            out, sigma = (mean, jnp.sqrt(var)) if regression else (jnp.log(probs), None)
            if regression:
                sd = sigma if mq is None else jnp.where(mq[:, None], sigma, jnp.nan)
        else:
            out = adapted
        if regression:
            first, y = out, out + sigma * eps.astype(out.dtype)
            if mq is not None:
                first = jnp.where(mq[:, None], first, jnp.nan)
                y = jnp.where(mq[:, None], y, jnp.nan)
        else:  # Gumbel-max: argmax(logits + g) ~ Categorical(softmax(logits))
            first = jax.nn.softmax(out, axis=-1)
            y = jnp.argmax(out + eps.astype(out.dtype), axis=-1).astype(jnp.int32)
            if mq is not None:
                first = jnp.where(mq[:, None], first, jnp.nan)
                y = jnp.where(mq, y, -1)
        return first, y, sd

    def chunk(eps, flat, alpha, inverse, sigma, tau, power, ref, edges, scales, xs, ys, ms, xq, mq):
        """``flat``, ``alpha``: the block's U distinct (θ, α); ``inverse`` ``(D,)``: each draw's row among them."""
        tasks_map = lambda f, a: jax.vmap(adapt, in_axes=(None, None, 0, 0, 0, 0))(f, a, xs, ys, ms, xq)
        adapted, flat_phi = jax.vmap(tasks_map)(flat, alpha)

        def per_draw(i, s, t, p, r, de, ds, e):
            mine = jax.tree.map(lambda a: a[i], adapted)
            return jax.vmap(one, in_axes=(0, None, None, None, None, None, None, 0, 0, 0, 0, 0, 0))(
                mine, s, t, p, r, de, ds, e, xs, ys, ms, xq, mq)

        first, y, sd = jax.vmap(per_draw)(inverse, sigma, tau, power, ref, edges, scales, eps)
        return first, y, None if flat_phi is None else flat_phi[inverse], sd

    if len(KERNEL_CACHE) >= 32:
        KERNEL_CACHE.clear()
    KERNEL_CACHE[cache_key] = (spec.rule, jax.jit(chunk))
    return KERNEL_CACHE[cache_key][1]


def _noise_impl(key, draw_idx, task_idx, shape, gumbel):
    """Standard normal (or Gumbel) noise ``(D, B, *shape)``; draw s, task j use ``fold_in(fold_in(key, s), j)``."""

    def one(i, j):
        k = jax.random.fold_in(jax.random.fold_in(key, i), j)
        return jax.random.gumbel(k, shape) if gumbel else jax.random.normal(k, shape)

    return jax.vmap(lambda i: jax.vmap(lambda j: one(i, j))(task_idx))(draw_idx)


# XLA's optimising backend takes seconds to compile the threefry hash and gains nothing on
# a few thousand random numbers, so the noise is compiled separately without it.
try:
    chunk_noise = jax.jit(_noise_impl, static_argnums=(3, 4), compiler_options={"xla_backend_optimization_level": 0})
except TypeError:  # jax versions without compiler_options
    chunk_noise = jax.jit(_noise_impl, static_argnums=(3, 4))
