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

from hbmeta.inference.laplace import run_laplace
from hbmeta.inference.nuts import run_nuts
from hbmeta.inference.svgd import run_svgd
from hbmeta.inference.svi import run_svi
from hbmeta.inference.common import make_posterior
from hbmeta.model.hierarchical import check_tasks
from hbmeta.model.posterior import Posterior
from hbmeta.model.spec import ModelSpec

METHODS = {"nuts": run_nuts, "hmc": run_nuts, "svi": run_svi, "laplace": run_laplace, "svgd": run_svgd}


def _allowed_settings(method: str) -> list[str]:
    params = inspect.signature(METHODS[method]).parameters
    names = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and n != "key"]
    if method == "hmc":
        names = [n for n in names if n not in ("kernel", "max_tree_depth")]
    return names


def infer(spec: ModelSpec, tasks, *, method: str, key, **settings) -> Posterior:
    """The posterior over θ by ``method``: ``"nuts"``, ``"hmc"``, ``"svi"``, ``"laplace"`` or ``"svgd"``.

    ``settings`` are the method's keyword arguments (see :func:`~hbmeta.run_nuts`,
    :func:`~hbmeta.run_svi`, :func:`~hbmeta.run_laplace`, :func:`~hbmeta.run_svgd`).
    An unknown method or setting raises ``ValueError`` before any compilation.

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
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known; expected one of {list(METHODS)}")
    allowed = _allowed_settings(method)
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(f"settings {unknown} are not known for method={method!r}; expected some of {allowed}")
    if method == "hmc":
        settings = dict(settings, kernel="hmc")
    return METHODS[method](spec, tasks, key=key, **settings)


def maml_posterior(spec: ModelSpec, params, tasks, *, noise=None, step_size=None) -> Posterior:
    """A MAML point estimate θ as a one-chain, one-draw :class:`~hbmeta.Posterior` (method ``"maml"``).

    For regression the noise scale σ is the root-mean-square residual of the
    adapted models on ``tasks``' query sets, ``σ² = mean_{j,q} ‖y_q − f_φ̂_j(x_q)‖²/o``
    (masked points excluded), unless ``noise`` is given. ``step_size``
    records a meta-learned α (e.g. ``MAMLResult.step_size`` with Meta-SGD's
    scalar α) when it differs from the rule's.

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
    structure = jax.tree.structure(spec.params)
    if jax.tree.structure(params) != structure:
        raise ValueError(f"params has tree structure {jax.tree.structure(params)}; expected {structure}")
    theta = spec.ravel(params)
    draws = {"theta": theta[None, None]}
    if step_size is not None:
        if jnp.ndim(step_size) != 0 or not float(step_size) > 0:
            raise ValueError(f"step_size={step_size!r}; expected a positive scalar")
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
        elif not float(noise) > 0:
            raise ValueError(f"noise={noise!r}; expected a positive number")
        draws["noise"] = jnp.full((1, 1), noise)
    settings = {"noise": None if noise is None else float(np.asarray(noise))}
    return make_posterior(spec, draws, method="maml", settings=settings)
