"""Diagnostics for chains started in different modes on purpose: nested R-hat and per-mode R-hat and ESS.

A neural network's posterior has many modes that a Markov chain does not
cross in any affordable time. Starting chains from the members of an ensemble
(one *superchain* of one or more chains per member; Sommer et al. 2024, MILE
2025) samples each mode well and weights the modes equally, as a deep ensemble
does. The plain R-hat over all chains then compares different modes and is
large by design; it no longer says whether the chains have mixed. What does:

- **per-mode R-hat**: the rank-normalised split R-hat (Vehtari et al. 2021)
  of the chains within each superchain, one figure per mode (with one chain
  per mode, its two halves are compared). Every mode should be below 1.01.
- **stratified ESS**: with fixed mode weights ``w_k`` the estimate of
  ``E f = Σ_k w_k E_k f`` is ``Σ_k w_k f̄_k``, a stratified estimate whose
  Monte Carlo variance is ``Σ_k w_k² s_k²/ESS_k`` (``s_k²`` the variance of f
  within mode k, ``ESS_k`` its bulk ESS there). The effective sample size of
  the whole mixture is the mixture's variance over that,
  ``ESS = Var_mix f / Σ_k w_k² s_k²/ESS_k``: the number of independent draws
  from the mixture that would estimate ``E f`` as precisely. It is the figure
  to hold against the usual 400.
- **nested R-hat** (Margossian et al. 2022): ``nR̂ = sqrt(1 + B/W)`` with
  ``B`` the variance between superchain means and ``W`` the mean within-
  superchain variance (between its chains' means plus within its chains).
  It is near 1 only when the superchains agree, so here it measures how far
  apart the modes are (informational), not whether the sampler has converged.
  With one chain per superchain ``nR̂² = R̂² + 1/N`` for the classic
  (non-split, non-ranked) R̂ of Gelman and Rubin over ``N`` draws.

The mode weights are an assumption of the method (equal, like a deep
ensemble), not an estimate: MCMC inside one mode cannot weigh it against
another.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

with warnings.catch_warnings():
    # ArviZ 0.23 prints a once-a-day notice of its coming 1.0 refactor when imported (see diagnostics.arviz).
    warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
    import arviz


def _check_draws(name, draws):
    a = np.asarray(draws, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 2:
        raise ValueError(f"{name} has shape {a.shape}; expected (chains, draws) with at least 2 draws")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has NaN or infinite values; expected finite draws")
    return a


def _check_groups(groups, num_chains):
    g = np.asarray(groups)
    if g.shape != (num_chains,):
        raise ValueError(f"groups has shape {g.shape}; expected ({num_chains},), one mode label per chain")
    labels, counts = np.unique(g, return_counts=True)
    return g, labels, counts


def nested_rhat(draws, groups) -> float:
    """Nested R-hat (Margossian et al. 2022) of ``draws`` ``(chains, N)`` grouped into superchains by ``groups``.

    ``nR̂ = sqrt(1 + B̂/Ŵ)``, ``B̂ = Var_k(θ̄_k)`` (ddof 1) over the K superchain
    means and ``Ŵ = (1/K) Σ_k (B̃_k + W̃_k)`` with ``B̃_k`` the variance of the
    chain means within superchain k (ddof 1; 0 with one chain) and ``W̃_k`` the
    mean within-chain variance (ddof 1). Superchains must have equal sizes.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(8, 200))
        >>> round(nested_rhat(x, [0, 0, 1, 1, 2, 2, 3, 3]), 2)
        1.0
        >>> round(nested_rhat(x + np.repeat([0.0, 3.0, 6.0, 9.0], 2)[:, None], [0, 0, 1, 1, 2, 2, 3, 3]), 1)
        4.1
    """
    a = _check_draws("draws", draws)
    g, labels, counts = _check_groups(groups, a.shape[0])
    if len(labels) < 2:
        raise ValueError(f"groups has {len(labels)} distinct label(s); expected at least 2 superchains")
    if len(set(counts.tolist())) != 1:
        raise ValueError(f"groups has superchains of sizes {counts.tolist()}; expected equal sizes")
    chain_means = a.mean(axis=1)
    chain_vars = a.var(axis=1, ddof=1)
    super_means, within = [], []
    for label in labels:
        sel = g == label
        means = chain_means[sel]
        between_chains = means.var(ddof=1) if means.size > 1 else 0.0
        within.append(between_chains + chain_vars[sel].mean())
        super_means.append(means.mean())
    b = np.var(super_means, ddof=1)
    w = np.mean(within)
    return float(np.sqrt(1.0 + b / w))


class ModeDiagnosis(NamedTuple):
    """What :func:`per_mode_diagnostics` found, per quantity and per mode.

    - ``names``: the quantities checked (e.g. ``noise``, ``f[0, 1, 0]``).
    - ``labels``: the mode labels; ``weights``: their weights (sum 1).
    - ``rhat``: ``(modes, quantities)`` rank-normalised split R-hat within each mode.
    - ``ess_bulk``, ``ess_tail``: ``(modes, quantities)`` ESS within each mode.
    - ``ess_mixture``: ``(quantities,)`` stratified ESS of the weighted mixture.
    - ``nested_rhat``: ``(quantities,)`` nested R-hat across modes (NaN with one mode).
    - ``plain_rhat``: ``(quantities,)`` the usual R-hat over all chains (for comparison).
    """

    names: list
    labels: np.ndarray
    weights: np.ndarray
    rhat: np.ndarray
    ess_bulk: np.ndarray
    ess_tail: np.ndarray
    ess_mixture: np.ndarray
    nested_rhat: np.ndarray
    plain_rhat: np.ndarray

    @property
    def rhat_max(self) -> float:
        return float(np.max(self.rhat))

    @property
    def ess_mixture_min(self) -> float:
        return float(np.min(self.ess_mixture))

    def passes(self, *, rhat_max: float = 1.01, ess_min: float = 400) -> bool:
        """Every mode's R-hat below ``rhat_max`` and the mixture's ESS at least ``ess_min`` for every quantity."""
        return self.rhat_max < rhat_max and self.ess_mixture_min >= ess_min


def _stat(kind, a):
    data = arviz.convert_to_dataset({"x": a})
    if kind == "rhat":
        return float(arviz.rhat(data)["x"].values)
    return float(arviz.ess(data, method=kind)["x"].values)


def per_mode_diagnostics(draws: dict, groups, *, weights=None) -> ModeDiagnosis:
    """R-hat and ESS within each mode, the stratified ESS of the mixture and nested R-hat.

    Args:
        draws: ``{name: (chains, draws) array}`` of invariant functionals
            (e.g. :func:`~hbmeta.diagnostic_draws`).
        groups: ``(chains,)`` mode labels: chains with the same label were
            started in the same mode (e.g. from the same ensemble member).
        weights: one weight per distinct label (in sorted label order),
            default equal weights.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(6, 500)) + np.repeat([0.0, 5.0, 10.0], 2)[:, None]  # three separated modes
        >>> d = per_mode_diagnostics({"x": x}, [0, 0, 1, 1, 2, 2])
        >>> bool(d.plain_rhat[0] > 2), bool(d.rhat_max < 1.01), bool(d.ess_mixture_min > 2000)
        (True, True, True)
    """
    if not isinstance(draws, dict) or not draws:
        raise ValueError(f"draws is a {type(draws).__name__}; expected a non-empty dict name -> (chains, draws) array")
    names = list(draws)
    arrays = [_check_draws(f"draws[{n!r}]", draws[n]) for n in names]
    shape = arrays[0].shape
    for n, a in zip(names, arrays):
        if a.shape != shape:
            raise ValueError(f"draws[{n!r}] has shape {a.shape}; expected {shape} like draws[{names[0]!r}]")
    g, labels, _ = _check_groups(groups, shape[0])
    if weights is None:
        w = np.full(len(labels), 1.0 / len(labels))
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != labels.shape or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
            raise ValueError(f"weights has shape {w.shape} and sum {w.sum():.3g}; expected {len(labels)} "
                             "non-negative weights (one per mode, sorted label order) summing to 1")
    k, q = len(labels), len(names)
    rhat, bulk, tail = np.empty((k, q)), np.empty((k, q)), np.empty((k, q))
    ess_mix, nested, plain = np.empty(q), np.full(q, np.nan), np.empty(q)
    for j, a in enumerate(arrays):
        means, variances = np.empty(k), np.empty(k)
        for i, label in enumerate(labels):
            sub = a[g == label]
            rhat[i, j], bulk[i, j], tail[i, j] = _stat("rhat", sub), _stat("bulk", sub), _stat("tail", sub)
            means[i], variances[i] = sub.mean(), sub.var()
        mix_var = np.sum(w * (variances + means**2)) - np.sum(w * means) ** 2
        mc_var = np.sum(w**2 * variances / bulk[:, j])
        ess_mix[j] = mix_var / mc_var if mc_var > 0 else np.inf
        plain[j] = _stat("rhat", a) if shape[0] > 1 else np.nan
        counts = np.unique(g, return_counts=True)[1]
        if k > 1 and len(set(counts.tolist())) == 1:
            nested[j] = nested_rhat(a, g)
    return ModeDiagnosis(names, labels, w, rhat, bulk, tail, ess_mix, nested, plain)


def mode_report(d: ModeDiagnosis, *, rhat_max: float = 1.01, ess_min: float = 400) -> list:
    """Plain-language lines describing a :class:`ModeDiagnosis` (for :func:`~hbmeta.diagnose`)."""
    worst = np.unravel_index(np.argmax(d.rhat), d.rhat.shape)
    lines = [
        f"Chains were started in {len(d.labels)} modes (superchains), weighted "
        + ("equally" if np.allclose(d.weights, d.weights[0]) else "by the given weights")
        + " by assumption: MCMC within one mode cannot weigh it against another. The plain R-hat over all chains "
        f"compares different modes and is large by design (largest {np.nanmax(d.plain_rhat):.2f}); nested R-hat "
        f"(largest {np.nanmax(d.nested_rhat) if np.any(np.isfinite(d.nested_rhat)) else float('nan'):.2f}) "
        "measures how far apart the modes are, not convergence.",
        f"Within modes: largest R-hat {d.rhat_max:.3f} (mode {d.labels[worst[0]]}, {d.names[worst[1]]}), smallest "
        f"bulk ESS per mode {np.min(d.ess_bulk):.0f}, smallest tail ESS per mode {np.min(d.ess_tail):.0f}; "
        f"stratified ESS of the mixture, smallest {d.ess_mixture_min:.0f} "
        f"({'passes' if d.passes(rhat_max=rhat_max, ess_min=ess_min) else 'fails'} R-hat < {rhat_max} and "
        f"ESS ≥ {ess_min:g}).",
    ]
    return lines
