"""Nested R-hat and per-mode diagnostics on cases with known answers."""

import arviz as az
import numpy as np
import pytest

from hbmeta.diagnostics.modes import mode_report, nested_rhat, per_mode_diagnostics

GROUPS = [0, 0, 1, 1, 2, 2, 3, 3]


def test_nested_rhat_of_iid_normal_draws_is_near_one(rng):
    x = rng.normal(size=(8, 500))
    # B̂ is the variance of 4 superchain means of 1000 draws each (about 1e-3), Ŵ about 1: nR̂ ≈ 1.0005
    assert abs(nested_rhat(x, GROUPS) - 1.0) < 0.005


def test_nested_rhat_with_one_chain_per_superchain_is_the_classic_rhat(rng):
    x = rng.normal(size=(4, 300)) + np.array([0.0, 0.1, 0.3, 0.0])[:, None]
    classic = float(az.rhat(az.convert_to_dataset({"x": x}), method="identity")["x"].values)
    np.testing.assert_allclose(nested_rhat(x, [0, 1, 2, 3]) ** 2 - 1 / 300, classic**2, rtol=1e-10)


def test_nested_rhat_matches_its_formula_for_separated_modes(rng):
    shifts = np.repeat([0.0, 3.0, 6.0, 9.0], 2)
    x = rng.normal(size=(8, 400)) + shifts[:, None]
    means = x.reshape(4, 2, 400).mean(axis=(1, 2))
    within = np.mean([x[2 * k: 2 * k + 2].mean(axis=1).var(ddof=1) + x[2 * k: 2 * k + 2].var(axis=1, ddof=1).mean()
                      for k in range(4)])
    expected = np.sqrt(1 + means.var(ddof=1) / within)
    np.testing.assert_allclose(nested_rhat(x, GROUPS), expected, rtol=1e-12)
    assert 3.5 < expected < 4.5  # B ≈ Var(0, 3, 6, 9) = 15 against W ≈ 1: sqrt(16) = 4


def test_separated_modes_fail_plain_rhat_but_pass_per_mode(rng):
    x = rng.normal(size=(8, 500)) + np.repeat([0.0, 5.0, 10.0, 15.0], 2)[:, None]
    d = per_mode_diagnostics({"x": x, "y": rng.normal(size=(8, 500))}, GROUPS)
    assert d.plain_rhat[0] > 2 and d.nested_rhat[0] > 5  # rank normalisation caps the plain R-hat lower
    assert d.rhat_max < 1.01 and d.passes()
    # per mode, arviz's rank-normalised split R-hat on that mode's two chains
    np.testing.assert_allclose(d.rhat[1, 0], float(az.rhat(az.convert_to_dataset({"x": x[2:4]}))["x"].values))
    # iid draws: the stratified ESS of the mixture is large (≈ 4000 total draws × Var_mix / within-mode variance)
    assert d.ess_mixture[0] > 4000 and 0.8 * 4000 < d.ess_mixture[1] < 1.25 * 4000
    assert np.allclose(d.weights, 0.25)
    assert "large by design" in mode_report(d)[0] and "passes" in mode_report(d)[1]


def test_unmixed_chains_within_a_mode_are_caught(rng):
    x = rng.normal(size=(8, 500))
    x[5] += 2.0  # mode 2's second chain sits elsewhere: that mode has not mixed
    d = per_mode_diagnostics({"x": x}, GROUPS)
    assert d.rhat[2, 0] > 1.2 and np.all(np.delete(d.rhat[:, 0], 2) < 1.02)
    assert not d.passes()


def test_autocorrelated_chains_give_small_ess(rng):
    x = np.zeros((4, 1000))
    e = rng.normal(size=(4, 1000))
    for t in range(1, 1000):  # AR(1) with ρ = 0.95: ESS ≈ N (1 − ρ)/(1 + ρ) ≈ 26 per chain
        x[:, t] = 0.95 * x[:, t - 1] + e[:, t]
    d = per_mode_diagnostics({"x": x}, [0, 0, 1, 1])
    assert d.ess_mixture[0] < 200 and not d.passes()


def test_weights_enter_the_stratified_ess(rng):
    x = rng.normal(size=(4, 500)) + np.array([0.0, 0.0, 4.0, 4.0])[:, None]
    equal = per_mode_diagnostics({"x": x}, [0, 0, 1, 1])
    skewed = per_mode_diagnostics({"x": x}, [0, 0, 1, 1], weights=[0.9, 0.1])
    # Var_mix = 1 + 16 w(1−w): 5 with equal weights, 2.44 with (0.9, 0.1); MC variance Σ w² /ESS_k
    assert skewed.ess_mixture[0] < equal.ess_mixture[0]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x: nested_rhat(x[:, :1], GROUPS), "at least 2 draws"),
        (lambda x: nested_rhat(x, GROUPS[:-1]), "groups has shape"),
        (lambda x: nested_rhat(x, [0] * 8), "at least 2 superchains"),
        (lambda x: nested_rhat(x, [0, 0, 0, 1, 1, 2, 2, 2]), "equal sizes"),
        (lambda x: per_mode_diagnostics({}, GROUPS), "non-empty dict"),
        (lambda x: per_mode_diagnostics({"x": x, "y": x[:, :5]}, GROUPS), "expected \\(8, 20\\)"),
        (lambda x: per_mode_diagnostics({"x": x}, GROUPS, weights=[0.5, 0.5]), "weights has shape"),
        (lambda x: per_mode_diagnostics({"x": np.where(x > 0, np.nan, x)}, GROUPS), "NaN"),
    ],
)
def test_bad_input(call, match, rng):
    with pytest.raises(ValueError, match=match):
        call(rng.normal(size=(8, 20)))
