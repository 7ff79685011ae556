"""Markov chains of a NumPyro HMC/NUTS kernel, run in compiled chunks that can be checkpointed.

NumPyro's ``MCMC`` runs warm-up and sampling as one compiled loop each, so
a run stopped at 90% keeps nothing. Here the kernel's own transition
(``sampler.sample``, the one ``MCMC`` calls) runs in a ``fori_loop`` of
``chunk_size`` transitions; between chunks the progress is shown and the
chains' whole state can be saved: position, potential and gradient, step
size, mass matrix, the dual-averaging and windowed-adaptation state of the
warm-up, the transition counter and every chain's PRNG key (NumPyro's
``HMCState``). A resumed run makes the same calls with the same state, so it
ends bit for bit where an uninterrupted one ends, warm-up included. Each
transition records the constrained sites (NumPyro's ``postprocess_fn``, as
``MCMC.get_samples`` gives them) and the diagnostics ``diverging``,
``accept_prob``, ``step_size``, ``num_steps`` and ``potential_energy``.

Chains are batched as NumPyro's ``chain_method`` says: ``"vectorized"``
(``vmap``), ``"parallel"`` (``pmap``, a device per chain) or ``"sequential"``
(``lax.map``, one chain at a time, least memory).

Example:
    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import NUTS
    >>> def model(y):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> draws, stats = sample_chains(NUTS(model), jnp.ones(4), key=jax.random.key(0), num_chains=2,
    ...                              num_warmup=100, num_samples=200, progress=False)
    >>> draws["mu"].shape, stats["diverging"].shape
    ((2, 200), (2, 200))
    >>> abs(float(draws["mu"].mean()) - 1.0) < 0.3  # posterior N(0.998, 0.5²)
    True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hbmeta.base.progress import run_in_chunks
from hbmeta.base.validate import check_int

STAT_NAMES = ("diverging", "accept_prob", "step_size", "num_steps", "potential_energy")
_STAT_DTYPES = (bool, np.float32, np.float32, np.int32, np.float32)
CHAIN_METHODS = ("parallel", "vectorized", "sequential")


def default_chunk_size(total: int) -> int:
    """Transitions per chunk when none is given: about a twentieth of ``total``, at least 10, at most ``total``."""
    return min(max(10, -(-total // 20)), total)


def _record(sites, state):
    """One transition as a float32 vector: the constrained sites' values, then the five statistics."""
    stats = (state.diverging, state.accept_prob, state.adapt_state.step_size, state.num_steps,
             state.potential_energy)
    parts = [jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(sites)]
    return jnp.concatenate(parts + [jnp.stack([jnp.asarray(s, jnp.float32) for s in stats])])


def sample_chains(sampler, *model_args, key, num_chains: int, num_warmup: int, num_samples: int,
                  chain_method: str = "vectorized", init_params=None, chain_args=(), chunk_size: int | None = None,
                  checkpoint=None, progress: bool = True, label: str = "MCMC"):
    """``(draws, stats)``: ``num_samples`` draws per chain after ``num_warmup`` adapting transitions.

    Args:
        sampler: a NumPyro ``HMC`` or ``NUTS`` kernel (not yet initialised).
        *model_args: the model's arguments (passed to the compiled loop, not
            captured as constants).
        key: PRNG key; chain c's is ``split(key, num_chains)[c]``.
        num_chains, num_warmup, num_samples: as in NumPyro's ``MCMC``.
        chain_method: ``"vectorized"``, ``"parallel"`` or ``"sequential"``.
        init_params: unconstrained initial values with a leading chain axis,
            or None for the kernel's ``init_strategy``.
        chain_args: further model arguments, one value per chain (a leading
            chain axis), appended after ``model_args``: e.g. the anchor of a
            subspace model (:func:`~hbmeta.build_model` with ``subspace``),
            which differs between chains started from different modes.
        chunk_size: transitions per compiled chunk (default: about a
            twentieth of the run, at least 10).
        checkpoint: a :class:`~hbmeta.base.checkpoint.Checkpointer`, or None.
        progress: show the progress (accept probability, step size and
            divergent transitions of the last chunk).
        label: the progress line's name.

    Returns:
        ``draws``: site name → ``(num_chains, num_samples, *shape)``;
        ``stats``: :data:`STAT_NAMES` → ``(num_chains, num_samples)``; both numpy.
    """
    num_chains = check_int("num_chains", num_chains)
    num_warmup = check_int("num_warmup", num_warmup, minimum=0)
    num_samples = check_int("num_samples", num_samples)
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method={chain_method!r}; expected one of {list(CHAIN_METHODS)}")
    total = num_warmup + num_samples
    chunk = default_chunk_size(total) if chunk_size is None else min(check_int("chunk_size", chunk_size), total)

    chain_args = tuple(jnp.asarray(a) for a in chain_args)
    for a in chain_args:
        if a.shape[:1] != (num_chains,):
            raise ValueError(f"a chain argument has shape {a.shape}; expected a leading axis of {num_chains}, one "
                             "value per chain")

    def init_one(k, params, extra):
        return sampler.init(k, num_warmup, params, model_args=model_args + extra, model_kwargs={})

    state = jax.vmap(init_one)(jax.random.split(key, num_chains), init_params, chain_args)

    def sites_of(z, args):
        return sampler.postprocess_fn(args, {})(z)

    one = jax.tree.map(lambda x: x[0], state)
    template = jax.eval_shape(sites_of, one.z, model_args + tuple(a[0] for a in chain_args))
    width = jax.eval_shape(_record, template, one).shape[0]

    def run_chain(st, shared, extra, n):
        args = shared + extra

        def body(i, carry):
            st, buf = carry
            st = sampler.sample(st, args, {})
            return st, buf.at[i].set(_record(sites_of(st.z, args), st))

        return jax.lax.fori_loop(0, n, body, (st, jnp.zeros((chunk, width), jnp.float32)))

    if chain_method == "parallel":
        batched = jax.pmap(run_chain, in_axes=(0, None, 0, None))
    elif chain_method == "vectorized":
        batched = jax.jit(jax.vmap(run_chain, in_axes=(0, None, 0, None)))
    else:
        batched = jax.jit(lambda s, args, extra, n: jax.lax.map(lambda x: run_chain(x[0], args, x[1], n), (s, extra)))

    def run(st, n):
        st, buf = batched(st, model_args, chain_args, jnp.int32(n))
        return st, np.swapaxes(np.asarray(buf)[:, :n], 0, 1)  # (n, chains, width)

    def describe(values):
        div = int(values[..., -5].sum())
        return (f"accept {float(values[..., -4].mean()):.2f}, step size {float(values[-1, :, -3].mean()):.2g}, "
                f"{div} divergent")

    _, values = run_in_chunks(run, state, total, chunk_size=chunk, label=label, progress=progress,
                              describe=describe, checkpoint=checkpoint)
    kept = np.swapaxes(values[num_warmup:], 0, 1)  # (chains, num_samples, width)
    leaves, treedef = jax.tree.flatten(template)
    out, at = [], 0
    for leaf in leaves:
        size = int(np.prod(leaf.shape))
        out.append(kept[..., at:at + size].reshape(kept.shape[:2] + tuple(leaf.shape)).astype(leaf.dtype))
        at += size
    draws = jax.tree.unflatten(treedef, out)
    stats = {name: kept[..., at + i].astype(dtype) for i, (name, dtype) in enumerate(zip(STAT_NAMES, _STAT_DTYPES))}
    return draws, stats
