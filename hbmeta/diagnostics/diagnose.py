"""Convergence diagnostics in plain words: which checks apply to a method, and what they found.

:func:`diagnose` computes R-hat (rank-normalised, split), bulk and tail ESS
(Vehtari et al. 2021) and the divergence count on invariant functionals (the
scalar sites and predictions at fixed reference inputs), never on raw
weights, and per mode for chains started from ensemble members
(:mod:`hbmeta.diagnostics.modes`). The conversion to ArviZ data is in
:mod:`hbmeta.diagnostics.arviz`.
"""

from __future__ import annotations

import json
import warnings
from typing import Any, NamedTuple

import numpy as np

from hbmeta.diagnostics.arviz import _az, _check_key, _group, _group_names, _posterior_vars, _trim
from hbmeta.diagnostics.modes import mode_report, per_mode_diagnostics
from hbmeta.inference import registry
from hbmeta.model.posterior import Posterior

MCMC_METHODS = ("nuts", "hmc", "mclmc")
# Which diagnostics apply, by the kind of draws a method gives (hbmeta.inference.registry).
APPLIES = {
    "mcmc": "Draws of Markov chains: R-hat and bulk/tail ESS on invariant functionals apply, with the usual bars "
            "(R-hat < 1.01, ESS >= 400), and divergences must be 0.",
    "modes": "Markov chains started in different modes on purpose (superchains from ensemble members): the plain "
             "R-hat across modes is large by design and does not apply; R-hat within each mode and the stratified "
             "ESS of the equal-weight mixture do (hbmeta.diagnostics.modes).",
    "iid": "Convergence checks apply to MCMC, not here. Independent draws from a fitted distribution: R-hat is 1 "
           "and ESS the number of draws by construction, so "
           "they only describe Monte Carlo error, not how close the approximation is to the posterior (compare "
           "held-out metrics or methods for that).",
    "particles": "A fixed set of particles or independently trained members, one draw each (an ensemble with "
                 "task-level tails: one draw per node of each member's scale mixture, all at the member's θ): there "
                 "are no chains to compare, so R-hat and ESS do not apply; the number of particles bounds the "
                 "resolution of the predictive mixture.",
    "point": "One point estimate: nothing to diagnose; the predictive's spread is the noise scale alone.",
}
NOT_IDENTIFIABLE = (
    "Raw network weights θ are not identifiable: hidden units can be permuted and their signs flipped "
    "without changing any prediction (docs/references.md, convergence diagnostics and non-identifiable "
    "weights), so chains can settle in equivalent modes with "
    "R-hat far above 1 on the weights while every prediction agrees. The checks therefore use invariant "
    "functionals: the scalar sites (noise, step size) and predictions at fixed reference inputs of "
    "reference tasks."
)


class Diagnosis(NamedTuple):
    """What :func:`diagnose` found.

    - ``summary``: pandas DataFrame from ``az.summary`` (mean, sd, intervals,
      ``r_hat``, ``ess_bulk``, ``ess_tail``, ...) on the scalar sites and the
      invariant functionals (``reference_prediction[task, point, output]``).
    - ``warnings``: list of plain-language warnings (also issued with ``warnings.warn``).
    - ``text``: a readable report, including why raw weights are not checked.
    - ``divergences``: number of divergent transitions (0 for non-MCMC methods).
    - ``weights_rhat``: the largest R-hat over raw weights θ (for information only; NaN if one chain).
    - ``divergences_per_chain``: divergent transitions of each chain (``()`` without sampler statistics).
    - ``modes``: the per-mode :class:`~hbmeta.diagnostics.modes.ModeDiagnosis` when the chains were started
      from ensemble members on purpose (``settings["chain_modes"]``), else None.
    - ``method``: the inference method diagnosed.
    """

    summary: Any
    warnings: list
    text: str
    divergences: int
    weights_rhat: float
    divergences_per_chain: tuple = ()
    modes: Any = None
    method: str = "unknown"

    def record(self) -> dict:
        """The figures ``hbmeta run`` keeps in ``metrics.json``: R-hat and ESS only where they apply.

        For Markov chains: the largest R-hat and smallest bulk ESS over the checked quantities; for chains
        started in modes, those within modes (the plain ones compare modes), with ``"scope": "within
        modes"``, the number of modes and the smallest stratified ESS of the mixture. None otherwise.
        """
        out = {"divergences": self.divergences, "divergences_per_chain": list(self.divergences_per_chain),
               "warnings": list(self.warnings), "max_rhat": None, "min_ess_bulk": None}
        summary = self.summary
        if self.modes is not None:
            out.update(max_rhat=_finite_or_none(self.modes.rhat_max),
                       min_ess_bulk=_finite_or_none(np.min(self.modes.ess_bulk)), scope="within modes",
                       num_modes=len(self.modes.labels), min_ess_mixture=_finite_or_none(self.modes.ess_mixture_min))
        elif self.method in MCMC_METHODS:
            if "r_hat" in summary:
                out["max_rhat"] = _finite_or_none(summary["r_hat"].max())
            if "ess_bulk" in summary:
                out["min_ess_bulk"] = _finite_or_none(summary["ess_bulk"].min())
        return out


def _finite_or_none(x):
    x = float(x)
    return x if np.isfinite(x) else None


def diagnostic_draws(source, *, tasks=None, reference=None, key=None) -> dict:
    """The draws that :func:`diagnose` checks, as ``{name: (chain, draw) array}``.

    Scalar sites (e.g. ``noise``, ``step_size``) and every element of
    ``reference_prediction`` (named ``f[task, point, output]``). ``source`` is
    a Posterior or ArviZ data; for a Posterior without ``reference``, the
    first 4 of ``tasks`` and their first 5 query points are the reference.
    """
    post, _method, _ = _diagnostic_vars(source, tasks, reference, key)
    return _flatten_functionals(post)


# p and s̄² of an ensemble's per-task scale, and the edges and factors of its per-point scale by distance to the
# support: fitted constants carried as draws (for the predictive), not random quantities, so neither checked nor plotted
FITTED_CONSTANTS = ("spread_power", "spread_ref", "distance_edges", "distance_scales")


def _diagnostic_vars(source, tasks, reference, key):
    post, method, per_chain = _all_vars(source, tasks, reference, key)
    return {n: v for n, v in post.items() if n not in FITTED_CONSTANTS}, method, per_chain


def _all_vars(source, tasks, reference, key):
    if isinstance(source, Posterior):
        if reference is None and tasks is not None:
            reference = _trim(tasks, 4, 5)
        post, _ = _posterior_vars(source, reference, _check_key(key))
        return post, source.method, _per_chain(source.sample_stats.get("diverging"))
    names = _group_names(source)
    if "posterior" not in names:
        raise ValueError(f"source is a {type(source).__name__} without a posterior group; "
                         "expected hbmeta.Posterior or ArviZ data from hbmeta.to_arviz")
    ds = _group(source, "posterior")
    post = {name: ds[name].values for name in ds.data_vars}
    method = str(getattr(source, "attrs", {}).get("method", ds.attrs.get("method", "unknown")))
    diverging = None
    if "sample_stats" in names and "diverging" in _group(source, "sample_stats"):
        diverging = _group(source, "sample_stats")["diverging"].values
    return post, method, _per_chain(diverging)


def _per_chain(diverging) -> tuple:
    """Divergent transitions per chain, from a ``(chain, draw)`` array (``()`` when there is none)."""
    if diverging is None or np.ndim(diverging) != 2:
        return ()
    return tuple(int(n) for n in np.asarray(diverging).sum(axis=1))


def _kind(method: str) -> str | None:
    if method in MCMC_METHODS:
        return "mcmc"
    return registry.METHODS[method].kind if method in registry.METHODS else None


def _chain_modes(source):
    """The ``chain_modes`` labels (chains started from ensemble members) of a Posterior or ArviZ data, or None."""
    if isinstance(source, Posterior):
        modes = source.settings.get("chain_modes")
    else:
        attrs = dict(getattr(source, "attrs", {}) or {})
        try:
            modes = json.loads(attrs.get("settings", "{}")).get("chain_modes")
        except (TypeError, ValueError):
            modes = None
    return None if modes is None else np.asarray(modes)


def _flatten_functionals(post) -> dict:
    """Scalar sites and every element of ``reference_prediction`` as ``{name: (chain, draw)}``."""
    out = {}
    for name, value in post.items():
        value = np.asarray(value)
        if name == "theta":
            continue
        if value.ndim == 2:
            out[name] = value
        elif name == "reference_prediction":
            for idx in np.ndindex(*value.shape[2:]):
                out["f[" + ", ".join(map(str, idx)) + "]"] = value[(slice(None), slice(None)) + idx]
    return out


def _rhat_max(theta) -> float:
    """The largest R-hat over the weights that move within every chain (a subspace sampler holds the others)."""
    az = _az()
    if theta is None or theta.shape[0] < 2 or theta.shape[1] < 4:
        return float("nan")
    theta = np.asarray(theta)
    half = theta.shape[1] // 2  # split R-hat compares half-chains: each must move
    moving = np.minimum(np.var(theta[:, :half], axis=1), np.var(theta[:, -half:], axis=1)).min(axis=0) > 0
    if not np.any(moving):
        return float("nan")
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # a weight that hardly moves in a short chain can make a split chain's variance 0: for information only
        warnings.simplefilter("ignore", RuntimeWarning)
        values = az.rhat(az.convert_to_dataset({"theta": theta[..., moving]}))["theta"].values
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else float("nan")


def diagnose(source, *, tasks=None, reference=None, key=None, rhat_max: float = 1.01, ess_min: float = 400,
             warn: bool = True) -> Diagnosis:
    """Convergence summary on scalar sites and invariant functionals, with warnings in plain words.

    R-hat (rank-normalised, split), bulk and tail ESS (Vehtari et al. 2021)
    and the divergence count are computed on the scalar sites and on
    predictions at fixed reference inputs of reference tasks, never on raw
    weights (not identifiable; the text says so). For MCMC methods it warns
    when R-hat > ``rhat_max``, ESS < ``ess_min`` or divergences > 0. Chains
    started from the members of an ensemble (``settings["chain_modes"]``,
    e.g. :func:`~hbmeta.run_mclmc` or :func:`~hbmeta.run_nuts` with an
    ensemble as ``init``) are checked per mode instead: R-hat within each mode
    and the stratified ESS of the equal-weight mixture
    (:func:`~hbmeta.diagnostics.modes.per_mode_diagnostics`). For SVI,
    Laplace, SVGD, an ensemble and MAML the draws are independent, particles
    or a point by construction, so convergence checks do not apply and none
    are warned; the text says which diagnostics apply to the method.

    Args:
        source: a :class:`~hbmeta.Posterior` or ArviZ data from :func:`to_arviz`.
        tasks: with a Posterior and no ``reference``: the first 4 tasks and 5
            query points become the reference.
        reference: reference tasks (their query inputs are the fixed inputs).
        key: PRNG key (only used to sample reference predictions).
        warn: also issue each warning with ``warnings.warn``.
    """
    post, method, per_chain = _diagnostic_vars(source, tasks, reference, key)
    divergences = sum(per_chain)
    names = [n for n, v in post.items() if n != "theta" and (np.ndim(v) == 2 or n == "reference_prediction")]
    if not names:
        raise ValueError("nothing to diagnose: the posterior has no scalar sites and no reference predictions; "
                         "pass tasks= or reference= (reference tasks give invariant functionals)")
    az = _az()
    chains, draws = np.shape(post[names[0]])[:2]
    with warnings.catch_warnings():  # an ensemble has more chains (members) than draws (one each), on purpose
        warnings.filterwarnings("ignore", message="More chains", category=UserWarning)
        data = az.convert_to_dataset({n: np.asarray(post[n]) for n in names})
        kind = "all" if draws >= 4 else "stats"
        summary = az.summary(data, kind=kind, round_to="none")
    mcmc = method in MCMC_METHODS
    modes = _chain_modes(source)
    found, mode_lines, by_mode = [], [], None
    if mcmc and kind == "all" and modes is not None:
        by_mode = per_mode_diagnostics(_flatten_functionals(post), modes)
        mode_lines = mode_report(by_mode, rhat_max=rhat_max, ess_min=ess_min)
        if not np.isfinite(by_mode.rhat_max):
            found.append("R-hat within a mode could not be computed for some quantity (it did not move within half "
                         "a chain): the chains have not explored that mode; run longer chains.")
        elif by_mode.rhat_max >= rhat_max:
            found.append(f"R-hat within a mode is {by_mode.rhat_max:.3f} (at least {rhat_max}): the chains started "
                         "in the same mode disagree, so they have not mixed within it; run longer chains.")
        if by_mode.ess_mixture_min < ess_min:
            found.append(f"The stratified ESS of the mixture is {by_mode.ess_mixture_min:.0f} for the worst quantity "
                         f"(below {ess_min:g}): too few effectively independent draws; draw more samples.")
    elif mcmc and kind == "all":
        rhat, ess = summary["r_hat"], summary[["ess_bulk", "ess_tail"]].min(axis=1)
        bad = rhat[rhat > rhat_max]
        if len(bad):
            found.append(f"R-hat is above {rhat_max} for {len(bad)} of {len(rhat)} checked quantities (worst: "
                         f"{bad.idxmax()} at {bad.max():.3f}): the chains disagree, so they have not mixed; "
                         "run longer chains (more warmup and samples) or start them closer together.")
        low = ess[ess < ess_min]
        if len(low):
            found.append(f"Effective sample size (bulk or tail) is below {ess_min:g} for {len(low)} of {len(ess)} "
                         f"checked quantities (smallest: {low.idxmin()} at {low.min():.0f}): too few effectively "
                         "independent draws for reliable intervals; draw more samples or thin less.")
    if mcmc and divergences > 0:
        found.append(f"{divergences} divergent transitions (per chain: {', '.join(map(str, per_chain))}): the sampler met regions it could not follow, so the "
                     "draws may be biased; raise target_accept_prob, lower the prior scale, or start from a "
                     "better point.")
    weights = _rhat_max(np.asarray(post["theta"])) if mcmc and "theta" in post else float("nan")
    lines = [f"hbmeta diagnosis: method {method}, {chains} chain(s) x {draws} draw(s).",
             f"Checked: {', '.join(names)} ({len(summary)} quantities).", NOT_IDENTIFIABLE]
    if np.isfinite(weights):
        lines.append(f"For information only, the largest R-hat over raw weights is {weights:.2f}; "
                     "that is expected and not a problem when the functionals agree.")
    what = "modes" if mcmc and modes is not None else _kind(method)
    lines.append(f"Which diagnostics apply to '{method}': {APPLIES[what]}" if what in APPLIES else
                 f"Method '{method}' is not a known one: the checks below are shown, no warnings are issued.")
    if mode_lines:
        lines += mode_lines
    elif mcmc and kind == "all":
        lines.append(f"Largest R-hat {summary['r_hat'].max():.3f}, smallest bulk ESS {summary['ess_bulk'].min():.0f}, "
                     f"smallest tail ESS {summary['ess_tail'].min():.0f}, divergences {divergences}"
                     + (f" (per chain: {', '.join(map(str, per_chain))})." if per_chain else "."))
    lines += ["Warnings:"] + [f"- {w}" for w in found] if found else ["No warnings."]
    if warn:
        for message in found:
            warnings.warn(message, UserWarning, stacklevel=2)
    return Diagnosis(summary, found, "\n".join(lines), divergences, weights, per_chain, by_mode, method)
