"""The hierarchical model's specification: prior on θ, likelihood, adaptation.

    θ ~ N(μ, diag(s²))                         (prior, one Normal per parameter)
    α ~ LogNormal(m, v²)                        (optional: inferred inner step size)
    σ ~ HalfNormal(c)                           (optional: inferred noise scale)
    φ̂_j = adapt(θ, S_j; α)                      (gradient-step estimator, per task)
    y_q ~ N(f_φ̂_j(x_q), σ²) or Categorical(logits = f_φ̂_j(x_q))   (query likelihood)

The "explicit" variant replaces φ̂_j by a latent φ_j ~ N(θ, τ²I) scored on
both support and query sets: the exact hierarchical model that the
gradient-step estimator approximates. The task-posterior option
(:class:`TaskPosterior`) integrates φ_j ~ N(θ, τ²I) out instead, with the
network linearised at φ̂_j. θ is one flat vector site ``"theta"``
(``jax.flatten_util.ravel_pytree`` of the params template), so every guide and
sampler sees a plain vector and ``unravel`` gives the network's params back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from hbmeta.adaptation.steps import GradientSteps
from hbmeta.base.validate import check_type


def _positive_leaves(name, value):
    for leaf in jax.tree.leaves(value):
        arr = jnp.asarray(leaf)
        if not bool(jnp.all(jnp.isfinite(arr))) or not bool(jnp.all(arr > 0)):
            raise ValueError(f"{name}={value!r}; expected positive, finite values")


def _is_scalar(value) -> bool:
    """A Python number or a 0-d array (not a container of values)."""
    return not isinstance(value, (dict, list, tuple)) and jnp.ndim(value) == 0 and len(jax.tree.leaves(value)) == 1


@dataclass(frozen=True)
class NormalPrior:
    """θ ~ N(loc, scale²) independently per parameter.

    ``loc`` and ``scale`` are scalars or pytrees with the params' structure
    (one value per leaf, broadcast over the leaf). ``centre``, if given, is a
    params pytree used as the prior mean (e.g. a MAML estimate, for a local
    posterior); it overrides ``loc``.
    """

    loc: Any = 0.0
    scale: Any = 1.0
    centre: Any = None

    def __post_init__(self):
        _positive_leaves("prior scale", self.scale)
        for leaf in jax.tree.leaves(self.loc):
            if not bool(jnp.all(jnp.isfinite(jnp.asarray(leaf)))):
                raise ValueError(f"prior loc={self.loc!r}; expected finite values")


@dataclass(frozen=True)
class NormalLikelihood:
    """``y ~ N(f(x), σ²)``: σ fixed (``noise``) or inferred with ``σ ~ HalfNormal(noise_prior_scale)``."""

    noise: float | None = None
    noise_prior_scale: float = 1.0

    def __post_init__(self):
        if self.noise is not None:
            _positive_leaves("noise", self.noise)
        _positive_leaves("noise_prior_scale", self.noise_prior_scale)

    @property
    def regression(self) -> bool:
        return True


@dataclass(frozen=True)
class CategoricalLikelihood:
    """``y ~ Categorical(logits = f(x))`` for integer class labels."""

    @property
    def regression(self) -> bool:
        return False


@dataclass(frozen=True)
class StepSizePrior:
    """Inferred inner step size: ``log α ~ N(loc, scale²)`` (default centred at log 0.01)."""

    loc: float = math.log(0.01)
    scale: float = 0.5

    def __post_init__(self):
        _positive_leaves("step_size_prior scale", self.scale)


@dataclass(frozen=True)
class TaskPosterior:
    """Integrate each task's parameters out: φ_j ~ N(μ_j, τ²I), linearised at φ̂_j (:mod:`hbmeta.model.task_posterior`).

    With this option the query likelihood of task j is ``log p(Q_j | S_j, θ, τ, σ)``
    of the network linearised at the gradient-step estimate φ̂_j, a Gaussian with
    a full covariance over the query points, instead of ``log p(Q_j | φ̂_j)``;
    predictions get a per-point variance. ``tau`` is τ > 0 fixed, or None for a
    latent site ``"tau" ~ HalfNormal(tau_prior_scale)``. ``prior_mean`` is μ_j:
    ``"adapted"`` (φ̂_j(θ), the default: better on held-out folds of the sinusoid
    training tasks) or ``"theta"`` (θ: the hierarchical model φ_j ~ N(θ, τ²I)
    itself). The in-model integral is regression-only (:func:`~hbmeta.build_model`
    raises ``ValueError`` for a categorical likelihood); prediction works for both
    (classification needs a fixed τ or ``"tau"`` draws, e.g. from
    :func:`~hbmeta.fit_task_hyperparameters`).
    """

    tau: float | None = None
    tau_prior_scale: float = 1.0
    prior_mean: str = "adapted"

    def __post_init__(self):
        if self.prior_mean not in ("adapted", "theta"):
            raise ValueError(f"prior_mean={self.prior_mean!r}; expected 'adapted' (φ̂_j) or 'theta' (θ)")
        if self.tau is not None:
            if not _is_scalar(self.tau):
                raise ValueError(f"tau={self.tau!r}; expected a positive scalar or None (inferred)")
            _positive_leaves("tau", self.tau)
        if not _is_scalar(self.tau_prior_scale):
            raise ValueError(f"tau_prior_scale={self.tau_prior_scale!r}; expected a positive scalar")
        _positive_leaves("tau_prior_scale", self.tau_prior_scale)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build the model and to predict from a posterior.

    Args:
        rule: the adaptation rule (:class:`~hbmeta.GradientSteps`), which
            carries ``apply``, the inner loss, α and the number of steps.
        params: a params template (pytree); its structure and shapes define θ.
        prior: :class:`NormalPrior` on θ.
        likelihood: :class:`NormalLikelihood` or :class:`CategoricalLikelihood`.
        step_size_prior: a :class:`StepSizePrior` to infer α, or None to fix it.
        explicit_tau: τ > 0 for the explicit variant φ_j ~ N(θ, τ²I), else None.
        task_posterior: a :class:`TaskPosterior` to integrate each task's
            parameters out (linearised task posterior), else None.
    """

    rule: GradientSteps
    params: Any
    prior: NormalPrior = field(default_factory=NormalPrior)
    likelihood: Any = field(default_factory=NormalLikelihood)
    step_size_prior: StepSizePrior | None = None
    explicit_tau: float | None = None
    task_posterior: TaskPosterior | None = None

    def __post_init__(self):
        check_type("rule", self.rule, GradientSteps)
        check_type("prior", self.prior, NormalPrior)
        if not isinstance(self.likelihood, (NormalLikelihood, CategoricalLikelihood)):
            raise ValueError(
                f"likelihood is a {type(self.likelihood).__name__}; "
                "expected hbmeta.NormalLikelihood or hbmeta.CategoricalLikelihood"
            )
        if self.step_size_prior is not None and not isinstance(self.step_size_prior, StepSizePrior):
            raise ValueError(
                f"step_size_prior is a {type(self.step_size_prior).__name__}; expected hbmeta.StepSizePrior or None"
            )
        if self.explicit_tau is not None:
            _positive_leaves("explicit_tau", self.explicit_tau)
            if self.step_size_prior is not None:
                raise ValueError(
                    "step_size_prior is set with explicit_tau; expected only one: the explicit variant "
                    "has latent φ_j and no inner gradient steps, so it has no step size to infer"
                )
        if self.task_posterior is not None:
            if not isinstance(self.task_posterior, TaskPosterior):
                raise ValueError(
                    f"task_posterior is a {type(self.task_posterior).__name__}; expected hbmeta.TaskPosterior or None"
                )
            if self.explicit_tau is not None:
                raise ValueError(
                    "task_posterior is set with explicit_tau; expected only one: both put φ_j ~ N(θ, τ²I) under "
                    "each task, the explicit variant as latent sites, the task posterior integrated out"
                )
        structure = jax.tree.structure(self.params)
        if not jax.tree.leaves(self.params):
            raise ValueError("params has no array leaves; expected a params pytree with at least one array")
        if self.prior.centre is not None:
            if jax.tree.structure(self.prior.centre) != structure:
                raise ValueError(
                    f"prior centre has tree structure {jax.tree.structure(self.prior.centre)}; "
                    f"expected the params' structure {structure}"
                )
            for c, p in zip(jax.tree.leaves(self.prior.centre), jax.tree.leaves(self.params)):
                if jnp.shape(c) != jnp.shape(p):
                    raise ValueError(
                        f"prior centre has a leaf of shape {jnp.shape(c)}; expected the params' "
                        f"leaf shape {jnp.shape(p)}"
                    )
        for name in ("loc", "scale"):
            value = getattr(self.prior, name)
            if _is_scalar(value):
                continue
            if jax.tree.structure(value) != structure:
                raise ValueError(
                    f"prior {name} has tree structure {jax.tree.structure(value)}; "
                    f"expected a scalar or the params' structure {structure}"
                )
            for v, p in zip(jax.tree.leaves(value), jax.tree.leaves(self.params)):
                try:
                    jnp.broadcast_shapes(jnp.shape(v), jnp.shape(p))
                    ok = jnp.broadcast_shapes(jnp.shape(v), jnp.shape(p)) == jnp.shape(p)
                except ValueError:
                    ok = False
                if not ok:
                    raise ValueError(
                        f"prior {name} has a leaf of shape {jnp.shape(v)}; expected a shape that "
                        f"broadcasts to the params' leaf shape {jnp.shape(p)}"
                    )

    @property
    def flat_template(self) -> jax.Array:
        return ravel_pytree(self.params)[0]

    @property
    def num_params(self) -> int:
        """P, the length of the flat θ vector."""
        return int(self.flat_template.shape[0])

    def unravel(self, flat):
        """Params pytree from one flat θ vector of length P."""
        return ravel_pytree(self.params)[1](flat)

    def ravel(self, params) -> jax.Array:
        """The flat θ vector of a params pytree."""
        return ravel_pytree(params)[0]

    def _per_param(self, value):
        dtype = self.flat_template.dtype
        if _is_scalar(value):
            return jnp.full((self.num_params,), jnp.asarray(value, dtype=dtype))
        leaves = jax.tree.leaves(self.params)
        parts = [
            jnp.broadcast_to(jnp.asarray(v, dtype), jnp.shape(p)).ravel()
            for v, p in zip(jax.tree.leaves(value), leaves)
        ]
        return jnp.concatenate(parts)

    def prior_loc_scale(self):
        """``(loc, scale)``: the prior's flat mean and standard deviation vectors (length P)."""
        loc = self.ravel(self.prior.centre) if self.prior.centre is not None else self._per_param(self.prior.loc)
        return loc, self._per_param(self.prior.scale)
