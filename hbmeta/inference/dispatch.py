"""One entry point for every inference method, and MAML's point estimate as a posterior.

:func:`infer` checks the method name and its settings (names and values)
before anything is compiled, then calls :func:`~hbmeta.run_nuts`,
:func:`~hbmeta.run_svi`, :func:`~hbmeta.run_laplace` or
:func:`~hbmeta.run_svgd`. :func:`maml_posterior` wraps a MAML θ as a
one-draw :class:`~hbmeta.Posterior`, so the same predictive code and metrics
apply to the baseline.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np

from hbmeta.base.jax_checks import check_tree
from hbmeta.base.validate import check_positive
from hbmeta.inference import registry
from hbmeta.inference.common import make_posterior
from hbmeta.model.hierarchical import check_tasks
from hbmeta.model.posterior import Posterior
from hbmeta.model.spec import ModelSpec
from hbmeta.tasks.sharding import place_tasks


def allowed_settings(method: str) -> list[str]:
    """The keyword settings :func:`infer` accepts for ``method`` (its function's, less those it fixes)."""
    m = registry.get(method)
    params = inspect.signature(m.load()).parameters
    return [n for n, p in params.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and n != "key" and n not in m.fixed
            and not (n == "max_tree_depth" and m.fixed.get("kernel") == "hmc")]


def infer(spec: ModelSpec, tasks, *, method: str, key, **settings) -> Posterior:
    """The posterior over θ by ``method``, one of the names in :data:`hbmeta.inference.registry.METHODS`.

    ``"nuts"``, ``"hmc"``, ``"svi"``, ``"laplace"``, ``"svgd"``, ``"ensemble"``
    call :func:`~hbmeta.run_nuts`, :func:`~hbmeta.run_svi`,
    :func:`~hbmeta.run_laplace`, :func:`~hbmeta.run_svgd` and
    :func:`~hbmeta.run_ensemble` with ``settings`` as their keyword arguments;
    ``"maml"`` wraps the point estimate given as ``init`` (a params pytree or a
    :class:`~hbmeta.MAMLResult`) with :func:`maml_posterior`. An unknown
    method or setting raises ``ValueError`` before any compilation.
    ``devices=`` (an int, a list of devices or a Mesh; every method) splits
    the tasks over several devices (:func:`hbmeta.tasks.sharding.resolve_mesh`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from hbmeta import GradientSteps, LinearGaussian, ModelSpec, NormalLikelihood, infer, linear
        >>> spec = ModelSpec(GradientSteps(linear().apply, step_size=0.1), {"w": jnp.zeros(2)},
        ...                  likelihood=NormalLikelihood(noise=0.5))
        >>> tasks = LinearGaussian(dim=2).sample(jax.random.key(0), 10)
        >>> post = infer(spec, tasks, method="laplace", key=jax.random.key(1), num_steps=50,
        ...              num_draws=10, progress=False)
        >>> post.method, post.samples["theta"].shape
        ('laplace', (1, 10, 2))
    """
    devices = settings.pop("devices", None)
    m = registry.get(method)
    if m.kind == "point":
        unknown = sorted(set(settings) - {"init", "noise", "step_size", "progress"})
        if unknown:
            raise ValueError(f"settings {unknown} are not known for method={method!r}; expected some of "
                             "['init', 'noise', 'step_size']")
        init = settings.get("init")
        if init is None:
            raise ValueError("method='maml' needs init=: the MAML θ (a params pytree or a hbmeta.MAMLResult)")
        params = getattr(init, "params", init)
        return maml_posterior(spec, params, place_tasks(tasks, devices), noise=settings.get("noise"),
                              step_size=settings.get("step_size", getattr(init, "step_size", None)))
    allowed = allowed_settings(method)
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(f"settings {unknown} are not known for method={method!r}; expected some of {allowed}")
    if "devices" in allowed:
        settings["devices"] = devices
    else:  # a method without devices= of its own: its compiled steps follow the tasks' placement
        tasks = place_tasks(tasks, devices)
    return m.load()(spec, tasks, key=key, **settings, **m.fixed)


def maml_posterior(spec: ModelSpec, params, tasks, *, noise=None, step_size=None, tau=None) -> Posterior:
    """A MAML point estimate θ as a one-chain, one-draw :class:`~hbmeta.Posterior` (method ``"maml"``).

    For regression the noise scale σ is the root-mean-square residual of the
    adapted models on ``tasks``' query sets, ``σ² = mean_{j,q} ‖y_q − f_φ̂_j(x_q)‖²/o``
    (masked points excluded), unless ``noise`` is given. ``step_size``
    records a meta-learned α (e.g. ``MAMLResult.step_size`` with Meta-SGD's
    scalar α) when it differs from the rule's. ``tau`` records τ for a spec
    with the task-level option (``spec.task_posterior``), e.g. from
    :func:`~hbmeta.fit_task_hyperparameters` on a fold of training tasks θ
    did not see (σ from the training residuals is biased low: θ overfits its
    own tasks; pass the σ fitted with τ as ``noise``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from hbmeta import GradientSteps, LinearGaussian, ModelSpec, linear, maml_posterior
        >>> spec = ModelSpec(GradientSteps(linear().apply, step_size=0.1), {"w": jnp.zeros(2)})
        >>> tasks = LinearGaussian(dim=2).sample(jax.random.key(0), 10)
        >>> post = maml_posterior(spec, {"w": jnp.ones(2)}, tasks)
        >>> post.samples["theta"].shape, post.samples["noise"].shape
        ((1, 1, 2), (1, 1))
    """
    check_tasks(spec, tasks)
    check_tree("params", params, spec.params)
    theta = spec.ravel(params)
    draws = {"theta": theta[None, None]}
    if step_size is not None:
        check_positive("step_size", step_size, what="a positive scalar")
        draws["step_size"] = jnp.full((1, 1), float(step_size))
    if spec.likelihood.regression:
        if noise is None:
            alpha = None if step_size is None else float(step_size)
            phi = spec.rule.adapt_tasks(params, tasks, alpha)
            pred = jax.vmap(spec.rule.apply)(phi, tasks.x_query)
            sq = jnp.mean(jnp.square(pred - tasks.y_query), axis=-1)
            if tasks.query_mask is None:
                noise = jnp.sqrt(jnp.mean(sq))
            else:
                w = tasks.query_mask.astype(sq.dtype)
                noise = jnp.sqrt(jnp.sum(sq * w) / jnp.maximum(jnp.sum(w), 1.0))
        else:
            check_positive("noise", noise)
        draws["noise"] = jnp.full((1, 1), noise)
    if tau is not None:
        if spec.task_posterior is None:
            raise ValueError(f"tau={tau!r} is given but spec.task_posterior is None; expected a spec with "
                             "hbmeta.TaskPosterior (τ is its prior scale)")
        check_positive("tau", tau)
        draws["tau"] = jnp.full((1, 1), float(tau))
    settings = {"noise": None if noise is None else float(np.asarray(noise)),
                "tau": None if tau is None else float(tau)}
    return make_posterior(spec, draws, method="maml", settings=settings)
