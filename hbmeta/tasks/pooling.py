"""Classical linear baselines for grouped data: no pooling and partial pooling (a hierarchical linear model).

Both take the same :class:`~hbmeta.TaskBatch` es as hbmeta (standardised,
masked) and model each group ``j`` by a linear regression on the design
``φ(x) = [1, x]`` (intercept first, ``p = d + 1`` coefficients):

- **No pooling** (:func:`no_pooling`): each group is fitted alone on its
  support points, Bayesian linear regression with the conjugate prior
  ``β_j | σ_j² ~ N(0, v₀ σ_j² I)``, ``σ_j² ~ InvGamma(a₀, b₀)`` (defaults
  ``v₀ = 100``, ``a₀ = b₀ = 1`` in standardised units: vague). The posterior is
  ``V = (I/v₀ + ΦᵀΦ)⁻¹``, ``m = VΦᵀy``, ``a = a₀ + n/2``,
  ``b = b₀ + (yᵀy − mᵀV⁻¹m)/2``, and the predictive at ``x`` is Student-t with
  ``2a`` degrees of freedom, location ``φ(x)ᵀm`` and scale
  ``√(b/a · (1 + φ(x)ᵀVφ(x)))``.
- **Partial pooling** (:func:`partial_pooling`): the classical hierarchical
  linear model with varying, correlated intercepts and slopes (lme4's
  ``y ~ x + (x | group)`` made Bayesian), written in NumPyro and sampled by NUTS:

      μ ~ N(0, 2²),  τ ~ HalfNormal(1)  (per coefficient),  L ~ LKJCholesky(p, 2),  σ ~ HalfNormal(1)
      β_j = μ + diag(τ) L z_j,  z_j ~ N(0, I)                 (non-centred)
      y_ij ~ N(φ(x_ij)ᵀβ_j, σ²)

  fitted jointly on every point of the training groups and on the support
  points of the held-out groups (which condition those groups' β_j); the
  held-out query points are predicted by the mixture over draws.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS
from scipy import stats

from hbmeta.tasks.batch import TaskBatch


def design(x):
    """``[1, x]``: the intercept column then the inputs, ``(..., d) -> (..., d + 1)``."""
    x = np.asarray(x, dtype=np.float64)
    return np.concatenate([np.ones(x.shape[:-1] + (1,)), x], axis=-1)


def _check_tasks(name, tasks):
    if not isinstance(tasks, TaskBatch):
        raise ValueError(f"{name} is a {type(tasks).__name__}; expected hbmeta.TaskBatch")
    if tasks.y_support.ndim != 3 or tasks.y_support.shape[-1] != 1:
        raise ValueError(f"{name}.y_support has shape {tasks.y_support.shape}; "
                         "expected (tasks, points, 1) real targets")


def _mask(mask, shape):
    return np.ones(shape, bool) if mask is None else np.asarray(mask, bool)


class StudentT(NamedTuple):
    """A Student-t predictive per point: ``loc``, ``scale``, ``df``, each ``(T, M)``."""

    loc: np.ndarray
    scale: np.ndarray
    df: np.ndarray

    def interval(self, level: float):
        """The central ``level`` interval ``(lo, hi)``."""
        half = stats.t.ppf(0.5 + level / 2, self.df) * self.scale
        return self.loc - half, self.loc + half

    def metrics(self, y, mask=None) -> dict:
        """hbmeta's regression metrics (mse, nll, calibration error, coverage) against ``y`` ``(T, M)``."""
        y = np.asarray(y, np.float64)
        m = _mask(mask, y.shape)
        z = (y - self.loc) / self.scale
        nll = -(stats.t.logpdf(z, self.df) - np.log(self.scale))
        cdf = stats.t.cdf(z, self.df)
        levels = np.linspace(0.05, 0.95, 20)
        freq = np.array([np.mean(cdf[m] <= q) for q in levels])
        out = {"mse": float(np.mean(((y - self.loc) ** 2)[m])), "nll": float(np.mean(nll[m])),
               "calibration_error": float(np.sqrt(np.mean((freq - levels) ** 2)))}
        for level in (50, 90, 95):
            lo, hi = self.interval(level / 100)
            out[f"coverage_{level}"] = float(np.mean(((y >= lo) & (y <= hi))[m]))
        return out


class NoPooling(NamedTuple):
    """Each group's conjugate posterior: ``mean`` ``(T, p)``, ``cov`` ``V`` ``(T, p, p)``, ``a`` and ``b`` ``(T,)``."""

    mean: np.ndarray
    cov: np.ndarray
    a: np.ndarray
    b: np.ndarray

    def predict(self, x) -> StudentT:
        """The Student-t predictive at inputs ``x`` ``(T, M, d)``."""
        phi = design(x)
        loc = np.einsum("tmp,tp->tm", phi, self.mean)
        quad = np.einsum("tmp,tpq,tmq->tm", phi, self.cov, phi)
        scale = np.sqrt(self.b[:, None] / self.a[:, None] * (1.0 + quad))
        return StudentT(loc, scale, np.broadcast_to(2 * self.a[:, None], loc.shape))


def no_pooling(tasks: TaskBatch, *, prior_scale: float = 10.0, a0: float = 1.0, b0: float = 1.0) -> NoPooling:
    """Fit each task alone on its support points: conjugate Bayesian linear regression (module docstring).

    ``prior_scale² = v₀``. Closed form, float64 numpy.

    Example:
        >>> import numpy as np
        >>> from hbmeta import make_tasks
        >>> x = np.array([[[0.0], [1.0], [2.0]]]); y = 1.0 + 2.0 * x
        >>> t = make_tasks(x, y, x, y)
        >>> fit = no_pooling(t, prior_scale=1e3)
        >>> np.round(fit.mean, 3).tolist()
        [[1.0, 2.0]]
    """
    _check_tasks("tasks", tasks)
    for name, v in (("prior_scale", prior_scale), ("a0", a0), ("b0", b0)):
        if not float(v) > 0:
            raise ValueError(f"{name}={v!r}; expected a positive number")
    phi = design(tasks.x_support)
    y = np.asarray(tasks.y_support, np.float64)[..., 0]
    m = _mask(tasks.support_mask, y.shape).astype(np.float64)
    phi, y = phi * m[..., None], y * m
    p = phi.shape[-1]
    precision = np.eye(p) / prior_scale**2 + np.einsum("tkp,tkq->tpq", phi, phi)
    cov = np.linalg.inv(precision)
    mean = np.einsum("tpq,tkq,tk->tp", cov, phi, y)
    n = m.sum(axis=1)
    a = a0 + n / 2
    b = b0 + 0.5 * (np.sum(y**2, axis=1) - np.einsum("tp,tpq,tq->t", mean, precision, mean))
    return NoPooling(mean, cov, a, np.maximum(b, 1e-12))


class PartialPooling(NamedTuple):
    """NUTS draws of the hierarchical linear model for the held-out groups.

    - ``coef``: ``(C, S, T, p)`` the held-out groups' β_j draws.
    - ``noise``: ``(C, S)`` σ draws.
    - ``samples``: every site's draws (``mu``, ``tau``, ``noise``, …) with leading ``(C, S)``.
    - ``divergences``: the number of divergent transitions.
    """

    coef: np.ndarray
    noise: np.ndarray
    samples: dict
    divergences: int

    def predict_mean(self, x) -> np.ndarray:
        """``φ(x)ᵀβ_j`` per draw at inputs ``x`` ``(T, M, d)``: ``(C, S, T, M, 1)``."""
        return np.einsum("tmp,cstp->cstm", design(x), self.coef)[..., None]


def _hierarchical_linear(phi, y, group, num_groups):
    p = phi.shape[-1]
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0).expand([p]).to_event(1))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0).expand([p]).to_event(1))
    chol = numpyro.sample("L", dist.LKJCholesky(p, 2.0))
    sigma = numpyro.sample("noise", dist.HalfNormal(1.0))
    with numpyro.plate("groups", num_groups):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([p]).to_event(1))
    beta = mu + (z @ chol.T) * tau  # β_j = μ + diag(τ) L z_j
    mean = jnp.sum(phi * beta[group], axis=-1)
    with numpyro.plate("points", y.shape[0]):
        numpyro.sample("y", dist.Normal(mean, sigma), obs=y)


def _flatten_points(tasks, side, group_offset):
    x = np.asarray(getattr(tasks, f"x_{side}"))
    y = np.asarray(getattr(tasks, f"y_{side}"))[..., 0]
    m = _mask(getattr(tasks, f"{side}_mask"), y.shape)
    g = np.broadcast_to(np.arange(tasks.num_tasks)[:, None] + group_offset, y.shape)
    return design(x)[m], y[m], g[m]


def partial_pooling(train: TaskBatch, test: TaskBatch, *, key, num_chains: int = 2, num_warmup: int = 500,
                    num_samples: int = 500, target_accept_prob: float = 0.9, progress: bool = False) -> PartialPooling:
    """The hierarchical linear model (module docstring) by NUTS, for the held-out groups of ``test``.

    Observed: every support and query point of ``train`` and the support points
    of ``test``; ``test``'s query points are not used (predict them with
    :meth:`PartialPooling.predict_mean` and the ``noise`` draws).

    Example:
        >>> import jax
        >>> from hbmeta import LinearGaussian
        >>> fam = LinearGaussian(dim=1, num_support=3, num_query=5)
        >>> fit = partial_pooling(fam.sample(jax.random.key(0), 6), fam.sample(jax.random.key(1), 2),
        ...                       key=jax.random.key(2), num_chains=1, num_warmup=30, num_samples=20)
        >>> fit.coef.shape, fit.predict_mean(fam.sample(jax.random.key(1), 2).x_query).shape
        ((1, 20, 2, 2), (1, 20, 2, 5, 1))
    """
    _check_tasks("train", train)
    _check_tasks("test", test)
    if train.x_support.shape[-1] != test.x_support.shape[-1]:
        raise ValueError(f"test has {test.x_support.shape[-1]} input features; expected {train.x_support.shape[-1]} "
                         "like train")
    for name, v in (("num_chains", num_chains), ("num_warmup", num_warmup), ("num_samples", num_samples)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"{name}={v!r}; expected a positive integer")
    parts = [_flatten_points(train, "support", 0), _flatten_points(train, "query", 0),
             _flatten_points(test, "support", train.num_tasks)]
    phi, y, group = (np.concatenate(a) for a in zip(*parts))
    num_groups = train.num_tasks + test.num_tasks
    mcmc = MCMC(NUTS(_hierarchical_linear, target_accept_prob=target_accept_prob), num_warmup=int(num_warmup),
                num_samples=int(num_samples), num_chains=int(num_chains), chain_method="sequential",
                progress_bar=progress)
    mcmc.run(key, jnp.asarray(phi, jnp.float32), jnp.asarray(y, jnp.float32), jnp.asarray(group),
             num_groups, extra_fields=("diverging",))
    s = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    beta = s["mu"][:, :, None, :] + np.einsum("csgq,cspq->csgp", s["z"], s["L"]) * s["tau"][:, :, None, :]
    divergences = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    return PartialPooling(beta[:, :, train.num_tasks:], s["noise"], s, divergences)


def predictive_draws(fit: PartialPooling, tasks: TaskBatch):
    """``(mean, noise)`` of the mixture predictive at ``tasks``' query inputs: ``(C, S, T, M, 1)`` and ``(C, S)``.

    Masked query points hold NaN, as in :class:`~hbmeta.Predictive`.
    """
    mean = fit.predict_mean(np.asarray(tasks.x_query))
    if tasks.query_mask is not None:
        mean = np.where(np.asarray(tasks.query_mask)[None, None, :, :, None], mean, np.nan)
    return mean.astype(np.float32), fit.noise.astype(np.float32)
