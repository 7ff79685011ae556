"""Task-level posteriors: closed forms, the dense P × P reference, masks, the in-model integral, bad input.

References computed independently in float64 numpy:

- Linear model f(x; φ) = xᵀφ with φ_j ~ N(μ_j, τ²I), y = f + N(0, σ²): support and
  query targets are jointly N(Xμ_j, τ²XXᵀ + σ²I), so p(Q | S, θ) is the Gaussian
  conditional. With μ_j = θ (prior_mean="theta") it does not depend on the inner
  steps (J is constant); with μ_j = φ̂_j = A_j θ + b_j ("adapted") it does.
- Any network: the Gaussian posterior N(φ̄, (J_SᵀΛJ_S + τ⁻²I)⁻¹) with P × P
  matrices, pushed through the linearisation at φ̂; for classification one
  Gauss–Newton step φ̂ − H⁻¹g.
- The posterior over θ under Π_j p(Q_j | S_j, θ): each factor is Gaussian in θ
  (mean G_j θ + c_j), so the posterior is Gaussian with precision
  I/s² + Σ_j G_jᵀ V_j⁻¹ G_j.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from numpyro.diagnostics import effective_sample_size
from numpyro.infer.util import log_density
from scipy.stats import multivariate_normal

import hbmeta as hb
from hbmeta.model.task_linearised import classification_condition, linearise, mean_field_probs, query_gaussian_one

D, K, M = 2, 4, 5
TAU, SIGMA, PRIOR_SCALE = 0.6, 0.4, 3.0


def linear_tasks(num_tasks, seed=0, k=K, m=M, d=D):
    rng = np.random.default_rng(seed)
    xs, xq = rng.normal(size=(num_tasks, k, d)), rng.normal(size=(num_tasks, m, d))
    w = 1.5 + TAU * rng.normal(size=(num_tasks, d))
    ys = np.einsum("tkd,td->tk", xs, w)[..., None] + SIGMA * rng.normal(size=(num_tasks, k, 1))
    yq = np.einsum("tkd,td->tk", xq, w)[..., None] + SIGMA * rng.normal(size=(num_tasks, m, 1))
    return hb.make_tasks(xs, ys, xq, yq)


def as64(tasks):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if a.dtype.kind == "f" else jnp.asarray(a), tasks)


ALPHA = 0.05


def linear_spec(num_steps=1, tau=TAU, noise=SIGMA, prior_mean="theta"):
    return hb.ModelSpec(
        hb.GradientSteps(hb.linear().apply, step_size=ALPHA, num_steps=num_steps),
        {"w": jnp.zeros(D)},
        prior=hb.NormalPrior(scale=PRIOR_SCALE),
        likelihood=hb.NormalLikelihood(noise=noise),
        task_posterior=hb.TaskPosterior(tau=tau, prior_mean=prior_mean),
    )


def prior_mean_of(xs, ys, theta, prior_mean, num_steps):
    """μ_j: θ, or the gradient-step estimate A θ + b after num_steps steps on the support mean squared error."""
    if prior_mean == "theta":
        return theta
    k = xs.shape[0]
    a1 = np.eye(xs.shape[1]) - (2 * ALPHA / k) * xs.T @ xs
    b1 = (2 * ALPHA / k) * xs.T @ ys
    phi = theta
    for _ in range(num_steps):
        phi = a1 @ phi + b1
    return phi


def exact_conditional(xs, ys, xq, theta, tau=TAU, sigma=SIGMA, prior_mean="theta", num_steps=1):
    """(mean, covariance of y_Q) of the linear model's query targets given its support targets."""
    mu = prior_mean_of(xs, ys, theta, prior_mean, num_steps)
    x = np.concatenate([xs, xq])
    c = tau**2 * x @ x.T + sigma**2 * np.eye(len(x))
    k = len(xs)
    gain = c[k:, :k] @ np.linalg.inv(c[:k, :k])
    return xq @ mu + gain @ (ys - xs @ mu), c[k:, k:] - gain @ c[:k, k:]


def exact_theta_posterior(tasks, prior_mean="theta"):
    """Mean and covariance of p(θ | tasks) ∝ N(θ; 0, s²I) Π_j p(Q_j | S_j, θ) for the linear model."""
    xs, ys, xq, yq = (np.asarray(a, np.float64)
                      for a in (tasks.x_support, tasks.y_support, tasks.x_query, tasks.y_query))
    prec, lin = np.eye(D) / PRIOR_SCALE**2, np.zeros(D)
    for j in range(xs.shape[0]):
        # The conditional mean is affine in θ: G θ + c, with G and c read off at θ = 0 and the unit vectors.
        cond = lambda t, j=j: exact_conditional(xs[j], ys[j, :, 0], xq[j], t, prior_mean=prior_mean)
        c, v = cond(np.zeros(D))
        g = np.stack([cond(e)[0] - c for e in np.eye(D)], axis=1)
        v_inv = np.linalg.inv(v)
        prec += g.T @ v_inv @ g
        lin += g.T @ v_inv @ (yq[j, :, 0] - c)
    cov = np.linalg.inv(prec)
    return cov @ lin, cov


# ----- (a) the linear model: exact Gaussian conditionals, for 1 and 3 inner steps


@pytest.mark.parametrize("prior_mean, num_steps", [("theta", 1), ("theta", 3), ("adapted", 1), ("adapted", 3)])
def test_linear_model_equals_exact_conditional(x64, prior_mean, num_steps):
    tasks = as64(linear_tasks(4))
    spec = linear_spec(num_steps, prior_mean=prior_mean)
    theta = jnp.array([0.7, -1.2])
    pred = hb.task_predictive(spec, theta, tasks, tau=TAU, noise=SIGMA)
    loglik = hb.task_log_likelihood(spec, {"w": theta}, tasks, tau=TAU, noise=SIGMA)
    support = hb.support_log_marginal(spec, theta, tasks, tau=TAU, noise=SIGMA)
    xs, ys, xq, yq = (np.asarray(a) for a in (tasks.x_support, tasks.y_support, tasks.x_query, tasks.y_query))
    for j in range(tasks.num_tasks):
        mean, cov = exact_conditional(xs[j], ys[j, :, 0], xq[j], np.asarray(theta), prior_mean=prior_mean,
                                      num_steps=num_steps)
        np.testing.assert_allclose(pred.mean[j, :, 0], mean, rtol=1e-10)
        np.testing.assert_allclose(pred.var[j, :, 0], np.diag(cov), rtol=1e-10)
        m, tril = query_gaussian_one(spec, theta, *(a[j] for a in (tasks.x_support, tasks.y_support)), None,
                                     tasks.x_query[j], tasks.y_query[j], None, None, TAU, SIGMA)
        np.testing.assert_allclose(np.asarray(tril @ tril.T), cov, rtol=1e-10, atol=1e-12)  # the full covariance
        np.testing.assert_allclose(loglik[j], multivariate_normal(mean, cov).logpdf(yq[j, :, 0]), rtol=1e-10)
        c = TAU**2 * xs[j] @ xs[j].T + SIGMA**2 * np.eye(K)
        mu = prior_mean_of(xs[j], ys[j, :, 0], np.asarray(theta), prior_mean, num_steps)
        np.testing.assert_allclose(support[j], multivariate_normal(xs[j] @ mu, c).logpdf(ys[j, :, 0]), rtol=1e-10)
    assert pred.probs is None


# ----- (b) Woodbury (K·o × K·o solves) equals the dense P × P computation on a small MLP


def small_mlp(out=3):
    net = hb.mlp((2, 6, out), activation="tanh")
    return net, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), net.init(jax.random.key(0)))


@pytest.mark.parametrize("prior_mean", ["adapted", "theta"])
def test_regression_woodbury_equals_dense(x64, prior_mean):
    net, theta = small_mlp(out=3)
    flat, unravel = ravel_pytree(theta)
    rng = np.random.default_rng(1)
    tasks = as64(hb.make_tasks(rng.normal(size=(3, K, 2)), rng.normal(size=(3, K, 3)),
                               rng.normal(size=(3, M, 2)), rng.normal(size=(3, M, 3))))
    rule = hb.GradientSteps(net.apply, step_size=0.1, num_steps=2)
    spec = hb.ModelSpec(rule, theta, task_posterior=hb.TaskPosterior(prior_mean=prior_mean))
    pred = hb.task_predictive(spec, flat, tasks, tau=TAU, noise=SIGMA, task_chunk=2)

    @jax.jit
    def f(p, x):
        return net.apply(unravel(p), x).reshape(-1)

    jac = jax.jit(jax.jacobian(f))
    for j in range(3):
        phi = ravel_pytree(rule(theta, tasks.x_support[j], tasks.y_support[j]))[0]
        js, jq = jac(phi, tasks.x_support[j]), jac(phi, tasks.x_query[j])
        cov = np.linalg.inv(js.T @ js / SIGMA**2 + np.eye(flat.size) / TAU**2)  # P × P
        resid = tasks.y_support[j].reshape(-1) - f(phi, tasks.x_support[j]) + js @ phi
        mu = flat if prior_mean == "theta" else phi
        mean_phi = cov @ (js.T @ resid / SIGMA**2 + mu / TAU**2)
        np.testing.assert_allclose(pred.mean[j].reshape(-1), f(phi, tasks.x_query[j]) + jq @ (mean_phi - phi),
                                   rtol=1e-9)
        np.testing.assert_allclose(pred.var[j].reshape(-1), np.diag(jq @ cov @ jq.T) + SIGMA**2, rtol=1e-9)


@pytest.mark.parametrize("prior_mean", ["adapted", "theta"])
def test_classification_woodbury_equals_dense_gauss_newton_step(x64, prior_mean):
    net, theta = small_mlp(out=3)
    flat, unravel = ravel_pytree(theta)
    rng = np.random.default_rng(2)
    tasks = hb.make_tasks(rng.normal(size=(3, K, 2)), rng.integers(0, 3, (3, K)), rng.normal(size=(3, M, 2)),
                          rng.integers(0, 3, (3, M)))
    tasks = tasks._replace(x_support=jnp.asarray(tasks.x_support, jnp.float64),
                           x_query=jnp.asarray(tasks.x_query, jnp.float64))
    rule = hb.GradientSteps(net.apply, loss="cross_entropy", step_size=0.5)
    spec = hb.ModelSpec(rule, theta, likelihood=hb.CategoricalLikelihood(),
                        task_posterior=hb.TaskPosterior(prior_mean=prior_mean))
    pred = hb.task_predictive(spec, flat, tasks, tau=TAU)
    for j in range(3):
        phi = ravel_pytree(rule(theta, tasks.x_support[j], tasks.y_support[j]))[0]
        p = jax.nn.softmax(net.apply(unravel(phi), tasks.x_support[j]))
        js = jax.jacobian(lambda q, x=tasks.x_support[j]: net.apply(unravel(q), x))(phi)  # (K, k, P)
        jq = jax.jacobian(lambda q, x=tasks.x_query[j]: net.apply(unravel(q), x))(phi)
        h, g = np.eye(flat.size) / TAU**2, (phi - (flat if prior_mean == "theta" else phi)) / TAU**2
        for i in range(K):
            h = h + js[i].T @ (np.diag(p[i]) - np.outer(p[i], p[i])) @ js[i]
            g = g + js[i].T @ (p[i] - np.eye(3)[int(tasks.y_support[j, i])])
        cov = np.linalg.inv(h)
        logits = net.apply(unravel(phi), tasks.x_query[j]) + np.einsum("mkp,p->mk", jq, -cov @ g)
        np.testing.assert_allclose(pred.mean[j], logits, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(pred.var[j], np.einsum("mkp,pq,mkq->mk", jq, cov, jq), rtol=1e-9)
        blocks = np.einsum("mkp,pq,mlq->mkl", jq, cov, jq)
        np.testing.assert_allclose(pred.probs[j], mean_field_probs(pred.mean[j], blocks), rtol=1e-9)


# ----- (c) the in-model likelihood and the posterior over θ


def test_model_log_density_matches_closed_form_marginal(x64):
    # Σ_j log p(Q_j | S_j, θ) = Σ_j [log p(S_j, Q_j | θ) − log p(S_j | θ)] of the explicit model, φ_j integrated out.
    tasks = as64(linear_tasks(5, seed=3))
    model = hb.build_model(linear_spec())
    xs, ys, xq, yq = (np.asarray(a) for a in (tasks.x_support, tasks.y_support[..., 0], tasks.x_query,
                                              tasks.y_query[..., 0]))
    for theta in (np.zeros(D), np.array([1.0, -2.0]), np.array([3.0, 0.5])):
        lp, _ = log_density(model, (tasks,), {}, {"theta": jnp.asarray(theta)})
        ref = np.sum(-0.5 * (theta / PRIOR_SCALE) ** 2 - np.log(PRIOR_SCALE * np.sqrt(2 * np.pi)))
        for j in range(tasks.num_tasks):
            x, y = np.concatenate([xs[j], xq[j]]), np.concatenate([ys[j], yq[j]])
            c = TAU**2 * x @ x.T + SIGMA**2 * np.eye(K + M)
            joint = multivariate_normal(x @ theta, c).logpdf(y)
            ref += joint - multivariate_normal(x[:K] @ theta, c[:K, :K]).logpdf(ys[j])
        np.testing.assert_allclose(float(lp), ref, rtol=1e-10)


@pytest.mark.parametrize("prior_mean", ["theta", "adapted"])
def test_nuts_recovers_the_closed_form_theta_posterior(prior_mean):
    tasks = linear_tasks(20, seed=4)
    mean, cov = exact_theta_posterior(tasks, prior_mean)
    post = hb.run_nuts(linear_spec(prior_mean=prior_mean), tasks, key=jax.random.key(0), num_chains=1, num_warmup=200,
                       num_samples=800, progress=False)
    draws = np.asarray(post.samples["theta"])
    ess = effective_sample_size(draws)
    flat = draws.reshape(-1, D)
    mcse = flat.std(0) / np.sqrt(ess)
    assert np.all(ess > 200), ess
    assert np.all(np.abs(flat.mean(0) - mean) < 4 * mcse), (flat.mean(0), mean, mcse)
    np.testing.assert_allclose(flat.std(0), np.sqrt(np.diag(cov)), rtol=0.10)
    assert set(post.samples) == {"theta"}  # τ and σ fixed: no other latent site


# Tasks drawn from the model itself: w_j ~ N(1, 0.5²I) in 3 dimensions, y = xᵀw_j + N(0, 0.3²). Two support
# points leave one direction of w_j to the prior, so p(Q | S, θ, τ, σ) pins τ and θ down (with K ≥ d the support
# alone fixes w_j and the query-given-support likelihood is nearly flat in τ).
TRUTH_FAMILY = hb.LinearGaussian(dim=3, mean=1.0, scale=0.5, noise=0.3, num_support=2, num_query=8)


def test_tau_and_noise_sites_are_sampled_and_recover_the_truth():
    tasks = TRUTH_FAMILY.sample(jax.random.key(5), 120)
    spec = hb.ModelSpec(hb.GradientSteps(hb.linear().apply, step_size=0.05), {"w": jnp.zeros(3)},
                        prior=hb.NormalPrior(scale=PRIOR_SCALE),
                        task_posterior=hb.TaskPosterior(tau_prior_scale=1.0, prior_mean="theta"))
    post = hb.run_nuts(spec, tasks, key=jax.random.key(1), num_chains=1, num_warmup=150, num_samples=300,
                       progress=False)
    assert post.samples["tau"].shape == post.samples["noise"].shape == (1, 300)
    for name, truth in (("tau", 0.5), ("noise", 0.3), ("theta", np.ones(3))):
        draws = np.asarray(post.samples[name])
        ess = effective_sample_size(draws if draws.ndim == 3 else draws[..., None])
        flat = draws.reshape(300, -1)
        sd, mcse = flat.std(0), flat.std(0) / np.sqrt(ess)
        assert np.all(ess > 100), (name, ess)
        # The truth lies within the posterior's own spread (3 sd) plus the Monte Carlo error of its mean.
        assert np.all(np.abs(flat.mean(0) - truth) < 3 * sd + 4 * mcse), (name, flat.mean(0), sd)
        assert np.all(sd < 0.1 * np.abs(truth))  # and the posterior is narrow enough for that to mean something


def test_type_two_maximum_likelihood_finds_the_maximum_and_the_truth():
    tasks = TRUTH_FAMILY.sample(jax.random.key(6), 150)
    spec = hb.ModelSpec(hb.GradientSteps(hb.linear().apply, step_size=0.05), {"w": jnp.zeros(3)},
                        task_posterior=hb.TaskPosterior(prior_mean="theta"))
    theta = jnp.ones(3)
    fit = hb.fit_task_hyperparameters(spec, theta, tasks, num_steps=30)
    assert fit.tau == pytest.approx(0.5, rel=0.1) and fit.noise == pytest.approx(0.3, rel=0.1)

    def objective(tau, noise):
        return float(jnp.sum(hb.task_log_likelihood(spec, theta, tasks, tau=tau, noise=noise)))

    best = objective(fit.tau, fit.noise)
    for dt, dn in ((1.05, 1), (0.95, 1), (1, 1.05), (1, 0.95)):
        assert objective(fit.tau * dt, fit.noise * dn) < best
    fixed = hb.fit_task_hyperparameters(spec, theta, tasks, noise=0.3, num_steps=30)
    assert fixed.noise == 0.3 and fixed.tau == pytest.approx(fit.tau, rel=0.1)
    assert fit.losses.shape == (30,) and np.all(np.isfinite(fit.losses))
    # the compiled fit is reused for the same spec: another fixed σ and another task count reach it as arguments
    few = tasks.take(jnp.arange(60))
    other = hb.fit_task_hyperparameters(spec, theta, few, noise=0.6, num_steps=30)

    def at_06(tau):
        return float(jnp.sum(hb.task_log_likelihood(spec, theta, few, tau=tau, noise=0.6)))

    assert other.noise == 0.6 and at_06(other.tau) > max(at_06(other.tau * 1.05), at_06(other.tau * 0.95))


def test_type_two_fit_never_ends_worse_than_it_started():
    # these 100 tasks once sent L-BFGS from the grid's best point (loss 0.849) to τ = 2e-6 (loss 6.48): a failed
    # line search's step was taken although it raised the objective
    family = hb.LinearGaussian(dim=3, scale=1.0, noise=0.5, num_support=5, num_query=20)
    tasks = family.sample(jax.random.key(5), 200).take(jnp.asarray(np.r_[150:200, 0:50]))
    spec = hb.ModelSpec(hb.GradientSteps(hb.linear().apply, step_size=0.1), {"w": jnp.zeros(3)},
                        task_posterior=hb.TaskPosterior(prior_mean="theta"))
    fit = hb.fit_task_hyperparameters(spec, jnp.zeros(3), tasks)
    assert np.all(np.diff(fit.losses) <= 0) and fit.losses[-1] <= fit.losses[0]
    assert fit.tau == pytest.approx(1.0, rel=0.25) and fit.noise == pytest.approx(0.5, rel=0.1)


# ----- (d) masks: padded tasks equal unpadded ones


def pad(tasks, extra_support, extra_query, seed=0):
    rng = np.random.default_rng(seed)
    t, k, m = tasks.num_tasks, tasks.x_support.shape[1], tasks.x_query.shape[1]

    def grow(a, n):
        junk = (rng.integers(0, 2, (t, n) + a.shape[2:]) if a.dtype.kind in "iu"
                else 100 * rng.normal(size=(t, n) + a.shape[2:]))
        return np.concatenate([np.asarray(a), junk.astype(a.dtype)], axis=1)

    ms = np.concatenate([np.ones((t, k), bool), np.zeros((t, extra_support), bool)], 1)
    mq = np.concatenate([np.ones((t, m), bool), np.zeros((t, extra_query), bool)], 1)
    return hb.make_tasks(grow(tasks.x_support, extra_support), grow(tasks.y_support, extra_support),
                         grow(tasks.x_query, extra_query), grow(tasks.y_query, extra_query),
                         support_mask=ms, query_mask=mq)


def test_masked_points_have_no_influence(x64):
    tasks = as64(linear_tasks(3, seed=7))
    padded = as64(pad(tasks, 3, 2))
    net, theta = small_mlp(out=1)
    theta = jax.tree.map(lambda a: a[:1] if a.ndim == 1 and a.shape[0] == 2 else a, theta)
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, step_size=0.1), theta,
                        task_posterior=hb.TaskPosterior(tau=TAU, prior_mean="theta"))
    for fn in (hb.task_predictive, hb.task_log_likelihood, hb.support_log_marginal):
        a, b = fn(spec, theta, tasks, tau=TAU, noise=SIGMA), fn(spec, theta, padded, tau=TAU, noise=SIGMA)
        a, b = (a.mean, a.var) if fn is hb.task_predictive else (a,), (b.mean[:, :M], b.var[:, :M]) \
            if fn is hb.task_predictive else (b,)
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=1e-9)
    model = hb.build_model(spec)
    values = {"theta": spec.ravel(theta), "noise": jnp.asarray(SIGMA)}
    lp, _ = log_density(model, (tasks,), {}, values)
    lp_padded, _ = log_density(model, (padded,), {}, values)
    np.testing.assert_allclose(float(lp), float(lp_padded), rtol=1e-10)


def test_masked_classification_points_have_no_influence(x64):
    net, theta = small_mlp(out=3)
    rng = np.random.default_rng(8)
    tasks = hb.make_tasks(rng.normal(size=(2, K, 2)), rng.integers(0, 3, (2, K)), rng.normal(size=(2, M, 2)),
                          rng.integers(0, 3, (2, M)))
    padded = pad(tasks, 2, 3)
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, loss="cross_entropy", step_size=0.5), theta,
                        likelihood=hb.CategoricalLikelihood())
    cast = lambda t: t._replace(x_support=jnp.asarray(t.x_support, jnp.float64),
                                x_query=jnp.asarray(t.x_query, jnp.float64))
    a, b = hb.task_predictive(spec, theta, cast(tasks), tau=TAU), hb.task_predictive(spec, theta, cast(padded), tau=TAU)
    np.testing.assert_allclose(a.probs, b.probs[:, :M], rtol=1e-9)
    np.testing.assert_allclose(hb.task_log_likelihood(spec, theta, cast(tasks), tau=TAU),
                               hb.task_log_likelihood(spec, theta, cast(padded), tau=TAU), rtol=1e-9)


# ----- (e) the mean-field class probabilities against Monte Carlo


def monte_carlo_probs(mean, cov, n=200_000, seed=0):
    z = np.random.default_rng(seed).multivariate_normal(mean, cov, size=n)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return p.mean(0), p.std(0) / np.sqrt(n)


def test_mean_field_binary_is_the_probit_approximation():
    # Two classes: the approximation is σ(Δm / √(1 + π/8 · Var Δz)), whose largest error is 0.013.
    for m, cov in ((np.array([1.5, -0.5]), np.array([[2.0, 0.5], [0.5, 1.0]])),
                   (np.array([0.0, 3.0]), np.array([[6.0, -1.0], [-1.0, 3.0]])),
                   (np.array([0.2, 0.0]), 0.01 * np.eye(2))):
        approx = np.asarray(mean_field_probs(jnp.asarray(m), jnp.asarray(cov)))
        mc, se = monte_carlo_probs(m, cov)
        assert np.all(np.abs(approx - mc) < 0.013 + 4 * se), (approx, mc)


def test_mean_field_multiclass_against_monte_carlo():
    rng = np.random.default_rng(9)
    for scale in (0.1, 0.3, 0.6):
        a = scale * rng.normal(size=(4, 4))
        m, cov = 2 * rng.normal(size=4), a @ a.T
        approx = np.asarray(mean_field_probs(jnp.asarray(m), jnp.asarray(cov)))
        mc, se = monte_carlo_probs(m, cov)
        plug_in = np.exp(m - m.max()) / np.exp(m - m.max()).sum()
        # It removes at least half of the plug-in softmax(m)'s error, and its own error stays below 0.05.
        error = np.abs(approx - mc).max()
        assert error < 0.5 * np.abs(plug_in - mc).max() + 4 * se.max() and error < 0.05, (scale, error)
        shared = cov + 5.0  # a shift shared by every logit leaves softmax, and the approximation, unchanged
        np.testing.assert_allclose(mean_field_probs(jnp.asarray(m), jnp.asarray(shared)), approx, rtol=1e-5)


def test_linearised_classification_predictive_against_monte_carlo(x64):
    net, theta = small_mlp(out=3)
    rng = np.random.default_rng(10)
    tasks = hb.make_tasks(rng.normal(size=(1, K, 2)), rng.integers(0, 3, (1, K)), rng.normal(size=(1, M, 2)),
                          rng.integers(0, 3, (1, M)))
    tasks = tasks._replace(x_support=jnp.asarray(tasks.x_support, jnp.float64),
                           x_query=jnp.asarray(tasks.x_query, jnp.float64))
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, loss="cross_entropy", step_size=0.5), theta,
                        likelihood=hb.CategoricalLikelihood())
    flat = spec.ravel(theta)
    lin = linearise(spec, flat, tasks.x_support[0], tasks.y_support[0], None, tasks.x_query[0], full_query=False)
    mean, blocks = classification_condition(lin, tasks.y_support[0], None, TAU, 3)
    probs = np.asarray(hb.task_predictive(spec, flat, tasks, tau=TAU).probs[0])
    plug_in = np.asarray(jax.nn.softmax(mean, axis=-1))
    errors, plug_in_errors = [], []
    for q in range(M):
        mc, se = monte_carlo_probs(np.asarray(mean[q]), np.asarray(blocks[q]), n=50_000, seed=q)
        errors.append(np.abs(probs[q] - mc).max() - 4 * se.max())
        plug_in_errors.append(np.abs(plug_in[q] - mc).max())
    assert max(plug_in_errors) > 0.1  # the logit variance matters here
    assert max(errors) < 0.05 and np.mean(errors) < 0.5 * np.mean(plug_in_errors), (errors, plug_in_errors)


# ----- (f) bad input


def test_bad_input_raises_value_error():
    tasks = linear_tasks(2)
    spec = linear_spec()
    theta = jnp.zeros(D)
    with pytest.raises(ValueError, match="tau=-1"):
        hb.TaskPosterior(tau=-1.0)
    with pytest.raises(ValueError, match="tau_prior_scale"):
        hb.TaskPosterior(tau_prior_scale=0.0)
    with pytest.raises(ValueError, match="tau="):
        hb.TaskPosterior(tau=[0.1, 0.2])
    with pytest.raises(ValueError, match="prior_mean='mean'"):
        hb.TaskPosterior(prior_mean="mean")
    with pytest.raises(ValueError, match="task_posterior is a str"):
        hb.ModelSpec(spec.rule, spec.params, task_posterior="linearised")
    with pytest.raises(ValueError, match="explicit_tau"):
        hb.ModelSpec(spec.rule, spec.params, explicit_tau=0.5, task_posterior=hb.TaskPosterior())
    for kwargs, pattern in (
        (dict(tau=-0.5, noise=SIGMA), "tau=-0.5"),
        (dict(tau=0.0, noise=SIGMA), "tau=0.0"),
        (dict(tau=TAU, noise=None), "noise=None"),
        (dict(tau=TAU, noise=SIGMA, step_size=-0.1), "step_size"),
        (dict(tau=TAU, noise=SIGMA, task_chunk=0), "task_chunk=0"),
    ):
        with pytest.raises(ValueError, match=pattern):
            hb.task_predictive(spec, theta, tasks, **kwargs)
    with pytest.raises(ValueError, match=r"theta has shape \(3,\)"):
        hb.task_log_likelihood(spec, jnp.zeros(3), tasks, tau=TAU, noise=SIGMA)
    with pytest.raises(ValueError, match="tasks is a dict"):
        hb.support_log_marginal(spec, theta, {}, tau=TAU, noise=SIGMA)
    with pytest.raises(ValueError, match="num_steps=0"):
        hb.fit_task_hyperparameters(spec, theta, tasks, num_steps=0)
    blobs = hb.GaussianBlobs(num_classes=3, shots=1, dim=2).sample(jax.random.key(0), 2)
    net = hb.mlp((2, 4, 3))
    cls = hb.ModelSpec(hb.GradientSteps(net.apply, loss="cross_entropy"), net.init(jax.random.key(0)),
                       likelihood=hb.CategoricalLikelihood(), task_posterior=hb.TaskPosterior(tau=0.1))
    with pytest.raises(ValueError, match="noise=0.5; expected None"):
        hb.task_predictive(cls, cls.params, blobs, tau=0.1, noise=0.5)
    with pytest.raises(ValueError, match="CategoricalLikelihood; expected a NormalLikelihood"):
        hb.build_model(cls)
    with pytest.raises(ValueError, match="categorical likelihood"):
        hb.support_log_marginal(cls, cls.params, blobs, tau=0.1, noise=None)
    inferred = hb.ModelSpec(cls.rule, cls.params, likelihood=hb.CategoricalLikelihood(),
                            task_posterior=hb.TaskPosterior())
    post = hb.Posterior({"theta": np.asarray(cls.flat_template)[None, None]}, inferred, "custom", {})
    with pytest.raises(ValueError, match="no 'tau' draws"):
        hb.sample_predictive(post, blobs, key=0)


# ----- prediction through sample_predictive, summaries, metrics and ArviZ


@pytest.fixture(scope="module")
def sinusoid_posterior():
    net = hb.mlp((1, 16, 1))
    theta = net.init(jax.random.key(0))
    spec = hb.ModelSpec(hb.GradientSteps(net.apply), theta, task_posterior=hb.TaskPosterior())
    flat = spec.ravel(theta) + 0.05 * jax.random.normal(jax.random.key(1), (2, 3, spec.num_params))
    rng = np.random.default_rng(0)
    samples = {"theta": np.asarray(flat), "noise": 0.2 + rng.random((2, 3)), "tau": 0.05 + 0.2 * rng.random((2, 3))}
    tasks = hb.Sinusoid(num_support=5).sample(jax.random.key(2), 5)
    return hb.Posterior(samples, spec, "custom", {}), tasks


def test_sample_predictive_uses_the_task_posterior_per_draw(sinusoid_posterior):
    post, tasks = sinusoid_posterior
    pred = hb.sample_predictive(post, tasks, key=0, draw_chunk=4, task_chunk=2)  # chunks do not divide the sizes
    assert pred.noise.shape == pred.mean.shape == (2, 3, 5, 10, 1)
    for c, s in ((0, 0), (1, 2)):
        ref = hb.task_predictive(post.spec, post.samples["theta"][c, s], tasks, tau=post.samples["tau"][c, s],
                                 noise=post.samples["noise"][c, s])
        np.testing.assert_allclose(pred.mean[c, s], ref.mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(pred.noise[c, s] ** 2, ref.var, rtol=1e-4)
    # Sampled targets are mean + per-point sd × N(0, 1): standardised residuals have unit variance.
    z = (pred.y - pred.mean) / pred.noise
    assert abs(z.std() - 1) < 0.1
    summary = hb.summarize(pred, levels=(0.9,))
    mu = pred.mean.reshape(6, 5, 10, 1)
    np.testing.assert_allclose(summary.sd ** 2, mu.var(0) + (pred.noise.reshape(6, 5, 10, 1) ** 2).mean(0), rtol=1e-5)
    lo, hi = summary.intervals[0.9]
    cdf = hb.mixture_cdf(pred.mean, pred.noise, hi[None, None][0, 0])
    np.testing.assert_allclose(cdf, 0.95, atol=1e-4)  # the mixture's exact quantile with per-point sds
    metrics = hb.predictive_metrics(post, tasks, key=0, predictive=pred)
    assert np.isfinite(metrics["nll"]) and 0 <= metrics["coverage_90"] <= 1
    idata = hb.to_arviz(post, tasks, predictive=pred)
    assert dict(idata.log_likelihood["y"].sizes) == {"chain": 2, "draw": 3, "task": 5}


def test_fixed_tau_without_draws_and_classification_predictive():
    blobs = hb.GaussianBlobs(num_classes=3, shots=2, dim=2).sample(jax.random.key(3), 4)
    net = hb.mlp((2, 8, 3))
    theta = net.init(jax.random.key(4))
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, loss="cross_entropy", step_size=0.5), theta,
                        likelihood=hb.CategoricalLikelihood(), task_posterior=hb.TaskPosterior(tau=0.3))
    post = hb.Posterior({"theta": np.asarray(spec.ravel(theta))[None, None]}, spec, "custom", {})
    pred = hb.sample_predictive(post, blobs, key=0)
    ref = hb.task_predictive(spec, theta, blobs, tau=0.3)
    np.testing.assert_allclose(pred.probs[0, 0], ref.probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.probs.sum(-1), 1.0, rtol=1e-5)
    metrics = hb.predictive_metrics(post, blobs, key=0, predictive=pred)
    assert set(metrics) == {"accuracy", "nll", "brier", "ece", "ece_floor"}


def test_maml_posterior_records_tau_and_a_posterior_init_carries_it():
    tasks = linear_tasks(6, seed=11)
    spec = hb.ModelSpec(hb.GradientSteps(hb.linear().apply, step_size=ALPHA), {"w": jnp.zeros(D)},
                        task_posterior=hb.TaskPosterior())
    post = hb.maml_posterior(spec, {"w": jnp.ones(D)}, tasks, tau=0.3, noise=0.2)
    assert float(post.samples["tau"][0, 0]) == pytest.approx(0.3) and post.settings["tau"] == 0.3
    from hbmeta.inference.common import init_values

    values = init_values(spec, post, tasks.num_tasks)
    assert float(values["tau"]) == pytest.approx(0.3) and float(values["noise"]) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="spec.task_posterior is None"):
        hb.maml_posterior(hb.ModelSpec(spec.rule, spec.params), {"w": jnp.ones(D)}, tasks, tau=0.3)
    with pytest.raises(ValueError, match="tau=-0.3"):
        hb.maml_posterior(spec, {"w": jnp.ones(D)}, tasks, tau=-0.3)


def test_float32_model_is_finite_far_from_any_fit():
    # NumPyro starts chains at θ ~ U(−2, 2) in unconstrained space: there τ²K dwarfs σ², and the conditional
    # covariance (a difference of such matrices) needs the rounding-level jitter to stay positive definite.
    net = hb.mlp((1, 40, 40, 1))
    theta = net.init(jax.random.key(0))
    spec = hb.ModelSpec(hb.GradientSteps(net.apply), theta, task_posterior=hb.TaskPosterior())
    tasks = hb.Sinusoid(num_support=5).sample(jax.random.key(1), 4)
    wild = jax.random.uniform(jax.random.key(2), (spec.num_params,), minval=-2, maxval=2)
    lp, _ = log_density(hb.build_model(spec), (tasks,), {}, {"theta": wild, "tau": 5.0, "noise": 0.15})
    assert np.isfinite(float(lp))


def test_task_predictive_scales_equals_one_call_per_scale_and_checks_its_input():
    """Linearised once and conditioned S times, every entry is task_predictive's at that (τ_s, σ_s)."""
    net = hb.mlp((1, 8, 1))
    spec = hb.ModelSpec(hb.GradientSteps(net.apply), net.init(jax.random.key(0)))
    tasks = hb.Sinusoid(num_support=4).sample(jax.random.key(1), 5)
    taus, noises = np.array([0.05, 0.3, 1.2]), np.array([0.6, 0.2, 0.05])
    both = hb.task_predictive_scales(spec, spec.params, tasks, taus=taus, noises=noises, task_chunk=2)
    assert both.mean.shape == both.var.shape == (3, 5, 10, 1) and both.probs is None
    for s in range(3):
        one = hb.task_predictive(spec, spec.params, tasks, tau=float(taus[s]), noise=float(noises[s]))
        np.testing.assert_allclose(both.mean[s], one.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(both.var[s], one.var, rtol=1e-5, atol=1e-7)
    assert float(jnp.std(both.var[:, 0, 0, 0])) > 0.01  # the scales differ: the comparison is not vacuous
    blobs = hb.GaussianBlobs(num_classes=3, shots=2, dim=2).sample(jax.random.key(3), 4)
    cnet = hb.mlp((2, 8, 3))
    cls = hb.ModelSpec(hb.GradientSteps(cnet.apply, loss="cross_entropy", step_size=0.5), cnet.init(jax.random.key(4)),
                       likelihood=hb.CategoricalLikelihood())
    probs = hb.task_predictive_scales(cls, cls.params, blobs, taus=[0.1, 2.0]).probs
    for s, tau in enumerate((0.1, 2.0)):
        np.testing.assert_allclose(probs[s], hb.task_predictive(cls, cls.params, blobs, tau=tau).probs, rtol=1e-5, atol=1e-6)
    for kwargs, pattern in (
        (dict(taus=[0.1, -1.0], noises=[0.1, 0.1]), r"taus=\[0.1, -1.0\]; expected a non-empty 1-D array of positive"),
        (dict(taus=[], noises=[]), r"taus=\[\]; expected a non-empty"),
        (dict(taus="small", noises=[0.1]), "taus='small'; expected a non-empty"),
        (dict(taus=[0.1, 0.2]), "noises=None; expected"),
        (dict(taus=[0.1, 0.2], noises=[0.1]), r"noises has shape \(1,\); expected \(2,\)"),
    ):
        with pytest.raises(ValueError, match=pattern):
            hb.task_predictive_scales(spec, spec.params, tasks, **kwargs)
    with pytest.raises(ValueError, match=r"noises=\[0.5\]; expected None"):
        hb.task_predictive_scales(cls, cls.params, blobs, taus=[0.1], noises=[0.5])
