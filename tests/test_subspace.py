"""Sampling θ in a subspace (hbmeta.model.subspace, hbmeta.inference.subspace_chains) against closed forms.

For linear-Gaussian tasks the posterior over θ is N(m, Λ⁻¹) in closed form (docs/references.md), so the
posterior of the moving coordinates E with the others F held at an anchor a is the Gaussian conditional

    θ_E | θ_F = a_F  ~  N(m_E − Λ_EE⁻¹ Λ_EF (a_F − m_F), Λ_EE⁻¹).

NUTS in the subspace (whitened at the Laplace mode of each chain's subspace) must recover it, for one anchor
and for two anchors at once (chains started from two "members", each sampling its own conditional).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.diagnostics import effective_sample_size
from numpyro.infer.util import potential_energy

import hbmeta as hb
from hbmeta.inference.chains import sample_chains
from hbmeta.model.hierarchical import build_model
from hbmeta.model.subspace import describe, embed, subspace_indices

ALPHA, SIGMA, SCALE = 0.1, 0.5, 2.0
MASK = {"w": np.array([True, False, True])}


def _spec(dim=3):
    return hb.ModelSpec(hb.GradientSteps(hb.linear().apply, step_size=ALPHA), {"w": jnp.zeros(dim)},
                        prior=hb.NormalPrior(scale=SCALE), likelihood=hb.NormalLikelihood(noise=SIGMA))


def _tasks(seed=0, num_tasks=15):
    return hb.LinearGaussian(dim=3).sample(jax.random.key(seed), num_tasks)


def _conditional(tasks, anchor, idx):
    exact = hb.linear_gaussian_posterior(tasks, step_size=ALPHA, noise=SIGMA, prior_scale=SCALE)
    lam = np.linalg.inv(np.asarray(exact.cov, np.float64))
    rest = np.setdiff1d(np.arange(len(anchor)), idx)
    cov = np.linalg.inv(lam[np.ix_(idx, idx)])
    mean = np.asarray(exact.mean)[idx] - cov @ lam[np.ix_(idx, rest)] @ (np.asarray(anchor)[rest] - np.asarray(exact.mean)[rest])
    return mean, cov


def _check_draws(draws, mean, cov):
    """Mean within 5 Monte Carlo standard errors (ESS-based), sd within 15%."""
    for i in range(len(mean)):
        x = np.asarray(draws[..., i], np.float64)
        ess = float(effective_sample_size(x))
        sd = np.sqrt(cov[i, i])
        assert abs(x.mean() - mean[i]) < 5 * sd / np.sqrt(ess), (i, x.mean(), mean[i], sd, ess)
        assert abs(x.std() / sd - 1) < 0.15, (i, x.std(), sd)


def test_indices_of_the_last_layer_and_of_a_mask():
    net = hb.mlp((2, 5, 3))
    spec = hb.ModelSpec(hb.GradientSteps(net.apply), net.init(jax.random.key(0)))
    idx = subspace_indices(spec, "last_layer")
    flat_last = np.asarray(spec.ravel([jax.tree.map(jnp.zeros_like, spec.params[0]),
                                       jax.tree.map(jnp.ones_like, spec.params[1])]))
    np.testing.assert_array_equal(idx, np.flatnonzero(flat_last))
    assert len(idx) == 5 * 3 + 3 and subspace_indices(spec, "all") is None
    assert describe(idx, spec.num_params, "last_layer") == f"last_layer (18 of {spec.num_params} parameters)"
    np.testing.assert_array_equal(subspace_indices(_spec(), MASK), [0, 2])
    theta = embed(jnp.arange(3.0), np.array([0, 2]), jnp.array([[10.0, 20.0], [30.0, 40.0]]))
    np.testing.assert_array_equal(theta, [[10.0, 1.0, 20.0], [30.0, 1.0, 40.0]])


@pytest.mark.parametrize("subspace, match", [
    ("first_layer", "expected one of"),
    ({"w": np.array([True, False])}, "not shaped like the network's params"),
    ({"w": np.zeros(3, bool)}, "selects no parameter"),
    ("last_layer", "expected a list of layers"),
])
def test_bad_subspaces_are_refused(subspace, match):
    with pytest.raises(ValueError, match=match):
        subspace_indices(_spec(), subspace)


def test_whitened_model_has_the_same_density_up_to_a_constant():
    """θ_E = a_E + L u with the prior pushed to u: the potential differences between two points agree."""
    spec, tasks = _spec(), _tasks()
    idx = subspace_indices(spec, MASK)
    model = build_model(spec, subspace=idx)
    anchor = jnp.array([0.3, -0.7, 1.1])
    white = jnp.array([[0.5, 0.0], [0.2, 0.3]])
    z1, z2 = jnp.array([0.1, 0.4]), jnp.array([-0.5, 1.3])
    plain = [potential_energy(model, (tasks, anchor), {}, {"theta_sub": z}) for z in (z1, z2)]
    u = [jnp.linalg.solve(white, z - anchor[idx]) for z in (z1, z2)]
    whitened = [potential_energy(model, (tasks, anchor, white), {}, {"theta_white": v}) for v in u]
    np.testing.assert_allclose(float(whitened[1] - whitened[0]), float(plain[1] - plain[0]), rtol=1e-4)


def test_subspace_nuts_recovers_the_gaussian_conditional():
    spec, tasks = _spec(), _tasks()
    idx = subspace_indices(spec, MASK)
    anchor = np.array([0.4, 1.5, -0.2], np.float32)
    post = hb.run_nuts(spec, tasks, key=1, num_chains=2, num_warmup=300, num_samples=1500, subspace=MASK,
                       init={"w": jnp.asarray(anchor)}, progress=False)
    theta = post.samples["theta"]
    assert theta.shape == (2, 1500, 3) and post.settings["subspace"] == "mask" and post.info["subspace_size"] == 2
    np.testing.assert_array_equal(theta[..., 1], anchor[1])  # the held coordinate never moves
    mean, cov = _conditional(tasks, anchor, idx)
    _check_draws(theta[..., idx], mean, cov)


def test_subspace_nuts_from_two_members_samples_each_members_conditional():
    spec, tasks = _spec(), _tasks(seed=3)
    idx = subspace_indices(spec, MASK)
    anchors = np.array([[0.4, 1.5, -0.2], [1.0, -1.0, 0.5]], np.float32)
    members = hb.Posterior({"theta": anchors[:, None, :]}, spec, "ensemble", {}, {}, {})
    post = hb.run_nuts(spec, tasks, key=2, num_chains=4, num_warmup=300, num_samples=1000, subspace=MASK,
                       init=members, progress=False)
    assert post.settings["chain_modes"] == [0, 0, 1, 1]
    for m in range(2):
        theta = post.samples["theta"][2 * m:2 * m + 2]
        np.testing.assert_array_equal(theta[..., 1], anchors[m, 1])
        mean, cov = _conditional(tasks, anchors[m], idx)
        _check_draws(theta[..., idx], mean, cov)
    diagnosis = hb.diagnose(post, tasks=tasks, key=0, warn=False)
    assert "Within modes: largest R-hat" in diagnosis.text and diagnosis.divergences == 0
    record = diagnosis.record()  # what hbmeta run keeps: R-hat and ESS within modes, not across them
    assert record["scope"] == "within modes" and record["num_modes"] == 2
    assert record["max_rhat"] == pytest.approx(diagnosis.modes.rhat_max) and record["max_rhat"] < 1.05
    assert record["min_ess_mixture"] == pytest.approx(diagnosis.modes.ess_mixture_min)


def test_subspace_needs_an_anchor():
    with pytest.raises(ValueError, match="subspace sampling with init=None"):
        hb.run_nuts(_spec(), _tasks(), key=0, num_chains=1, num_warmup=5, num_samples=5, subspace=MASK, progress=False)


def test_chain_arguments_reach_each_chain():
    """sample_chains' chain_args: each chain's model sees its own value, vectorised or a device per chain."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import NUTS

    def model(y, shift):
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        numpyro.sample("y", dist.Normal(mu + shift, 1.0), obs=y)

    out = {}
    for method, shifts in (("vectorized", jnp.array([0.0, 0.0, 5.0, 5.0])), ("parallel", jnp.array([0.0, 5.0]))):
        draws, _ = sample_chains(NUTS(model), jnp.ones(8), key=jax.random.key(0), num_chains=len(shifts),
                                 num_warmup=100, num_samples=300, chain_method=method, chain_args=(shifts,),
                                 progress=False)  # parallel: a device per chain (conftest: 2 devices)
        out[method] = (draws["mu"], 1.0 - 8 * np.asarray(shifts) / 8.01)
    for draws, expected in out.values():  # each chain's posterior N((8 − 8·shift)/8.01, 1/8.01)
        np.testing.assert_allclose(draws.mean(axis=1), expected, atol=5 * 0.35 / np.sqrt(300 / 3))
    shifts = jnp.array([0.0, 0.0, 5.0, 5.0])
    with pytest.raises(ValueError, match="leading axis of 4"):
        sample_chains(NUTS(model), jnp.ones(8), key=jax.random.key(0), num_chains=4, num_warmup=5, num_samples=5,
                      chain_args=(shifts[:3],), progress=False)


@pytest.mark.parametrize("model, overrides, match", [
    ("sinusoid", ["inference.nuts.members=3"], "expected a multiple of members"),
    ("sinusoid", ["inference.init=prior", "inference.nuts.members=0"], "expected a start whose other weights"),
    ("linear", ["inference.nuts.subspace=last_layer"], "one layer"),
])
def test_configuration_refuses_subspace_settings_that_cannot_run(model, overrides, match):
    from hbmeta.run.config import load_config

    with pytest.raises(ValueError, match=match):
        load_config(model, ["inference.method=nuts", *overrides])
