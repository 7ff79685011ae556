"""Shared pieces of the inference methods: argument checks, initial values, results.

Every method checks its arguments here *before* anything is traced or
compiled, turns a user's initial point (a params pytree, a
:class:`~hbmeta.MAMLResult` or a :class:`~hbmeta.Posterior`) into initial
values per model site, and packs its draws into a :class:`~hbmeta.Posterior`
with leading ``(chain, draw)`` axes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro import handlers
from numpyro.distributions import biject_to

from hbmeta.base.jax_checks import as_key  # noqa: F401  (re-exported: the methods' checks in one import)
from hbmeta.base.validate import check_choice, check_int  # noqa: F401  (likewise)
from hbmeta.inference import registry
from hbmeta.maml.train import MAMLResult
from hbmeta.model.posterior import Posterior
from hbmeta.model.spec import ModelSpec


def check_optimizer(optimizer):
    """An optax optimiser (anything with ``init`` and ``update``) or ``ValueError``."""
    if optimizer is not None and not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise ValueError(
            f"optimizer is a {type(optimizer).__name__}; expected an optax optimiser "
            "(e.g. optax.adam(1e-2)) with init and update"
        )
    return optimizer


def make_optimizer(name: str, learning_rate: float | None = None):
    """The optax optimiser called ``name`` (``"adam"``, ``"adagrad"``, ``"sgd"`` …) with ``learning_rate``.

    ``"lbfgs"`` is L-BFGS with a backtracking (Armijo) line search: fast on a
    deterministic potential and quick to compile; it takes no learning rate.
    """
    if name == "lbfgs":
        return optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(max_backtracking_steps=20))
    factory = getattr(optax, name, None)
    if factory is None or not callable(factory):
        raise ValueError(f"optimizer={name!r} is not an optax optimiser; expected e.g. 'adam', 'adagrad' or 'lbfgs'")
    return factory(learning_rate)


def default_optimizer(method: str):
    """``(optimizer, description)``: the default optax optimiser of ``method`` from the method registry."""
    name, rate = registry.get(method).optimizer
    return make_optimizer(name, rate), name if rate is None else f"{name}({rate:g})"


def init_values(spec: ModelSpec, init, num_tasks: int) -> dict | None:
    """Initial values per model site from ``init`` (None, params pytree, MAMLResult or Posterior).

    A params pytree or a :class:`MAMLResult` sets ``"theta"`` (and, in the
    explicit variant, every ``φ_j`` to θ). A :class:`Posterior` sets every site
    it has to its mean draw (the step size through the mean of ``log α``).
    Sites without a value are left to the method's default strategy.
    """
    if init is None:
        return None
    if isinstance(init, Posterior):
        if init.samples["theta"].shape[-1] != spec.num_params:
            raise ValueError(
                f"init is a Posterior over {init.samples['theta'].shape[-1]} parameters; "
                f"expected {spec.num_params}, the length of this spec's θ"
            )
        values = {"theta": jnp.mean(jnp.asarray(init.samples["theta"]), axis=(0, 1))}
        for name in ("noise", "tau", "phi"):
            if name in init.samples and _wants(spec, name):
                values[name] = jnp.mean(jnp.asarray(init.samples[name]), axis=(0, 1))
        if "step_size" in init.samples and spec.step_size_prior is not None:
            values["log_step_size"] = jnp.mean(jnp.log(jnp.asarray(init.samples["step_size"])))
        if "phi" in values:
            if values["phi"].shape != (num_tasks, spec.num_params):
                values.pop("phi")
            else:
                values["phi"] = values["phi"][:, None, :]
    else:
        params = init.params if isinstance(init, MAMLResult) else init
        structure = jax.tree.structure(spec.params)
        if jax.tree.structure(params) != structure:
            raise ValueError(
                f"init has tree structure {jax.tree.structure(params)}; expected a Posterior, a MAMLResult "
                f"or params with the spec's structure {structure}"
            )
        for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(spec.params)):
            if jnp.shape(p) != jnp.shape(t):
                raise ValueError(f"init has a leaf of shape {jnp.shape(p)}; expected {jnp.shape(t)} like spec.params")
        values = {"theta": spec.ravel(params)}
    if not bool(jnp.all(jnp.isfinite(values["theta"]))):
        raise ValueError("init has NaN or infinite parameters; expected finite values")
    if spec.explicit_tau is not None and "phi" not in values:
        values["phi"] = jnp.broadcast_to(values["theta"], (num_tasks, 1, spec.num_params))
    return values


def _wants(spec, name):
    if name == "noise":
        return spec.likelihood.regression and spec.likelihood.noise is None
    if name == "tau":  # the task-level option's latent τ
        return spec.task_posterior is not None and spec.task_posterior.tau is None
    return spec.explicit_tau is not None


def latent_transforms(model, tasks) -> dict:
    """``{site: bijection from unconstrained space}`` for the model's latent sample sites."""
    tr = handlers.trace(handlers.seed(model, jax.random.key(0))).get_trace(tasks)
    return {
        name: biject_to(site["fn"].support)
        for name, site in tr.items()
        if site["type"] == "sample" and not site["is_observed"]
    }


def make_posterior(spec, draws, *, method, settings, sample_stats=None, info=None) -> Posterior:
    """A :class:`Posterior` from site draws with leading ``(chain, draw)`` axes.

    Squeezes ``"phi"`` from the model's ``(…, T, 1, P)`` to ``(…, T, P)``, adds
    ``"step_size" = exp(log_step_size)`` when α is inferred, and moves
    everything to host memory as numpy arrays.
    """
    samples = {}
    for name, value in draws.items():
        a = np.asarray(value)
        if name == "phi" and a.ndim == 5:
            a = a[:, :, :, 0, :]
        samples[name] = a
    if "log_step_size" in samples and "step_size" not in samples:
        samples["step_size"] = np.exp(samples["log_step_size"])
    stats = {k: np.asarray(v) for k, v in (sample_stats or {}).items()}
    return Posterior(samples, spec, method, dict(settings), stats, dict(info or {}))


def json_settings(**settings) -> dict:
    """Settings with non-JSON values (optimisers, callables) replaced by their type name."""
    out = {}
    for k, v in settings.items():
        if v is None or isinstance(v, (bool, int, float, str)):
            out[k] = v if not (isinstance(v, float) and not math.isfinite(v)) else str(v)
        else:
            out[k] = type(v).__name__
    return out
