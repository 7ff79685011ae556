"""Uncertainty metrics against closed forms and Monte Carlo error bounds.

The definitions: docs/references.md, uncertainty metrics.
"""

import numpy as np
import pytest
from scipy.stats import norm

import hbmeta as hb

LEVELS = np.linspace(0.05, 0.95, 20)


def test_nll_single_gaussian_closed_form(x64):
    rng = np.random.default_rng(0)
    mu, y = rng.normal(size=(50, 1)), rng.normal(size=(50, 1))
    sigma = 0.7
    expected = np.mean(0.5 * np.log(2 * np.pi * sigma**2) + (y - mu) ** 2 / (2 * sigma**2))
    np.testing.assert_allclose(float(hb.mixture_nll(mu, sigma, y, draw_axes=0)), expected, rtol=1e-12)
    # the same Gaussian repeated over (chain, draw) draws is the same predictive
    rep = np.broadcast_to(mu, (3, 4, 50, 1))
    np.testing.assert_allclose(float(hb.mixture_nll(rep, np.full((3, 4), sigma), y)), expected, rtol=1e-12)


def test_nll_two_component_mixture_closed_form(x64):
    y = np.array([[-1.0], [0.3], [2.5]])
    mean = np.stack([np.full((3, 1), -1.0), np.full((3, 1), 2.0)])[None]  # (1 chain, 2 draws, 3, 1)
    sd = np.array([[0.5, 1.5]])
    dens = 0.5 * norm.pdf(y, -1.0, 0.5) + 0.5 * norm.pdf(y, 2.0, 1.5)
    np.testing.assert_allclose(float(hb.mixture_nll(mean, sd, y)), -np.mean(np.log(dens)), rtol=1e-12)
    # logsumexp keeps far-out points finite: density underflows in float64 but the NLL does not
    far = np.array([[60.0]])
    nll = float(hb.mixture_nll(mean[:, :, :1], sd, far))
    expected = -(np.logaddexp(norm.logpdf(60, -1, 0.5), norm.logpdf(60, 2, 1.5)) - np.log(2))
    np.testing.assert_allclose(nll, expected, rtol=1e-12)


def test_nll_joint_over_outputs_and_mask(x64):
    mean = np.zeros((1, 1, 2, 2))
    y = np.array([[1.0, -1.0], [1e6, 0.0]])
    mask = np.array([True, False])
    expected = -(norm.logpdf(1.0) + norm.logpdf(-1.0))
    np.testing.assert_allclose(float(hb.mixture_nll(mean, 1.0, y, mask)), expected, rtol=1e-12)


def test_predictive_mse_of_mean():
    mean = np.array([0.0, 2.0]).reshape(1, 2, 1, 1) * np.ones((1, 2, 3, 1))
    y = np.array([[1.0], [3.0], [100.0]])
    assert float(hb.predictive_mse(mean, y, np.array([True, True, False]))) == pytest.approx((0 + 4) / 2)


def test_calibration_error_perfect_is_within_sampling_error():
    # y ~ the predictive itself, a mixture of two Gaussians (2 draws), so F(y) ~ U(0, 1).
    # Then n·freq(q) ~ Binomial(n, q): E[CE²] = mean_q q(1 − q)/n and E[CE] ≤ sqrt(E[CE²]).
    # Markov: P(CE > 5·sqrt(E[CE²])) ≤ 1/5.
    n = 20_000
    rng = np.random.default_rng(1)
    comp = rng.integers(0, 2, n)
    mus, sds = np.array([-2.0, 1.0]), np.array([0.5, 1.0])
    y = rng.normal(mus[comp], sds[comp])[:, None]
    mean = np.broadcast_to(mus.reshape(1, 2, 1, 1), (1, 2, n, 1))
    bound = 5 * np.sqrt(np.mean(LEVELS * (1 - LEVELS)) / n)
    ce = float(hb.calibration_error(mean, sds[None], y))
    assert ce < bound
    # the same data scored with a predictive too narrow by 2 is far outside that bound
    assert float(hb.calibration_error(mean, sds[None] / 2, y)) > 3 * bound


@pytest.mark.parametrize("rho", [0.0, 1.0])
def test_calibration_error_noise_closed_form_for_independent_and_identical_points(rho):
    # predictive N(0, 1) at every point; y = √ρ a_j + √(1 − ρ) e_jq. ρ = 0: T·Q independent PITs,
    # E[noise²] = mean_q q(1 − q)/(TQ); ρ = 1: the Q points of a task share one PIT, mean_q q(1 − q)/T
    tasks, points = 500, 4
    ratios = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        y = np.sqrt(rho) * rng.normal(size=(tasks, 1, 1)) + np.sqrt(1 - rho) * rng.normal(size=(tasks, points, 1))
        noise = float(hb.calibration_error_noise(np.zeros(y.shape), 1.0, y, draw_axes=0))
        ratios.append(noise ** 2 / (np.mean(LEVELS * (1 - LEVELS)) / (tasks * (points if rho == 0 else 1))))
    assert 0.9 < np.mean(ratios) < 1.1


def test_calibration_error_noise_is_the_spread_of_a_calibrated_predictives_error_over_task_draws():
    # a calibrated predictive (N(0, 1) marginally), points correlated within a task (ρ = 0.6): over 200 draws of
    # 100 tasks × 20 points, the RMS calibration error matches the mean noise estimate (Monte Carlo: within 12%),
    # and it is far above the error that 2,000 independent points would give
    rng = np.random.default_rng(7)
    ces, noises = [], []
    for _ in range(200):
        y = np.sqrt(0.6) * rng.normal(size=(100, 1, 1)) + np.sqrt(0.4) * rng.normal(size=(100, 20, 1))
        ces.append(float(hb.calibration_error(np.zeros(y.shape), 1.0, y, draw_axes=0)))
        noises.append(float(hb.calibration_error_noise(np.zeros(y.shape), 1.0, y, draw_axes=0)))
    rms = np.sqrt(np.mean(np.square(ces)))
    assert abs(np.mean(noises) / rms - 1) < 0.12
    assert rms > 2 * np.sqrt(np.mean(LEVELS * (1 - LEVELS)) / 2000)


def test_calibration_error_noise_respects_the_mask_and_needs_two_tasks():
    rng = np.random.default_rng(3)
    y = rng.normal(size=(50, 6, 1))
    mask = np.ones((50, 6), bool)
    mask[:, 3:] = False
    y_masked = y.copy()
    y_masked[:, 3:] = 40.0  # far outside: would sit at F(y) = 1 if it counted
    masked = hb.calibration_error_noise(np.zeros(y.shape), 1.0, y_masked, mask, draw_axes=0)
    assert float(masked) == pytest.approx(float(hb.calibration_error_noise(np.zeros((50, 3, 1)), 1.0, y[:, :3],
                                                                           draw_axes=0)), rel=1e-5)
    with pytest.raises(ValueError, match="at least two tasks"):
        hb.calibration_error_noise(np.zeros((1, 6, 1)), 1.0, y[:1], draw_axes=0)
    # the per-level standard errors behind it (plot_calibration's band): level q of perfectly correlated points
    # has SE² = q̂(1 − q̂)/(T − 1), q̂ the observed frequency
    levels, se = hb.calibration_standard_errors(np.zeros(y.shape), 1.0, np.repeat(y[:, :1], 6, axis=1), draw_axes=0)
    freq = np.array([np.mean(norm.cdf(y[:, 0, 0]) <= q) for q in np.asarray(levels)])
    np.testing.assert_allclose(np.asarray(se) ** 2, freq * (1 - freq) / 49, rtol=1e-4, atol=1e-9)


def test_calibration_curve_of_a_too_narrow_predictive_matches_normal_cdf():
    # predictive N(μ, (σ/k)²) for y ~ N(μ, σ²): F(y) = Φ(kZ), so freq(q) = P(Φ(kZ) ≤ q) = Φ(Φ⁻¹(q)/k).
    n, k = 40_000, 2.0
    rng = np.random.default_rng(2)
    mu = rng.normal(size=(n, 1))
    y = mu + 1.5 * rng.normal(size=(n, 1))
    q, freq = hb.calibration_curve(mu, 1.5 / k, y, draw_axes=0)
    expected = norm.cdf(norm.ppf(np.asarray(q)) / k)
    assert np.all(np.abs(np.asarray(freq) - expected) < 4 * np.sqrt(expected * (1 - expected) / n))
    np.testing.assert_allclose(np.asarray(q), LEVELS, rtol=1e-6)


@pytest.mark.parametrize("level", [0.5, 0.9, 0.95])
@pytest.mark.parametrize("k", [1.0, 2.0, 0.5])
def test_coverage_of_a_predictive_too_narrow_by_k(level, k):
    # central interval μ ± z_l σ/k covers y ~ N(μ, σ²) with probability 2Φ(z_l/k) − 1
    n = 20_000
    rng = np.random.default_rng(3)
    mu = rng.normal(size=(1, 1, n, 1))
    y = mu[0, 0] + 0.8 * rng.normal(size=(n, 1))
    expected = 2 * norm.cdf(norm.ppf((1 + level) / 2) / k) - 1
    got = float(hb.coverage(mu, np.full((1, 1), 0.8 / k), y, level=level))
    assert abs(got - expected) < 4 * np.sqrt(expected * (1 - expected) / n)


def test_coverage_respects_mask():
    mean = np.zeros((1, 1, 4, 1))
    y = np.array([[0.0], [0.1], [50.0], [60.0]])
    assert float(hb.coverage(mean, 1.0, y, np.array([True, True, False, False]), level=0.5)) == 1.0
    assert float(hb.coverage(mean, 1.0, y, level=0.5)) == 0.5


def test_classification_known_values(x64):
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])[None, None]
    y = np.array([0, 1, 2])
    assert float(hb.accuracy(probs, y)) == pytest.approx(1 / 3)
    np.testing.assert_allclose(float(hb.categorical_nll(probs, y)), -np.mean(np.log([0.7, 0.3, 0.1])), rtol=1e-12)
    brier = np.mean([0.3**2 + 0.2**2 + 0.1**2, 0.1**2 + 0.7**2 + 0.6**2, 0.5**2 + 0.4**2 + 0.9**2])
    np.testing.assert_allclose(float(hb.brier_score(probs, y)), brier, rtol=1e-12)
    # the predictive averages draws: one-hot [1,0,0] and [0,1,0] give p̄ = [½, ½, 0]
    draws = np.array([[1.0, 0, 0], [0, 1.0, 0]]).reshape(1, 2, 1, 3)
    np.testing.assert_allclose(float(hb.brier_score(draws, np.array([0]))), 0.5, rtol=1e-12)
    np.testing.assert_allclose(float(hb.categorical_nll(draws, np.array([1]))), np.log(2), rtol=1e-12)
    # mask drops the second and third points
    mask = np.array([True, False, False])
    assert float(hb.accuracy(probs, y, mask)) == 1.0
    np.testing.assert_allclose(float(hb.brier_score(probs, y, mask)), 0.14, rtol=1e-12)


def test_ece_known_case(x64):
    # confidences 0.9 (bin 13), 0.9, 0.55 (bin 8), 0.55; correct: yes, no, yes, yes
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.55, 0.45], [0.45, 0.55]])[None, None]
    y = np.array([0, 1, 0, 1])
    # bin of 0.9: acc 0.5, conf 0.9 -> gap 0.4; bin of 0.55: acc 1, conf 0.55 -> gap 0.45
    np.testing.assert_allclose(float(hb.expected_calibration_error(probs, y)), 0.5 * 0.4 + 0.5 * 0.45, rtol=1e-12)
    conf, acc, count = (np.asarray(a) for a in hb.reliability_curve(probs, y))
    assert count.sum() == 4 and count[13] == 2 and count[8] == 2
    assert np.isnan(acc[0]) and acc[13] == 0.5 and conf[8] == pytest.approx(0.55)


def test_ece_of_calibrated_probabilities_is_within_its_bound():
    # labels drawn from the probabilities themselves: E[correct | p] = max p, so in each bin
    # acc_b − conf_b has mean 0 and variance ≤ 1/(4 n_b); E[ECE] ≤ Σ_b (n_b/n)/(2 sqrt(n_b)) ≤ ½ sqrt(B/n).
    # Markov: P(ECE > 5 · ½ sqrt(B/n)) ≤ 1/5.
    n, k = 100_000, 4
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.full(k, 0.7), size=n)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    bound = 5 * 0.5 * np.sqrt(15 / n)
    assert float(hb.expected_calibration_error(p, y, draw_axes=0)) < bound
    sharp = p**3 / np.sum(p**3, axis=1, keepdims=True)  # overconfident
    assert float(hb.expected_calibration_error(sharp, y, draw_axes=0)) > 4 * bound


def test_ece_floor_matches_the_binomial_closed_form_and_ignores_masked_points():
    # every point says (0.7, 0.3): one confidence bin, accuracy ~ Bin(n, 0.7)/n under calibration, so the floor is
    # E|Bin(n, 0.7)/n − 0.7| (exact sum); 4,000 relabellings put the Monte Carlo error near 1.5% of it
    from scipy.stats import binom

    n = 300
    exact = float(np.sum(binom.pmf(np.arange(n + 1), n, 0.7) * np.abs(np.arange(n + 1) / n - 0.7)))
    p = np.tile([0.7, 0.3], (n + 50, 1))
    mask = np.r_[np.ones(n, bool), np.zeros(50, bool)]
    p[n:] = [0.5, 0.5]  # masked: would add a second bin if they counted
    floor = float(hb.expected_calibration_error_floor(p, mask, key=0, num_draws=4000, draw_axes=0))
    assert abs(floor / exact - 1) < 0.05
    # and a calibrated predictive's ECE on real labels sits near its floor, an overconfident one far above
    rng = np.random.default_rng(11)
    q = rng.dirichlet(np.full(3, 0.7), size=2000)
    y = (rng.random(2000)[:, None] > np.cumsum(q, axis=1)).sum(axis=1)
    ece_floor = float(hb.expected_calibration_error_floor(q, key=1, draw_axes=0))
    assert float(hb.expected_calibration_error(q, y, draw_axes=0)) < 3 * ece_floor
    sharp = q**3 / np.sum(q**3, axis=1, keepdims=True)
    assert float(hb.expected_calibration_error(sharp, y, draw_axes=0)) > 5 * ece_floor
    with pytest.raises(ValueError, match="num_draws"):
        hb.expected_calibration_error_floor(q, key=1, num_draws=0, draw_axes=0)


def test_metric_input_errors():
    with pytest.raises(ValueError, match="mean has shape"):
        hb.mixture_nll(np.zeros((1, 2, 3, 1)), 1.0, np.zeros((4, 1)))
    with pytest.raises(ValueError, match="mask has shape"):
        hb.coverage(np.zeros((1, 1, 3, 1)), 1.0, np.zeros((3, 1)), np.ones(4, bool))
    with pytest.raises(ValueError, match="level=1.0"):
        hb.coverage(np.zeros((1, 1, 3, 1)), 1.0, np.zeros((3, 1)), level=1.0)
    with pytest.raises(ValueError, match="noise has shape"):
        hb.mixture_nll(np.zeros((1, 2, 3, 1)), np.ones(5), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="integer class labels"):
        hb.accuracy(np.full((1, 1, 2, 3), 1 / 3), np.zeros(2))
    with pytest.raises(ValueError, match="num_bins=0"):
        hb.expected_calibration_error(np.full((1, 1, 2, 3), 1 / 3), np.zeros(2, int), num_bins=0)


def _posterior(noise):
    spec = hb.ModelSpec(hb.GradientSteps(hb.linear().apply, step_size=0.1), {"w": np.zeros(2)},
                        likelihood=hb.NormalLikelihood(noise=noise))
    theta = np.random.default_rng(5).normal(0.5, 0.1, size=(2, 30, 2)).astype(np.float32)
    return hb.Posterior({"theta": theta}, spec, "custom", {})


def test_predictive_metrics_regression_matches_direct_calls():
    post = _posterior(0.3)
    rng = np.random.default_rng(6)
    xs, xq = rng.normal(size=(20, 5, 2)), rng.normal(size=(20, 7, 2))
    yq = xq.sum(-1, keepdims=True) / 2 + 0.3 * rng.normal(size=(20, 7, 1))
    tasks = hb.make_tasks(xs, xs.sum(-1, keepdims=True) / 2, xq, yq)
    pred = hb.sample_predictive(post, tasks, key=0)
    m = hb.predictive_metrics(post, tasks, key=0, predictive=pred)
    assert set(m) == {"mse", "nll", "calibration_error", "calibration_error_noise", "coverage_50", "coverage_90",
                      "coverage_95"}
    assert all(isinstance(v, float) for v in m.values())
    assert m["nll"] == pytest.approx(float(hb.mixture_nll(pred.mean, pred.noise, tasks.y_query)))
    assert m["coverage_90"] == pytest.approx(float(hb.coverage(pred.mean, pred.noise, tasks.y_query, level=0.9)))
    assert m == hb.predictive_metrics(post, tasks, key=0)  # sampling it again with the same key


def test_predictive_metrics_classification():
    net = hb.mlp((2, 4, 3))
    rng = np.random.default_rng(0)
    theta = [{"w": rng.normal(size=(2, 4)).astype(np.float32), "b": np.zeros(4, np.float32)},
             {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}]
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, loss="cross_entropy", step_size=0.5), theta,
                        likelihood=hb.CategoricalLikelihood())
    post = hb.Posterior({"theta": np.asarray(spec.ravel(theta))[None, None]}, spec, "custom", {})
    rng = np.random.default_rng(7)
    tasks = hb.make_tasks(rng.normal(size=(5, 6, 2)), rng.integers(0, 3, (5, 6)), rng.normal(size=(5, 9, 2)),
                          rng.integers(0, 3, (5, 9)))
    m = hb.predictive_metrics(post, tasks, key=0)
    assert set(m) == {"accuracy", "nll", "brier", "ece", "ece_floor"}
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["brier"] <= 2 and m["nll"] > 0
