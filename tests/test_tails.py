"""The ensemble's heavy-tailed task-level predictive: a discrete, variance-preserving Student-t per member.

Checks: the scale-mixture nodes have mean 1 exactly and, as their number grows, their mixture's CDF is
the Student-t's (closed form, scipy); the out-of-sample choice of ν picks the true ν among the grid on
synthetic errors drawn from that discrete mixture, and the Gaussian on Gaussian errors; ``run_ensemble`` with the
task-level posterior returns one draw per node with θ repeated and (τ, σ) scaled by √u_k, and one draw per
member with ``tails=False``; bad ν is refused. The mixture scale c follows the second-moment rule
(recomputed here in numpy) when it has a solution, and the folds' likelihood (a brute-force argmax over
the grid, with the spread that the folds' two members lack against all M added) when the members' spread
exceeds the error of their mean, where it scores new tasks far better than the floor did and within 0.02
nats of the best c for them.
"""

import math
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import hbmeta as hb
from hbmeta.inference.holdout import (
    _FLOOR,
    NOISE_SHARES,
    SCALE_GRID,
    TAIL_DOFS,
    _fold_loglik,
    choose_scale,
    fit_tails,
    holdout_task_scale,
    mixture_fold_score,
    out_of_sample_mask,
    scale_nodes,
)


@pytest.mark.parametrize("dof", [2.5, 3.0, 6.0, 30.0])
def test_scale_nodes_have_mean_one_and_tend_to_the_unit_variance_student_t(dof):
    u = scale_nodes(dof)
    assert u.shape == (8,) and abs(u.mean() - 1) < 1e-12 and np.all(np.diff(u) > 0)
    x = np.linspace(-4, 4, 17)
    t_cdf = stats.t.cdf(x * np.sqrt(dof / (dof - 2)), df=dof)  # T·√((ν−2)/ν) has variance 1

    def gap(k):
        nodes = scale_nodes(dof, k)
        return np.max(np.abs(np.mean(stats.norm.cdf(x[:, None] / np.sqrt(nodes)[None]), axis=1) - t_cdf))

    # the mixture tends to the Student-t as K grows, slowly near ν = 2 (the nodes miss the mixing
    # distribution's heavy tail, and the renormalisation to mean 1 widens them), fast above ν = 4
    few, many = gap(1000), gap(200_000)
    assert many < few and many < {2.5: 0.012, 3.0: 0.002}.get(dof, 1e-4), (few, many)
    assert np.array_equal(scale_nodes(math.inf), np.ones(1))
    with pytest.raises(ValueError, match="dof=2.0; expected more than 2"):
        scale_nodes(2.0)


@pytest.mark.parametrize("true_dof", [3.0, 10.0, math.inf])
def test_fit_tails_recovers_the_shape_of_out_of_sample_errors(true_dof):
    rng = np.random.default_rng(0)
    members, tasks, points = 4, 400, 50
    mu = rng.normal(size=(members, tasks, points, 1))
    var = np.exp(rng.normal(scale=0.3, size=(members, tasks, points, 1)))
    out = np.zeros((members, tasks))
    out[rng.integers(0, members, tasks), np.arange(tasks)] = 1.0  # one out-of-sample member per task
    m = np.argmax(out, axis=0)
    # errors from the model that is fitted: node k of the discrete scale mixture, k uniform
    u_true = scale_nodes(true_dof)
    z = rng.standard_normal((tasks, points, 1)) * np.sqrt(u_true[rng.integers(0, len(u_true), (tasks, points, 1))])
    y = mu[m, np.arange(tasks)] + np.sqrt(var[m, np.arange(tasks)]) * z
    dof, u, scores = fit_tails(mu, var, y, out, np.ones((tasks, points)))
    assert dof == true_dof and set(scores) == {*TAIL_DOFS, math.inf}
    assert scores[dof] == max(scores.values()) and np.array_equal(u, scale_nodes(dof))


def _two_out_of_sample(rng, members, tasks):
    out = np.zeros((members, tasks))
    for j in range(tasks):
        out[rng.choice(members, 2, replace=False), j] = 1.0
    return out


def test_scale_follows_the_second_moment_rule_when_it_has_a_solution():
    rng = np.random.default_rng(1)
    members, tasks, points = 4, 200, 10
    truth = rng.normal(size=(tasks, points, 1))
    mu = truth + 0.3 * rng.normal(size=(members, tasks, points, 1))  # members near the truth: small spread
    var = np.full(mu.shape, 0.5)
    y = truth + 0.5 * rng.normal(size=truth.shape)
    out = _two_out_of_sample(rng, members, tasks)
    c, rule, dof, nodes, scores, r2, v, mean_var = choose_scale(mu, var, y, out, np.ones((tasks, points)))
    sel = out[:, :, None].astype(bool)
    r2_np = np.mean(((mu - y[None]) ** 2)[..., 0][np.broadcast_to(sel, mu.shape[:3])])
    pairs = [np.mean((mu[a, j] - mu[b, j]) ** 2) / 2 for j in range(tasks)
             for a, b in [tuple(np.flatnonzero(out[:, j]))]]
    assert rule == "second moment" and math.isclose(r2, r2_np, rel_tol=1e-5)
    assert math.isclose(v, np.mean(pairs), rel_tol=1e-5)
    assert math.isclose(c, (r2_np - 2 * np.mean(pairs) * 3 / 4) / 0.5, rel_tol=1e-4)
    assert scores is not None and dof in scores and np.array_equal(nodes, scale_nodes(dof))


def test_scale_falls_back_to_the_folds_likelihood_when_the_spread_exceeds_the_error():
    rng = np.random.default_rng(2)
    members, tasks, points = 4, 300, 10
    # every member misses each task by its own offset (sd 1), and claims a variance of 0.2; y has noise 0.1
    truth = rng.normal(size=(tasks, points, 1))
    offsets = rng.normal(size=(members, tasks, 1, 1))
    mu = truth + offsets
    var = np.full(mu.shape, 0.2)
    y = truth + 0.1 * rng.normal(size=truth.shape)
    out = _two_out_of_sample(rng, members, tasks)
    w = np.ones((tasks, points))
    c, rule, dof, nodes, scores, r2, v, mean_var = choose_scale(mu, var, y, out, w)
    assert r2 - 2 * v * 3 / 4 <= _FLOOR * r2  # the regime: no positive variance matches the second moment
    assert rule == "folds' likelihood" and set(scores) == {*TAIL_DOFS, math.inf}
    # brute force: the folds' mixtures of two members, each member's variance c·0.2 plus the spread that two
    # members lack against four, v(1/2 − 1/4) (recomputed here from v)
    missing = np.broadcast_to((v * (1 / out.sum(0) - 1 / members))[None, :, None, None], mu.shape)
    args = [jnp.asarray(a, jnp.float32) for a in (mu, var, y, out, w, missing)]
    best = max((float(_fold_loglik(args[0], args[1] * (r2 / mean_var * g) + args[5], *args[2:5],
                                   jnp.asarray(scale_nodes(d), jnp.float32))), r2 / mean_var * float(g), d)
               for d in (*TAIL_DOFS, math.inf) for g in SCALE_GRID)
    assert math.isclose(c, best[1], rel_tol=1e-5) and dof == best[2] and np.array_equal(nodes, scale_nodes(dof))
    # new tasks of the same kind: the chosen c scores them far better than the floor, whose mixture is four
    # nearly point-like members, and within 0.02 nats of the best c on the grid for these new tasks (the truth)
    truth_new = rng.normal(size=(tasks, points, 1))
    mu_new = truth_new + rng.normal(size=(members, tasks, 1, 1))
    y_new = truth_new + 0.1 * rng.normal(size=truth_new.shape)

    def nll(scale, u=None):
        u = np.ones(1) if u is None else u
        sd = np.sqrt(var[:, None] * scale * u[None, :, None, None, None])
        return -np.mean(np.log(np.mean(stats.norm.pdf(y_new[None, None], mu_new[:, None], sd), axis=(0, 1)) + 1e-300))

    assert nll(c, nodes) < nll(_FLOOR * r2 / mean_var) - 1.0
    oracle = min(nll(r2 / mean_var * float(g), scale_nodes(d)) for d in (*TAIL_DOFS, math.inf) for g in SCALE_GRID)
    assert nll(c, nodes) < oracle + 0.02
    assert 0.2 < c * 0.2 < 2.0  # each member's variance ends near its own squared miss (1), not near 0


def test_ensemble_draws_are_the_nodes_of_each_members_scale_mixture():
    net = hb.mlp((1, 8, 1))
    tasks = hb.Sinusoid(num_support=5, num_query=5).sample(jax.random.key(0), 12)
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, step_size=0.01), net.init(jax.random.key(1)),
                        task_posterior=hb.TaskPosterior())
    # one scale for every task here, so that the fits with and without tails differ only in the nodes
    args = dict(key=1, num_members=4, init=net.init, num_iterations=20, meta_batch_size=4, progress=False,
                spread_scale=False)
    post = hb.run_ensemble(spec, tasks, **args)
    fold = post.info["holdout_noise"]
    assert fold["spread_power"] == 0.0 and "spread_power" not in post.samples
    u = np.asarray(fold["tail_nodes"])
    k = len(u)
    assert post.samples["theta"].shape == (4, k, spec.num_params) and post.settings["tails"] is True
    assert k == (1 if math.isinf(fold["tail_dof"]) else 8) and fold["tail_scores"]
    theta = np.asarray(post.samples["theta"])
    assert np.array_equal(theta, np.repeat(theta[:, :1], k, axis=1))
    for site in ("tau", "noise"):
        np.testing.assert_allclose(post.samples[site], np.asarray(fold[site])[:, None] * np.sqrt(u)[None], rtol=1e-6)
    plain = hb.run_ensemble(spec, tasks, tails=False, **args)
    assert plain.samples["theta"].shape == (4, 1, spec.num_params)
    assert plain.info["holdout_noise"]["tail_scores"] is None
    np.testing.assert_allclose(plain.samples["tau"][:, 0], fold["tau"], rtol=1e-6)  # the same fit, one node
    with pytest.raises(ValueError, match="tails='yes'; expected True or False"):
        hb.run_ensemble(spec, tasks, tails="yes", **args)
    # a fixed σ keeps the Gaussian: the tails would change the noise the user fixed
    fixed = replace(spec, likelihood=hb.NormalLikelihood(noise=0.3))
    assert hb.run_ensemble(fixed, tasks, **args).samples["theta"].shape == (4, 1, spec.num_params)
    assert jnp.all(jnp.isfinite(hb.sample_predictive(post, tasks, key=0).mean))


def _blocks(members, tasks):
    """Member m leaves out blocks m and m + 1 (mod M) of M equal blocks: every task is new to two members."""
    block = np.arange(tasks).reshape(members, -1)
    return np.stack([np.concatenate([block[m], block[(m + 1) % members]]) for m in range(members)])


def test_noise_share_and_spread_power_keep_the_members_own_fit_on_a_well_specified_model():
    # linear-Gaussian tasks and the linear model with φ_j ~ N(θ, τ²I) at the true θ: the task-level posterior is
    # the exact Bayesian predictive at τ = 1, σ = 0.5, so shrinking σ² can only lose on the folds
    family = hb.LinearGaussian(dim=3, scale=1.0, noise=0.5, num_support=5, num_query=20)
    tasks = family.sample(jax.random.key(3), 120)
    spec = hb.ModelSpec(hb.GradientSteps(hb.linear().apply, step_size=0.1), {"w": jnp.zeros(3)},
                        task_posterior=hb.TaskPosterior(prior_mean="theta"))
    fit = holdout_task_scale(spec, np.zeros((4, 3)), tasks, _blocks(4, 120), num_steps=30)
    assert fit.noise_share == 1.0 and set(fit.share_scores) == set(NOISE_SHARES)
    assert max(fit.share_scores, key=fit.share_scores.get) == 1.0
    assert fit.share_scores[1.0] > fit.share_scores[0.25] + 0.01
    np.testing.assert_allclose(fit.noise, 0.5, rtol=0.15)
    np.testing.assert_allclose(fit.tau, 1.0, rtol=0.25)
    # every task has the same scale here (the exact predictive does not depend on y_S): one scale wins
    assert fit.spread_power == 0.0 and max(fit.spread_scores, key=fit.spread_scores.get) == 0.0


def _random_members():
    """Four untrained 1-8-1 members on 16 sinusoid tasks: ``(spec, θ (4, P), tasks, holdout index)``."""
    net = hb.mlp((1, 8, 1))
    tasks = hb.Sinusoid(num_support=5, num_query=5).sample(jax.random.key(0), 16)
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, step_size=0.01), net.init(jax.random.key(1)),
                        task_posterior=hb.TaskPosterior())
    theta = np.stack([hb.ModelSpec(spec.rule, net.init(jax.random.key(k))).ravel(net.init(jax.random.key(k)))
                      for k in range(4)])
    return spec, theta, tasks, _blocks(4, 16)


def test_noise_share_is_the_folds_best_and_scales_only_sigma():
    spec, theta, tasks, index = _random_members()
    own = holdout_task_scale(spec, theta, tasks, index, noise_shares=(1.0,))
    fit = holdout_task_scale(spec, theta, tasks, index)
    assert own.noise_share == 1.0 and list(own.share_scores) == [1.0]
    assert fit.noise_share == max(fit.share_scores, key=fit.share_scores.get) and 1.0 in fit.share_scores
    # τ_m and σ_m are the same type-II fits: only σ² is shared by s, then both are scaled by c
    np.testing.assert_allclose(fit.tau / np.sqrt(fit.scale), own.tau / np.sqrt(own.scale), rtol=1e-5)
    np.testing.assert_allclose(fit.noise / np.sqrt(fit.scale * fit.noise_share), own.noise / np.sqrt(own.scale),
                               rtol=1e-5)
    for bad in ((0.5,), (1.0, 0.0), (1.0, 1.5), ()):
        with pytest.raises(ValueError, match="noise_shares=.*expected factors in \\(0, 1\\] that include 1.0"):
            holdout_task_scale(spec, theta, tasks, index, noise_shares=bad)


def test_mixture_fold_score_is_the_mixture_log_likelihood_with_the_missing_spread():
    rng = np.random.default_rng(4)
    members, tasks, points = 4, 30, 6
    mu = rng.normal(size=(members, tasks, points, 1))
    var = rng.uniform(0.2, 1.0, size=mu.shape)
    y = rng.normal(size=(tasks, points, 1))
    out = _two_out_of_sample(rng, members, tasks)
    u = scale_nodes(4.0)
    got = mixture_fold_score(mu, var, y, out, np.ones((tasks, points)), u, 0.3)
    total = 0.0
    for j in range(tasks):
        ms = np.flatnonzero(out[:, j])
        extra = 0.3 * (1 / len(ms) - 1 / members)
        dens = [stats.norm.pdf(y[j], mu[m, j], np.sqrt((var[m, j] + extra) * uk)) for m in ms for uk in u]
        total += np.sum(np.log(np.mean(dens, axis=0)))
    assert math.isclose(got, total / (tasks * points), rel_tol=1e-4)


def test_noise_shares_are_compared_under_the_fallback_too():
    # the random members scaled up threefold disagree far more than their mean errs: s = 1 falls back to the
    # folds' likelihood, and so does every share; each score is then the best over the same grid of c and ν,
    # so all five are compared (a share whose rule differed from s = 1's would not be)
    spec, theta, tasks, index = _random_members()
    fit = holdout_task_scale(spec, 3 * theta, tasks, index)
    assert fit.scale_rule == "folds' likelihood" and set(fit.share_scores) == set(NOISE_SHARES)
    assert fit.distance_fit is None and list(fit.distance_scales) == [1.0]  # no per-point factor without the rule
    assert fit.noise_share == max(fit.share_scores, key=fit.share_scores.get)
    # the chosen share's score is its own fallback fit's: recomputed from the members' predictives with σ_m √s
    own = holdout_task_scale(spec, 3 * theta, tasks, index, noise_shares=(1.0,))
    s = fit.noise_share
    preds = [hb.task_predictive(spec, jnp.asarray(3 * theta[m]), tasks, tau=float(own.tau[m] / np.sqrt(own.scale)),
                                noise=float(own.noise[m] / np.sqrt(own.scale) * np.sqrt(s))) for m in range(4)]
    mu, var = jnp.stack([p.mean for p in preds]), jnp.stack([p.var for p in preds])
    out, w = out_of_sample_mask(index, 4, tasks.num_tasks), np.ones(tasks.y_query.shape[:2])
    c, rule, _, nodes, *_, v, _ = choose_scale(mu, var, tasks.y_query, out, w)
    assert rule == "folds' likelihood" and math.isclose(c, fit.scale, rel_tol=1e-4)
    assert math.isclose(mixture_fold_score(mu, var * c, tasks.y_query, out, w, nodes, v), fit.share_scores[s],
                        rel_tol=1e-5)
