"""The noise scale σ (and the task-level τ) of an ensemble, fitted on tasks its members did not train on.

Members trained on held-out blocks of the training tasks (see
:func:`~hbmeta.inference.ensemble.holdout_blocks`: every task is new to at
least two members) give out-of-sample predictions ``f_m`` on every task. Let
``O_j`` be the members that did not train on task j. Two averages over them,

    r² = mean over j, m ∈ O_j, q of ‖y − f_m‖²/o               (a member's error on a new task)
    v  = mean over j, pairs a ≠ b in O_j, q of ‖f_a − f_b‖²/(2o)   (half the squared gap of two members)

and the identity ``mean_m ‖y − f_m‖² = ‖y − f̄‖² + mean_m ‖f_m − f̄‖²`` for
the M-member mean ``f̄`` give the error of that mean on a new task,
``r² − v(M − 1)/M``, and the expected spread of M members, ``v(M − 1)/M``.
The equal-weight mixture's variance is the spread plus the members' own
predictive variance, so it matches the error of its mean (in the second
moment) when the members' own variance is

    V = r² − 2 v (M − 1)/M.

Without a task-level posterior that variance is σ², so ``σ² = V`` (for V ≤ 0 see below)
(:func:`holdout_noise`). With it (``spec.task_posterior``), each member's
τ_m and σ_m are first fitted by type-II maximum likelihood on its own held-out
tasks (:func:`~hbmeta.fit_task_hyperparameters`), which makes each member
alone about right; then both are scaled by one factor ``c = V / V̄``, ``V̄``
the members' mean out-of-sample predictive variance (:func:`holdout_task_scale`).
Scaling ``(τ², σ²)`` by ``c`` leaves the linearised predictive mean unchanged
(it depends on them through ``τ²(τ²K + σ²I)⁻¹`` only) and scales its
covariance by exactly ``c``.

**The shape of the errors** (``tails=True``, the default with the task-level
posterior). Errors on new tasks have heavier tails than a Gaussian of the same
variance (on the default sinusoid the members' standardised out-of-sample
residuals have an excess kurtosis near 4.5): a Gaussian matched in the second
moment is then too wide for most points and too narrow for a few, so its 50%
intervals cover about 0.6. Each member's Gaussian is therefore replaced by a
scale mixture of ``K`` Gaussians with relative variances ``u_k`` (the
equal-probability midpoints of InvGamma(ν/2, (ν − 2)/2), scaled to mean 1:
a discrete, variance-preserving stand-in for a Student-t with ν degrees of
freedom, coarse for ν near 2: the fitted model is the discrete mixture
itself), which keeps the matched variance and changes only the shape. ν is chosen from
:data:`TAIL_DOFS` (or ∞, the Gaussian) by the out-of-sample log-likelihood of
the training tasks: on task j, the mixture over the members ``O_j`` that did
not train on it and over the K nodes (:func:`fit_tails`). As above, no
held-out task is used. Scaling (τ², σ²) by ``u_k`` scales the linearised
predictive covariance by exactly ``u_k``, so node k of member m is the draw
(θ_m, √u_k τ_m, √u_k σ_m).

**When V ≤ 0** (the members' spread on the folds alone exceeds the estimated
error of their mean: members that explain the tasks in different ways, or a
spread estimated high from the two or three members that left each task out),
no positive variance matches, and flooring V would make the mixture M nearly
point-like members. c and ν are then chosen together by the same out-of-sample
log-likelihood (:func:`choose_scale`). A fold's mixture has only the ``n_j``
members that left task j out, whose expected spread, ``v(n_j − 1)/n_j``, falls
short of M members' ``v(M − 1)/M`` by ``v(1/n_j − 1/M)``; that shortfall is
added to every member's variance on the fold, so the fold's mixture spreads as
much as M members would. The better accuracy of an M-member mean is not
credited (crediting it too, ``2v(1/n_j − 1/M)``, can leave the members no
variance of their own at all), so the choice still errs on the wide side.

**The noise share** (regression with an inferred σ). Each member's (τ_m,
σ_m) maximise that member's own out-of-sample likelihood, as if it were the
whole predictive. In the mixture the members' spread already covers part of
the error, and a smaller σ_m against τ_m lets each member follow its support
points more closely: the linearised mean depends on τ² and σ² through
τ²(τ²K + σ²I)⁻¹ (it interpolates the support as σ²/τ² → 0), and the
variance near the support falls with it. So every σ_m² is multiplied by a
share s from :data:`NOISE_SHARES` with τ_m kept, each member's predictive on
the training tasks is recomputed, c and ν are chosen as above, and the s whose
mixture has the best out-of-sample log-likelihood on the folds is kept, with
the spread the folds' members lack against M added as in the fallback
(:func:`mixture_fold_score`). A share below 1 is compared with s = 1 only
under the same rule: the fallback (below) chooses its c by that same
likelihood, so its score is the best over c and ν and would beat the second
moment's unfairly, but two fallback fits are both such maxima over the same
grid and compare fairly with each other. On a well-specified model
(linear-Gaussian tasks) the members' own fit, s = 1, wins.

**A scale for each task** (regression with an inferred σ, after the share).
The linearised predictive's variance does not depend on the support targets,
so one (τ_m, σ_m) serves every task. Task j's (τ², σ²) are then multiplied
by h_j, a power p of the spread of its support targets
(:mod:`hbmeta.model.support_spread`), with p chosen by the same folds'
score and the mean out-of-sample variance kept
(:func:`~hbmeta.inference.spread_power.fit_spread_power`); p = 0 is one
scale for every task.

**A scale for each distance from the support** (regression with an inferred
σ, last). Next to a task's support points the members disagree more than
their mean errs, and far from them they miss together, so one c is too wide
near the support and too narrow far from it. The same second-moment rule is
then applied in each of :data:`~hbmeta.inference.distance_scale.DISTANCE_BINS`
quantile bins of the query point's distance to its task's nearest support
point, giving a factor c_b on every member's variance there, floored at
:data:`~hbmeta.inference.distance_scale.DISTANCE_FLOOR`
(:mod:`hbmeta.inference.distance_scale`). Under the fallback (V ≤ 0, c by the
folds' likelihood) it is not fitted: the rule it rests on has no solution
there for the points together, and per bin it would floor every factor.

**Classification** has no σ: every τ_m² is multiplied by the c whose
mixture has the lowest Brier score estimated on the folds
(:mod:`hbmeta.inference.class_scale`).

What bias remains: the members that make these predictions trained on
``T − 2⌈T/M⌉`` tasks, so they are a little worse than members trained on more
(σ is then slightly too large: a conservative error); and ν is fitted on
mixtures of the two or three members that left a task out, whose spread is
smaller than that of all M members.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hbmeta.inference.class_scale import CLASS_SCALES, fit_class_scale, mixture_brier  # noqa: F401
from hbmeta.inference.distance_scale import DISTANCE_BINS, DistanceFit, fit_distance_scale
from hbmeta.inference.fold_scores import (  # noqa: F401  (TAIL_NODES, fit_tails, _moments: this module's interface)
    TAIL_DOFS,
    TAIL_NODES,
    _fold_loglik,
    _moments,
    fit_tails,
    mixture_fold_score,
    scale_nodes,
)
from hbmeta.inference.spread_power import SPREAD_POWERS, fit_spread_power
from hbmeta.model.spec import ModelSpec
from hbmeta.model.support_distance import support_distance
from hbmeta.model.support_spread import spread_factor, support_spread
from hbmeta.model.task_posterior import fit_task_hyperparameters
from hbmeta.model.task_scales import task_predictive_scales

_FLOOR = 0.05**2  # V is kept at least this fraction of r² (when the spread alone already covers the errors)
NOISE_SHARES = (1.0, 0.5, 0.25, 0.1, 0.05)  # s, the factors on the members' σ_m² tried with τ_m kept


class HoldoutNoise(NamedTuple):
    """The out-of-sample figures behind σ (floats).

    - ``noise``: σ = sqrt(V), V = r² − 2v(M − 1)/M; when V ≤ ``0.05²·r²``, σ² by the folds' likelihood
      (:func:`choose_scale` with unit variances).
    - ``member_mse``: r², a member's mean squared error on tasks it did not train on.
    - ``spread``: v, half the mean squared difference of two members' predictions there.
    - ``mixture_mse``: r² − v(M − 1)/M, the estimated error of the M-member mean on new tasks.
    - ``scale_rule``: ``"second moment"`` or ``"folds' likelihood"`` (as :class:`TaskScale`'s).
    """

    noise: float
    member_mse: float
    spread: float
    mixture_mse: float
    scale_rule: str = "second moment"


class TaskScale(NamedTuple):
    """τ_m and σ_m of every member with the task-level posterior (:func:`holdout_task_scale`).

    - ``tau``: ``(M,)`` τ_m after scaling; ``noise``: ``(M,)`` σ_m after scaling (None for classification).
    - ``scale``: c, the factor applied to (τ², σ²) (τ² alone for classification; 1 for a fixed σ).
    - ``member_mse``, ``spread``: r² and v of the members' linearised predictive means.
    - ``mean_var``: V̄, the members' mean out-of-sample predictive variance before scaling.
    - ``tail_dof``: ν of the scale mixture chosen on the folds (``inf``: Gaussian, one node).
    - ``tail_nodes``: ``(K,)`` the relative variances u_k (mean 1; ``[1.0]`` for the Gaussian).
    - ``tail_scores``: ``{ν: out-of-sample mean log-likelihood per point}`` for every ν tried.
    - ``scale_rule``: how c was chosen: ``"second moment"`` (``c = V / V̄``), ``"folds' likelihood"`` (the
      members' spread alone exceeds the error of their mean, so ``V ≤ 0``: :func:`choose_scale`), or
      ``"mixture Brier"`` (classification: :func:`mixture_brier`), ``"mixture reliability"`` (classification,
      where the reliability gap at the Brier score's c was significant:
      :func:`~hbmeta.inference.class_scale.fit_class_scale`), or ``"fixed"`` (c = 1: a fixed σ, or
      classification with ``class_scales=(1.0,)``).
    - ``noise_share``: s, the factor on every member's type-II σ_m² (τ_m kept) chosen on the folds before c
      (1: the members' own fits); ``noise`` already includes it.
    - ``share_scores``: ``{s: the folds' mixture log-likelihood per point}`` for every s compared.
    - ``spread_power``, ``spread_ref``: p and s̄² of the per-task factor h_j on (τ², σ²)
      (:mod:`hbmeta.model.support_spread`; p = 0: none), chosen on the folds after s; ``scale``, ``tau`` and
      ``noise`` include its normalisation k_p. ``spread_scores``: ``{p: the folds' score}`` for every p tried.
    - ``scale_scores``: classification, ``{c: minus the mixture's estimated Brier score}`` for every c tried.
    - ``reliability_gaps``: classification, ``{c: (the mixture's estimated reliability gap, its standard error)}``
      for every c tried (:func:`~hbmeta.inference.class_scale.reliability_gaps`).
    - ``distance_edges``, ``distance_scales``: ``(B − 1,)`` and ``(B,)``, the per-point factor c_b on the
      predictive variance by distance to the support (:mod:`hbmeta.inference.distance_scale`; one bin with
      c = 1: none). ``distance_fit``: the :class:`~hbmeta.inference.distance_scale.DistanceFit` behind them.
    """

    tau: np.ndarray
    noise: np.ndarray | None
    scale: float
    member_mse: float
    spread: float
    mean_var: float
    tail_dof: float = math.inf
    tail_nodes: np.ndarray = np.ones(1)
    tail_scores: dict | None = None
    scale_rule: str = "second moment"
    noise_share: float = 1.0
    share_scores: dict | None = None
    spread_power: float = 0.0
    spread_ref: float = 1.0
    spread_scores: dict | None = None
    scale_scores: dict | None = None
    distance_edges: np.ndarray = np.zeros(0)
    distance_scales: np.ndarray = np.ones(1)
    distance_fit: DistanceFit | None = None
    reliability_gaps: dict | None = None


def out_of_sample_mask(holdout_index, num_members: int, num_tasks: int) -> np.ndarray:
    """``(M, T)`` 1.0 where member m did not train on task j."""
    out = np.zeros((num_members, num_tasks))
    for m, idx in enumerate(np.asarray(holdout_index)):
        out[m, idx] = 1.0
    return out


def _weights(tasks, dtype):
    return jnp.ones(tasks.x_query.shape[:2], dtype) if tasks.query_mask is None else tasks.query_mask.astype(dtype)


def member_noise(spec: ModelSpec, flat_theta, tasks, index):
    """RMS residual ``σ_m`` of member m's adapted models on the tasks ``index[m]``: a ``(M,)`` array.

    ``σ_m² = Σ_{j ∈ index[m], q} w_jq ‖y_jq − f_φ̂_mj(x_jq)‖²/o / Σ w_jq``
    (masked query points have weight 0): the maximum-likelihood σ of member
    m on those tasks.
    """
    rule = spec.rule

    def one(flat, idx):
        t = tasks.take(idx)
        phi = rule.adapt_tasks(spec.unravel(flat), t)
        sq = jnp.mean(jnp.square(jax.vmap(rule.apply)(phi, t.x_query) - t.y_query), axis=-1)
        w = jnp.ones_like(sq) if t.query_mask is None else t.query_mask.astype(sq.dtype)
        return jnp.sqrt(jnp.sum(sq * w) / jnp.maximum(jnp.sum(w), 1.0))

    return jax.jit(jax.vmap(one))(jnp.asarray(flat_theta), jnp.asarray(index))


def holdout_noise(spec: ModelSpec, flat_theta, tasks, holdout_index) -> HoldoutNoise:
    """σ of the equal-weight mixture from out-of-sample predictions (module docstring).

    ``flat_theta`` ``(M, P)`` are the members, ``holdout_index`` ``(M, n)``
    the tasks each did not train on (tasks new to fewer than two members add
    nothing to the spread).

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> import hbmeta as hb
        >>> spec = hb.ModelSpec(hb.GradientSteps(hb.linear().apply, step_size=0.1), {"w": jnp.zeros(1)})
        >>> tasks = hb.LinearGaussian(dim=1, noise=0.5).sample(jax.random.key(0), 6)
        >>> res = holdout_noise(spec, jnp.zeros((3, 1)), tasks, np.array([[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 0, 1]]))
        >>> res.spread, round(res.noise ** 2, 6) == round(res.member_mse, 6)  # identical members: no spread
        (0.0, True)
    """
    rule = spec.rule
    flat_theta = jnp.asarray(flat_theta)
    num_members = int(flat_theta.shape[0])
    out = out_of_sample_mask(holdout_index, num_members, tasks.num_tasks)
    mu = jax.jit(jax.vmap(lambda f: jax.vmap(rule.apply)(rule.adapt_tasks(spec.unravel(f), tasks), tasks.x_query)))(
        flat_theta)
    # σ² is the members' scale c when each member's own variance is 1: the same rule as the task-level one
    sigma2, rule, _, _, _, r2, v, _ = choose_scale(mu, jnp.ones_like(mu), tasks.y_query, out,
                                                   _weights(tasks, mu.dtype), tails=False)
    return HoldoutNoise(float(np.sqrt(sigma2)), r2, v, r2 - v * (num_members - 1) / num_members, rule)


SCALE_GRID = np.exp(np.linspace(-7.0, 3.0, 41))  # c / (r²/V̄) tried by the folds' likelihood


def _fold_moments(mu, var, y, out, w):
    """``(r², v, V̄)``: out-of-sample member error, half pair gap and mean predictive variance (floats)."""
    weights = jnp.asarray(w, mu.dtype)
    r2, v = (float(a) for a in _moments(mu, jnp.asarray(y, mu.dtype), jnp.asarray(out), weights))
    c_mask = jnp.asarray(out, mu.dtype)[:, :, None]
    return r2, v, float(jnp.sum(c_mask * jnp.mean(var, -1) * weights) / jnp.sum(c_mask * weights))


def choose_scale(mu, var, y, out, w, *, tails: bool = True):
    """c and ν of the members' mixture from their out-of-sample predictions on the training tasks (module docstring).

    ``mu``, ``var`` ``(M, T, Q, o)``: each member's linearised predictive on
    every training task, before scaling; ``out`` ``(M, T)``: 1 where member m
    did not train on task j; ``w`` ``(T, Q)``: point weights. Returns
    ``(c, rule, ν, u, scores, r², v, V̄)``.

    - **Second moment** (the rule whenever it has a solution): ``c = V / V̄``
      with ``V = r² − 2v(M − 1)/M``, then ν by the folds' likelihood
      (:func:`fit_tails`; ``ν = ∞`` when ``tails`` is False).
    - **Folds' likelihood** when ``V ≤ 0.05²·r²``: the members' spread alone
      already exceeds the estimated error of their mean (members that explain
      the tasks in different ways, or a spread estimated from the two or three
      members that left each task out). No positive variance then matches, and
      the floor would turn the mixture into M nearly point-like members. c
      (from :data:`SCALE_GRID` times ``r²/V̄``) and ν are instead chosen
      together by the out-of-sample log-likelihood of the training tasks, the
      mixtures of the ``n_j`` members that left task j out, with
      ``v(1/n_j − 1/M)`` added to every member's variance there: the spread
      that ``n_j`` members lack against M. The M-member mean's better accuracy
      is not credited, so c errs on the wide side: a conservative error.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> y = rng.normal(size=(50, 5, 1))
        >>> mu = y + rng.normal(size=(4, 50, 1, 1))  # each member misses each task by its own offset (sd 1)
        >>> out = np.zeros((4, 50)); out[[0, 1], ::2] = 1; out[[2, 3], 1::2] = 1
        >>> c, rule, *_ = choose_scale(mu, np.full(mu.shape, 0.2), y, out, np.ones((50, 5)))
        >>> rule, bool(0.2 < 0.2 * c < 2)  # the members disagree more than their mean errs
        ("folds' likelihood", True)
    """
    mu, var = jnp.asarray(mu), jnp.asarray(var)
    num_members = mu.shape[0]
    r2, v, mean_var = _fold_moments(mu, var, y, out, w)
    target = r2 - 2 * v * (num_members - 1) / num_members
    if target > _FLOOR * r2:
        scale = target / mean_var
        if not tails:
            return scale, "second moment", math.inf, np.ones(1), None, r2, v, mean_var
        dof, nodes, scores = fit_tails(mu, var * scale, y, out, w)
        return scale, "second moment", dof, nodes, scores, r2, v, mean_var
    dofs = (*TAIL_DOFS, math.inf) if tails else (math.inf,)
    y, out, w = jnp.asarray(y, mu.dtype), jnp.asarray(out, mu.dtype), jnp.asarray(w, mu.dtype)
    base = r2 / mean_var
    n = jnp.sum(out, axis=0)  # (T,): the members that left task j out
    # the n_j-member mixture of a fold spreads less than M members, by v(1/n_j − 1/M) in expectation: added to
    # every member's variance there
    missing = (v * (1 / jnp.maximum(n, 1.0) - 1 / num_members)).astype(mu.dtype)[None, :, None, None]
    best, scores = None, {}
    for dof in dofs:
        u = jnp.asarray(scale_nodes(dof), mu.dtype)
        values = [float(_fold_loglik(mu, var * (base * g) + missing, y, out, w, u)) for g in SCALE_GRID]
        k = int(np.nanargmax(values))
        scores[float(dof)] = values[k]
        if best is None or values[k] > best[0]:
            best = (values[k], base * float(SCALE_GRID[k]), float(dof))
    _, scale, dof = best
    return scale, "folds' likelihood", dof, scale_nodes(dof), scores if tails else None, r2, v, mean_var


def holdout_task_scale(spec: ModelSpec, flat_theta, tasks, holdout_index, *, num_steps: int = 100,
                       tails: bool = True, noise_shares=NOISE_SHARES, spread_powers=SPREAD_POWERS,
                       class_scales=CLASS_SCALES, distance_bins=DISTANCE_BINS) -> TaskScale:
    """τ_m, σ_m of every member with the task-level posterior, fitted on its held-out tasks and scaled (module docstring).

    Requires ``spec.task_posterior`` with an inferred τ (``tau=None``). For a
    regression likelihood with an inferred σ both are scaled by c, and with
    ``tails`` the shape ν of the scale mixture is chosen on the folds
    (:func:`fit_tails`); with a fixed σ only τ_m is fitted, c = 1 and the
    predictive stays Gaussian (one node). For classification every τ_m² is
    multiplied by the c of ``class_scales`` whose mixture has the lowest
    estimated Brier score on the folds (:func:`mixture_brier`; ``(1.0,)``
    keeps the members' own fits), unless the mixture's estimated reliability
    gap there is significant; then the c whose gap is nearest zero
    (:func:`~hbmeta.inference.class_scale.fit_class_scale`).

    ``noise_shares``: the factors s on every member's fitted σ_m² (τ_m kept)
    tried before scaling; the one whose mixture scores best on the folds
    (:func:`mixture_fold_score`) is kept (module docstring, "The noise
    share"). ``(1.0,)`` keeps each member's own type-II fit.

    ``spread_powers``: the powers p of the per-task factor h_j tried after the share
    (:func:`~hbmeta.inference.spread_power.fit_spread_power`); ``(0.0,)`` gives every task the same scale.

    ``distance_bins``: B, the bins of the per-point factor by distance to the support fitted last
    (:func:`~hbmeta.inference.distance_scale.fit_distance_scale`; regression with an inferred σ, under the
    second-moment rule); 1 gives every point the same scale.
    """
    tp = spec.task_posterior
    if tp is None or tp.tau is not None:
        raise ValueError("spec.task_posterior is None or has a fixed tau; expected TaskPosterior(tau=None), so that "
                         "each member's τ is fitted on its held-out tasks")
    lik = spec.likelihood
    fixed_noise = lik.noise if lik.regression else None
    flat_theta = np.asarray(flat_theta)
    num_members = flat_theta.shape[0]
    shares = tuple(float(x) for x in np.atleast_1d(np.asarray(noise_shares, dtype=np.float64)))
    if not shares or 1.0 not in shares or not all(0 < x <= 1 for x in shares):
        raise ValueError(f"noise_shares={noise_shares!r}; expected factors in (0, 1] that include 1.0")
    class_scales = tuple(float(x) for x in np.atleast_1d(np.asarray(class_scales, dtype=np.float64)))
    if not class_scales or 1.0 not in class_scales or not all(x > 0 for x in class_scales):
        raise ValueError(f"class_scales={class_scales!r}; expected factors c > 0 that include 1.0")
    if isinstance(distance_bins, bool) or not isinstance(distance_bins, int | np.integer) or distance_bins < 1:
        raise ValueError(f"distance_bins={distance_bins!r}; expected a positive integer (1: one scale for every point)")
    powers = tuple(float(x) for x in np.atleast_1d(np.asarray(spread_powers, dtype=np.float64)))
    if 0.0 not in powers or not all(x >= 0 for x in powers):
        raise ValueError(f"spread_powers={spread_powers!r}; expected powers p ≥ 0 that include 0")
    taus, sigmas = [], []
    for m in range(num_members):
        held = tasks.take(jnp.asarray(np.asarray(holdout_index)[m]))
        fit = fit_task_hyperparameters(spec, jnp.asarray(flat_theta[m]), held, noise=fixed_noise, num_steps=num_steps)
        taus.append(fit.tau)
        sigmas.append(fixed_noise if fixed_noise is not None else fit.noise)
    taus = np.asarray(taus)
    out = out_of_sample_mask(holdout_index, num_members, tasks.num_tasks)
    if not lik.regression:
        cls = fit_class_scale(spec, flat_theta, tasks, out, taus, class_scales, _weights(tasks, flat_theta.dtype))
        return TaskScale(taus * math.sqrt(cls.scale), None, cls.scale, float("nan"), float("nan"), float("nan"),
                         scale_rule=cls.rule if len(cls.brier_scores) > 1 else "fixed", scale_scores=cls.brier_scores,
                         reliability_gaps=cls.gaps if len(cls.brier_scores) > 1 else None)
    sigmas = np.asarray(sigmas, dtype=np.float64)

    if fixed_noise is not None:
        shares = (1.0,)
    order = sorted(shares, reverse=True)  # 1.0 first: the members' own fits
    # each member linearised once; its predictive conditioned for every share (task_predictive_scales)
    preds = [task_predictive_scales(spec, jnp.asarray(flat_theta[m]), tasks, taus=np.full(len(order), taus[m]),
                                    noises=sigmas[m] * np.sqrt(order)) for m in range(num_members)]
    mus = jnp.stack([p.mean for p in preds], axis=1)  # (shares, M, T, Q, o)
    variances = jnp.stack([p.var for p in preds], axis=1)
    if fixed_noise is not None:
        mu, var = mus[0], variances[0]
        w = _weights(tasks, mu.dtype)
        return TaskScale(taus, sigmas, 1.0, *_fold_moments(mu, var, tasks.y_query, out, w), scale_rule="fixed")
    best, share_scores = None, {}
    for i, share in enumerate(order):
        mu, var = mus[i], variances[i]
        w = _weights(tasks, mu.dtype)
        fit = choose_scale(mu, var, tasks.y_query, out, w, tails=tails)
        if share < 1.0 and fit[1] != best[1][1]:
            continue  # shares are compared under the rule that s = 1 took only (module docstring)
        share_scores[share] = mixture_fold_score(mu, var * fit[0], tasks.y_query, out, w, fit[3], fit[6])
        if best is None or share_scores[share] > best[0] + 1e-9:
            best = (share_scores[share], fit, share, mu, var, w)
    _, (scale, rule, dof, nodes, scores, r2, v, mean_var), share, mu, var, w = best
    per_task = fit_spread_power(mu, var * scale, tasks.y_query, out, w,
                                support_spread(tasks.y_support, tasks.support_mask), v, powers=powers,
                                tails=tails, base_tails=(dof, nodes, scores))
    scale *= per_task.norm
    root = float(np.sqrt(scale))
    distance = None
    if distance_bins > 1 and rule == "second moment":  # the per-point factor, on the variances the predictive uses
        h = spread_factor(support_spread(tasks.y_support, tasks.support_mask), per_task.power, per_task.ref)
        d = jax.vmap(support_distance)(*((tasks.x_support, tasks.x_query) if tasks.support_mask is None else
                                         (tasks.x_support, tasks.x_query, tasks.support_mask)))
        distance = fit_distance_scale(mu, var * scale * jnp.asarray(h, var.dtype)[None, :, None, None],
                                      tasks.y_query, out, w, d, num_bins=distance_bins)
    return TaskScale(taus * root, sigmas * math.sqrt(share) * root, scale, r2, v, mean_var, per_task.tail_dof,
                     per_task.tail_nodes, per_task.tail_scores, rule, share, share_scores, per_task.power,
                     per_task.ref, per_task.scores,
                     distance_edges=np.zeros(0) if distance is None else distance.edges,
                     distance_scales=np.ones(1) if distance is None else distance.scales, distance_fit=distance)
