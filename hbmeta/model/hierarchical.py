"""The hierarchical-Bayes model over θ as a NumPyro model function.

For a :class:`~hbmeta.ModelSpec` and a :class:`~hbmeta.TaskBatch` of ``T``
tasks, :func:`build_model` gives the model

    θ ~ N(μ, diag(s²))                               site "theta", shape (P,)
    log α ~ N(m, v²), α = exp(log α)                 site "log_step_size" (optional)
    σ ~ HalfNormal(c)                                site "noise" (when not fixed)
    for each task j (plate "tasks", optionally subsampled):
        φ̂_j = adapt(θ, S_j; α)                        (vmapped, never stored)
        y_q ~ N(f_φ̂_j(x_q), σ²) | Categorical(logits = f_φ̂_j(x_q))   site "y", plate "points"

so ``p(θ | tasks) ∝ p(θ) Π_j p(Q_j | φ̂_j(θ))`` (docs/references.md, MAML as
empirical Bayes). The explicit
variant (``spec.explicit_tau = τ``) has latent ``φ_j ~ N(θ, τ²I)`` (site
``"phi"`` in the task plate) scored on the support set (site ``"y_support"``,
plate ``"support_points"``) and on the query set (site ``"y"``). With the
task-posterior option (``spec.task_posterior``, regression only) φ_j ~ N(θ, τ²I)
is integrated out of the network linearised at φ̂_j, and each task's query set
is one observation ``"y" ~ MultivariateNormal(m_Q, C_Q + σ²I)`` of its ``M·o``
values given the support set (:mod:`hbmeta.model.task_linearised`), with the
site ``"tau" ~ HalfNormal(c)`` when τ is not fixed: ``p(θ, τ, σ | tasks) ∝
p(θ) p(τ) p(σ) Π_j p(Q_j | S_j, θ, τ, σ)``.

The task plate is ``dim=-2`` and the point plates ``dim=-1``, so the log
likelihood of ``"y"`` has shape ``(T, M)``; inside the model ``"phi"`` has shape
``(T, 1, P)`` (the results of the inference functions squeeze it to ``(T, P)``).
The model has no deterministic sites (they would make NumPyro re-run the
model, and so every task's adaptation, once per draw); the results add
``"step_size" = exp(log_step_size)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.linalg import solve_triangular

from hbmeta.base.validate import check_type
from hbmeta.model.spec import ModelSpec
from hbmeta.model.task_linearised import query_gaussian_one
from hbmeta.tasks.batch import TaskBatch
from hbmeta.tasks.store import LAZY_TASKS


def _concrete(a):
    """``a`` as a numpy array, or None when it is traced (under jit, grad or vmap)."""
    try:
        return np.asarray(a)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_tasks(spec: ModelSpec, tasks, *, subsample_size=None, generated: bool = False) -> None:
    """Check that ``tasks`` fit ``spec`` (targets vs likelihood, shapes); raise ``ValueError`` if not.

    Shapes and dtypes are checked always (they are static even under ``jit``);
    the class-label range only when the labels are concrete arrays.
    A :class:`~hbmeta.GeneratedTasks` or :class:`~hbmeta.StoredTasks` is accepted only with
    ``generated=True`` and a ``subsample_size`` (its tasks are made or read only when a step takes them).
    """
    check_type("spec", spec, ModelSpec)
    if isinstance(tasks, LAZY_TASKS):
        kind = type(tasks).__name__
        if not generated:
            raise ValueError(
                f"tasks is a {kind}; expected a TaskBatch here (run_svi with subsample_size and "
                f"train_maml take {kind}; tasks.materialise() gives a TaskBatch)"
            )
        if subsample_size is None:
            raise ValueError(
                f"tasks is a {kind} with subsample_size=None; expected a subsample_size (each step "
                "makes or reads only the tasks it scores)"
            )
    else:
        check_type("tasks", tasks, TaskBatch, hint=" (see hbmeta.make_tasks)")
    num_tasks = tasks.num_tasks
    if subsample_size is not None:
        if int(subsample_size) != subsample_size or not 1 <= subsample_size <= num_tasks:
            raise ValueError(f"subsample_size={subsample_size!r}; expected an integer in [1, {num_tasks}] (the tasks)")
    if isinstance(tasks, LAZY_TASKS):
        tasks = tasks.take(jnp.zeros(1, jnp.int32))  # one task: its shapes and dtypes are those of every task
    regression = spec.likelihood.regression
    sides = [("query", tasks.x_query, tasks.y_query)]
    if spec.explicit_tau is not None:
        sides.append(("support", tasks.x_support, tasks.y_support))
    for side, x, y in sides:
        y_dtype = jnp.asarray(y).dtype if not hasattr(y, "dtype") else y.dtype
        if regression and not jnp.issubdtype(y_dtype, jnp.floating):
            raise ValueError(
                f"y_{side} has dtype {y_dtype} (shape {y.shape}): integer class labels; expected real "
                "targets for NormalLikelihood (use CategoricalLikelihood for classification)"
            )
        if not regression and not jnp.issubdtype(y_dtype, jnp.integer):
            raise ValueError(
                f"y_{side} has dtype {y_dtype} (shape {y.shape}): real values; expected integer class "
                "labels for CategoricalLikelihood (use NormalLikelihood for regression)"
            )
        try:
            out = jax.eval_shape(spec.rule.apply, spec.params, jax.ShapeDtypeStruct(x.shape[1:], x.dtype))
        except Exception as err:  # the user's apply function rejected the inputs
            raise ValueError(
                f"the network's apply failed on one task's x_{side} of shape {x.shape[1:]}: {err}"
            ) from err
        expected = y.shape[1:] if regression else y.shape[1:] + (out.shape[-1],)
        if out.shape != expected or (not regression and len(out.shape) != 2):
            what = "(points, outputs) like y" if regression else "(points, classes) logits"
            raise ValueError(
                f"the network maps one task's x_{side} {x.shape[1:]} to shape {out.shape}; "
                f"expected {expected}, {what}_{side} {y.shape[1:]}"
            )
        labels = None if regression else _concrete(y)
        if labels is not None:
            if labels.size and (labels.min() < 0 or labels.max() >= out.shape[-1]):
                raise ValueError(
                    f"y_{side} has labels in [{labels.min()}, {labels.max()}]; expected labels in "
                    f"[0, {out.shape[-1] - 1}] for the network's {out.shape[-1]} logits"
                )


def _likelihood(spec, outputs, noise):
    if spec.likelihood.regression:
        return dist.Normal(outputs, noise).to_event(1)
    return dist.Categorical(logits=outputs)


def _observe(name, spec, outputs, y, mask, noise, plate_name):
    fn = _likelihood(spec, outputs, noise)
    if mask is not None:
        fn = fn.mask(mask)
    with numpyro.plate(plate_name, y.shape[1], dim=-1):
        numpyro.sample(name, fn, obs=y)


def build_model(spec: ModelSpec, *, subspace=None):
    """The NumPyro model ``model(tasks, *, subsample_size=None)`` of ``spec``.

    ``subspace``: flat indices of θ (:func:`hbmeta.model.subspace.subspace_indices`)
    to sample, the others held at an anchor: the model is then
    ``model(tasks, anchor, *, subsample_size=None)`` with the latent site
    ``"theta_sub" ~ N(μ[idx], diag(s[idx]²))`` in place of ``"theta"`` and
    ``θ = anchor`` with ``θ[idx] = theta_sub`` (the exact conditional of the
    model given the other coordinates: the prior's coordinates are independent).
    With ``model(tasks, anchor, white)``, ``white`` a lower-triangular ``L``,
    the site is ``"theta_white"`` = u with ``θ[idx] = anchor[idx] + L u`` and
    the same prior pushed to u (a linear reparametrisation: for HMC the same
    as the mass matrix ``(L Lᵀ)⁻¹``).

    ``subsample_size=B`` scores a random subset of ``B`` tasks per call, with
    the likelihood scaled by ``T/B`` (``numpyro.plate`` subsampling): an
    unbiased estimate of the full log density for SVI on many tasks. The
    adapted φ̂_j are computed inside the model (differentiable by every
    sampler) and never recorded as sites.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from numpyro import handlers
        >>> from hbmeta import GradientSteps, LinearGaussian, ModelSpec, NormalLikelihood, build_model, linear
        >>> spec = ModelSpec(GradientSteps(linear().apply, step_size=0.1), {"w": jnp.zeros(2)},
        ...                  likelihood=NormalLikelihood(noise=0.5))
        >>> tasks = LinearGaussian(dim=2).sample(jax.random.key(0), 8)
        >>> tr = handlers.trace(handlers.seed(build_model(spec), 0)).get_trace(tasks)
        >>> tr["theta"]["value"].shape, tr["y"]["fn"].batch_shape
        ((2,), (8, 10))
    """
    check_type("spec", spec, ModelSpec)
    loc, scale = spec.prior_loc_scale()
    rule, lik = spec.rule, spec.likelihood
    ssp, tau = spec.step_size_prior, spec.explicit_tau
    tp = spec.task_posterior
    if tp is not None and not lik.regression:
        raise ValueError(
            "spec.task_posterior is set with a CategoricalLikelihood; expected a NormalLikelihood: the task-level "
            "integral has no closed form for classification, so it is not in the model (task_predictive and "
            "sample_predictive still use it to predict, with a fixed τ or 'tau' draws)"
        )

    # Jitted once per model: NumPyro runs the model eagerly during initialisation (several times), and an
    # eager lax loop inside the adaptation would otherwise be recompiled at every call. Under an outer
    # jit/grad/vmap these are ordinary nested, differentiable calls.
    @jax.jit
    def adapted_outputs(theta, x_support, y_support, support_mask, x_query, alpha):
        phi = jax.vmap(lambda x, y, m: rule(spec.unravel(theta), x, y, m, alpha))(x_support, y_support, support_mask)
        return jax.vmap(rule.apply)(phi, x_query)

    @jax.jit
    def task_gaussians(theta, xs, ys, ms, xq, yq, mq, alpha, tau_j, noise):
        one = lambda *a: query_gaussian_one(spec, theta, *a, alpha, tau_j, noise)
        return jax.vmap(one)(xs, ys, ms, xq, yq, mq)

    @jax.jit
    def explicit_outputs(flat_phi, x):
        return jax.vmap(rule.apply)(jax.vmap(spec.unravel)(flat_phi), x)

    moving = None if subspace is None else np.asarray(subspace)

    def model(tasks, anchor=None, white=None, *, subsample_size=None):
        check_tasks(spec, tasks, subsample_size=subsample_size, generated=True)
        if moving is None:
            theta = numpyro.sample("theta", dist.Normal(loc, scale).to_event(1))
        else:
            if anchor is None:
                raise ValueError("a subspace model needs anchor, the θ whose other coordinates are held fixed")
            anchor = jnp.asarray(anchor)
            if white is None:
                z = numpyro.sample("theta_sub", dist.Normal(loc[moving], scale[moving]).to_event(1))
            else:  # z = a + L u: the prior N(μ, diag(s²)) of z is N(L⁻¹(μ − a), (Lᵀ diag(s⁻²) L)⁻¹) for u
                a, lw = anchor[moving], jnp.asarray(white)
                u = numpyro.sample("theta_white", dist.MultivariateNormal(
                    solve_triangular(lw, loc[moving] - a, lower=True),
                    precision_matrix=lw.T @ (lw / scale[moving][:, None] ** 2)))
                z = a + lw @ u
            theta = anchor.at[moving].set(z)
        alpha = None
        if ssp is not None:
            log_alpha = numpyro.sample("log_step_size", dist.Normal(ssp.loc, ssp.scale))
            alpha = jnp.exp(log_alpha)  # not a deterministic site: that would make NumPyro replay the model per draw
        noise = None
        if lik.regression:
            noise = lik.noise
            if noise is None:
                noise = numpyro.sample("noise", dist.HalfNormal(lik.noise_prior_scale))
        if tp is not None:
            tau_j = tp.tau if tp.tau is not None else numpyro.sample("tau", dist.HalfNormal(tp.tau_prior_scale))
        with numpyro.plate("tasks", tasks.num_tasks, subsample_size=subsample_size, dim=-2) as idx:
            batch = tasks if subsample_size is None else tasks.take(idx)
            if tp is not None:
                mean, tril = task_gaussians(theta, *batch.support(), *batch.query(), alpha, tau_j, noise)
                y = batch.y_query.reshape(mean.shape)[:, None]
                numpyro.sample("y", dist.MultivariateNormal(mean[:, None], scale_tril=tril[:, None]), obs=y)
                return
            if tau is None:
                outputs = adapted_outputs(theta, *batch.support(), batch.x_query, alpha)
            else:
                flat = numpyro.sample("phi", dist.Normal(theta, tau).to_event(1))[:, 0, :]  # (B, 1, P) -> (B, P)
                _observe("y_support", spec, explicit_outputs(flat, batch.x_support), batch.y_support,
                         batch.support_mask, noise, "support_points")
                outputs = explicit_outputs(flat, batch.x_query)
            _observe("y", spec, outputs, batch.y_query, batch.query_mask, noise, "points")

    return model
