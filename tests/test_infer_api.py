"""The inference entry points: result shapes, initialisation, the dispatcher, MAML as a posterior, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hbmeta as hb
import hbmeta.inference.laplace
import hbmeta.inference.nuts
import hbmeta.inference.svgd
import hbmeta.inference.svi
from hbmeta.inference.common import init_values, make_posterior

D, T, K, M = 2, 20, 5, 5
ALPHA, SIGMA = 0.1, 0.5


def _tasks(seed=0, num_tasks=T):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_tasks, K + M, D))
    w = np.array([2.0, 1.5]) + 0.5 * rng.standard_normal((num_tasks, D))
    y = np.einsum("tkd,td->tk", x, w)[..., None] + SIGMA * rng.standard_normal((num_tasks, K + M, 1))
    return hb.make_tasks(x[:, :K], y[:, :K], x[:, K:], y[:, K:])


TASKS = _tasks()


def _spec(**kw):
    kw.setdefault("likelihood", hb.NormalLikelihood(noise=SIGMA))
    rule = hb.GradientSteps(hb.linear().apply, step_size=ALPHA, num_steps=1)
    return hb.ModelSpec(rule, {"w": jnp.zeros(D)}, prior=hb.NormalPrior(0.0, 3.0), **kw)


def test_one_chain_shapes_and_start_at_a_posterior_mean():
    # Inferred noise and step size; init from a Posterior (its mean draw). With no warm-up the step size
    # stays 1.0; from this far-off start with a tiny noise every trajectory diverges and is rejected, so
    # every draw must be exactly the initial point. Static HMC covers the kernel="hmc" path.
    spec = _spec(likelihood=hb.NormalLikelihood(noise_prior_scale=1.0), step_size_prior=hb.StepSizePrior())
    theta = np.array([[[8.0, -6.0], [6.0, -4.0]]], np.float32)  # mean (7, -5)
    start = make_posterior(spec, {"theta": theta, "noise": np.full((1, 2), 0.05, np.float32),
                                  "step_size": np.full((1, 2), 0.02, np.float32)}, method="test", settings={})
    post = hb.infer(spec, TASKS, method="hmc", key=jax.random.key(0), num_chains=1, num_warmup=0, num_samples=3,
                    init=start, progress=False)
    assert post.method == "hmc" and post.settings["kernel"] == "hmc" and post.settings["chain_method"] == "sequential"
    assert post.num_chains == 1 and post.num_draws == 3
    assert post.samples["theta"].shape == (1, 3, D)
    for name in ("noise", "step_size", "log_step_size"):
        assert post.samples[name].shape == (1, 3)
    for name in ("diverging", "accept_prob", "step_size", "num_steps", "potential_energy"):
        assert post.sample_stats[name].shape == (1, 3)
    assert post.theta()["w"].shape == (1, 3, D)
    np.testing.assert_allclose(post.samples["theta"], np.broadcast_to([7.0, -5.0], (1, 3, D)), rtol=1e-6)
    np.testing.assert_allclose(post.noise(), 0.05, rtol=1e-5)
    np.testing.assert_allclose(post.step_size(), 0.02, rtol=1e-5)
    assert post.info["num_divergences"] == 3


def test_svi_guide_starts_at_init():
    # With a zero learning rate the fitted guide is the initial guide: its loc must be the init.
    init = {"w": jnp.array([3.0, -1.0])}
    post = hb.run_svi(_spec(), TASKS, key=jax.random.key(0), guide="mean_field", optimizer=optax.sgd(0.0),
                      num_steps=2, num_draws=4000, init=init, init_scale=0.2, progress=False)
    np.testing.assert_allclose(post.info["params"]["theta_auto_loc"], [3.0, -1.0])
    assert post.samples["theta"].shape == (1, 4000, D) and post.method == "svi"
    np.testing.assert_allclose(post.flat("theta").mean(0), [3.0, -1.0], atol=0.02)
    np.testing.assert_allclose(post.flat("theta").std(0), 0.2, rtol=0.05)


def test_svi_counts_its_skipped_steps_and_explains_a_divergence():
    spec = hb.ModelSpec(hb.GradientSteps(hb.linear().apply, step_size=0.1), {"w": jnp.zeros(D)},
                        likelihood=hb.NormalLikelihood(noise=SIGMA))
    # far too large a learning rate: the ELBO overflows at some steps, which are skipped (the state stays)
    post = hb.run_svi(spec, TASKS, key=1, num_steps=50, num_draws=5, optimizer=optax.adam(10.0), progress=False)
    losses = post.info["losses"]
    assert post.info["skipped_steps"] == int((~np.isfinite(losses)).sum()) > 0 and np.isfinite(losses[0])
    assert np.isfinite(post.samples["theta"]).all()
    # larger still: the guide's scale itself overflows; one plain message, not NumPyro's argument check
    with pytest.raises(hb.NonFiniteError, match=r"SVI diverged: .* steps were skipped .* Lower the optimiser's"):
        hb.run_svi(spec, TASKS, key=1, num_steps=50, num_draws=5, optimizer=optax.adam(1e3), progress=False)


def test_laplace_starts_at_init_and_reports_an_indefinite_hessian():
    # f(x) = w2 · tanh(w1 · x) with y = x: θ = 0 is a saddle point of the posterior. With a zero learning
    # rate the "MAP" stays at the init, where the Hessian is indefinite: a clear LinAlgError (a ValueError).
    def apply(p, x):
        return p["w2"] * jnp.tanh(x * p["w1"])

    x = np.linspace(-1, 1, 6).reshape(1, 6, 1).repeat(3, 0)
    tasks = hb.make_tasks(x[:, :3], x[:, :3], x[:, 3:], x[:, 3:])
    spec = hb.ModelSpec(hb.GradientSteps(apply, step_size=0.01), {"w1": jnp.zeros(()), "w2": jnp.zeros(())},
                        prior=hb.NormalPrior(0.0, 3.0), likelihood=hb.NormalLikelihood(noise=0.1))
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite: smallest eigenvalue -"):
        hb.run_laplace(spec, tasks, key=jax.random.key(0), optimizer=optax.sgd(0.0), num_steps=1,
                       init={"w1": jnp.zeros(()), "w2": jnp.zeros(())}, progress=False)
    assert issubclass(np.linalg.LinAlgError, ValueError)


def test_laplace_cov_factor():
    factor, eig = hbmeta.inference.laplace.laplace_cov_factor(np.array([[2.0, 0.5], [0.5, 1.0]]))
    np.testing.assert_allclose(factor @ factor.T, np.linalg.inv([[2.0, 0.5], [0.5, 1.0]]), rtol=1e-10)
    with pytest.raises(np.linalg.LinAlgError, match="singular"):
        hbmeta.inference.laplace.laplace_cov_factor(np.array([[1.0, 1.0], [1.0, 1.0]]))
    with pytest.raises(np.linalg.LinAlgError, match="NaN or infinite"):
        hbmeta.inference.laplace.laplace_cov_factor(np.array([[np.nan, 0.0], [0.0, 1.0]]))


def test_chunked_hessian_equals_jax_hessian():
    a = jnp.asarray(np.random.default_rng(0).standard_normal((7, 7)), jnp.float32)

    def fun(x):
        return jnp.sum(jnp.sin(a @ x) ** 2) + jnp.sum(x**4)

    x = jnp.linspace(-1.0, 1.0, 7)
    np.testing.assert_allclose(hbmeta.inference.laplace.hessian(fun, x, chunk_size=3), jax.hessian(fun)(x),
                               rtol=1e-5, atol=1e-5)


def test_svi_task_subsampling_scales_the_likelihood():
    # Mean-field SVI on 5 of 20 tasks per step: the guide's sds must match the full-data mean-field optimum
    # 1/sqrt(Λ_ii), which a missing T/B scale would inflate by sqrt(T/B) = 2.
    xs, xq = np.asarray(TASKS.x_support, np.float64), np.asarray(TASKS.x_query, np.float64)
    ys, yq = np.asarray(TASKS.y_support, np.float64)[..., 0], np.asarray(TASKS.y_query, np.float64)[..., 0]
    prec, lin = np.eye(D) / 9.0, np.zeros(D)
    for j in range(T):
        a = np.eye(D) - (2 * ALPHA / K) * xs[j].T @ xs[j]
        b = (2 * ALPHA / K) * xs[j].T @ ys[j]
        g = xq[j] @ a
        prec += g.T @ g / SIGMA**2
        lin += g.T @ (yq[j] - xq[j] @ b) / SIGMA**2
    mean = np.linalg.solve(prec, lin)
    sched = optax.cosine_decay_schedule(0.05, 2000, alpha=1e-3)
    post = hb.run_svi(_spec(), TASKS, key=jax.random.key(0), guide="mean_field", subsample_size=5,
                      optimizer=optax.adam(sched), num_steps=2000, num_draws=20000, progress=False)
    sd = 1.0 / np.sqrt(np.diag(prec))
    np.testing.assert_allclose(post.flat("theta").std(0), sd, rtol=0.2)
    assert np.all(np.abs(post.flat("theta").mean(0) - mean) < 2 * sd)


def test_maml_posterior_noise_is_the_rms_query_residual():
    params = {"w": jnp.array([1.8, 1.2])}
    post = hb.maml_posterior(_spec(likelihood=hb.NormalLikelihood()), params, TASKS)
    assert post.method == "maml" and post.samples["theta"].shape == (1, 1, D)
    xs, ys = np.asarray(TASKS.x_support, np.float64), np.asarray(TASKS.y_support, np.float64)[..., 0]
    xq, yq = np.asarray(TASKS.x_query, np.float64), np.asarray(TASKS.y_query, np.float64)[..., 0]
    theta = np.array([1.8, 1.2])
    resid = []
    for j in range(T):
        phi = theta + (2 * ALPHA / K) * xs[j].T @ (ys[j] - xs[j] @ theta)
        resid.append(yq[j] - xq[j] @ phi)
    np.testing.assert_allclose(post.noise(), [[np.sqrt(np.mean(np.square(resid)))]], rtol=1e-5)
    fixed = hb.maml_posterior(_spec(), params, TASKS, noise=0.3, step_size=0.05)
    np.testing.assert_allclose(fixed.noise(), [[0.3]])
    np.testing.assert_allclose(fixed.step_size(), [[0.05]])
    with pytest.raises(ValueError, match="params has tree structure"):
        hb.maml_posterior(_spec(), {"v": jnp.zeros(D)}, TASKS)


def test_init_values_from_every_kind_of_start():
    spec = _spec(likelihood=hb.NormalLikelihood(), step_size_prior=hb.StepSizePrior())
    post = make_posterior(spec, {"theta": np.arange(8.0).reshape(2, 2, 2), "noise": np.array([[1.0, 2.0], [3.0, 4.0]]),
                                 "step_size": np.full((2, 2), 0.1)}, method="test", settings={})
    values = init_values(spec, post, T)
    np.testing.assert_allclose(values["theta"], [3.0, 4.0])
    np.testing.assert_allclose(values["noise"], 2.5)
    np.testing.assert_allclose(values["log_step_size"], np.log(0.1), rtol=1e-6)
    maml = hb.MAMLResult({"w": jnp.array([1.0, 2.0])}, 0.1, np.zeros(1), None)
    np.testing.assert_allclose(init_values(spec, maml, T)["theta"], [1.0, 2.0])
    explicit = init_values(_spec(explicit_tau=0.5), {"w": jnp.array([1.0, 2.0])}, T)
    assert explicit["phi"].shape == (T, 1, D)
    with pytest.raises(ValueError, match="init has tree structure"):
        init_values(spec, {"v": jnp.zeros(D)}, T)
    with pytest.raises(ValueError, match=r"init has a leaf of shape \(3,\)"):
        init_values(spec, {"w": jnp.zeros(3)}, T)
    with pytest.raises(ValueError, match="init is a Posterior over 3 parameters; expected 2"):
        init_values(spec, post._replace(samples={"theta": np.zeros((1, 1, 3))}), T)
    with pytest.raises(ValueError, match="NaN or infinite"):
        init_values(spec, {"w": jnp.array([np.nan, 0.0])}, T)


@pytest.fixture
def no_compilation(monkeypatch):
    """Fail if any method gets as far as building its sampler or optimiser."""

    def forbidden(*args, **kwargs):
        raise AssertionError("bad input reached the inference machinery")

    monkeypatch.setattr(hbmeta.inference.nuts, "sample_chains", forbidden)
    monkeypatch.setattr(hbmeta.inference.svi, "SVI", forbidden)
    monkeypatch.setattr(hbmeta.inference.laplace, "initialize_model", forbidden)
    monkeypatch.setattr(hbmeta.inference.svgd, "SVGD", forbidden)


@pytest.mark.parametrize(
    "method, settings, match",
    [
        ("gibbs", {},
         r"method='gibbs' is not known; expected one of \['nuts', 'hmc', 'svi', 'laplace', 'svgd', 'ensemble', 'maml'\]"),
        ("svi", {"guide": "flow"}, "guide='flow' is not known; expected one of"),
        ("svi", {"guide": "mean_field", "rank": 3}, "rank=3 with guide='mean_field'"),
        ("svi", {"num_warmup": 10}, r"settings \['num_warmup'\] are not known for method='svi'"),
        ("hmc", {"kernel": "nuts"}, r"settings \['kernel'\] are not known for method='hmc'"),
        ("nuts", {"num_chains": 0}, "num_chains=0; expected an integer >= 1"),
        ("nuts", {"target_accept_prob": 1.5}, "target_accept_prob=1.5"),
        ("nuts", {"chain_method": "threads"}, "chain_method='threads' is not known"),
        ("nuts", {"init": {"v": jnp.zeros(D)}}, "init has tree structure"),
        ("svi", {"optimizer": "adam"}, "optimizer is a str; expected an optax optimiser"),
        ("svi", {"subsample_size": 50}, r"subsample_size=50; expected an integer in \[1, 20\]"),
        ("laplace", {"num_draws": 0}, "num_draws=0"),
        ("svgd", {"num_particles": 1}, "num_particles=1; expected an integer >= 2"),
    ],
)
def test_bad_settings_fail_before_compilation(no_compilation, method, settings, match):
    with pytest.raises(ValueError, match=match):
        hb.infer(_spec(), TASKS, method=method, key=jax.random.key(0), **settings)


@pytest.mark.parametrize("method", ["nuts", "svi", "laplace", "svgd"])
def test_mismatched_targets_fail_before_compilation(no_compilation, method):
    labels = TASKS._replace(y_query=jnp.zeros((T, M), jnp.int32))
    with pytest.raises(ValueError, match="y_query has dtype int32.*expected real targets"):
        hb.infer(_spec(), labels, method=method, key=jax.random.key(0))
    with pytest.raises(ValueError, match="y_query has dtype float32.*expected integer class labels"):
        hb.infer(_spec(likelihood=hb.CategoricalLikelihood()), TASKS, method=method, key=jax.random.key(0))


def test_explicit_variant_cannot_subsample_with_a_joint_guide(no_compilation):
    with pytest.raises(ValueError, match="subsample_size=5 with guide='full_rank' in the explicit variant"):
        hb.run_svi(_spec(explicit_tau=0.5), TASKS, key=jax.random.key(0), guide="full_rank", subsample_size=5)
