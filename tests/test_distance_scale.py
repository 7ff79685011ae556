"""The per-point factor c_b of the ensemble's predictive variance by distance to the support.

Checks: the distance is the brute-force nearest valid support point (any input shape); with every member out
of sample each bin's mixture variance c_b V̄_b + spread_b equals the error of the members' mean in that bin
exactly (the second-moment identity per bin), and the floor holds where the spread alone exceeds it; from
two or three out-of-sample members a task the factors match those from all members within Monte Carlo error;
the factor is linear in d between the bins' midpoints and constant beyond them; the predictive multiplies
each point's variance by the factor at its distance and keeps the means; run_ensemble records the factors as
fitted constants (ArviZ names their axes), and ``distance_scale=False`` or one bin leaves the predictive as
it was; bad arguments are refused before any work.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hbmeta as hb
from hbmeta.diagnostics.diagnose import diagnostic_draws
from hbmeta.inference.distance_scale import DISTANCE_BINS, DISTANCE_FLOOR, fit_distance_scale
from hbmeta.inference.holdout import holdout_task_scale
from hbmeta.model.support_distance import distance_factor, support_distance


def test_support_distance_is_the_nearest_valid_support_point_for_any_input_shape():
    rng = np.random.default_rng(0)
    xs, xq = rng.normal(size=(6, 4, 3, 2)), rng.normal(size=(6, 7, 3, 2))  # "images" of 3 × 2
    mask = rng.uniform(size=(6, 4)) < 0.6
    mask[:, 0] = True
    got = np.asarray(jax.vmap(support_distance)(xs, xq, mask))
    for j in range(6):
        flat_s, flat_q = xs[j][mask[j]].reshape(-1, 6), xq[j].reshape(7, 6)
        want = np.sqrt(((flat_q[:, None] - flat_s[None]) ** 2).sum(-1)).min(-1)
        np.testing.assert_allclose(got[j], want, rtol=1e-5)
    assert np.isinf(np.asarray(support_distance(xs[0], xq[0], np.zeros(4, bool)))).all()
    # the factor: edges 0.3, 1.0 give the midpoints 0.15, 0.65 and 1.35 (the last bin as wide as the one before);
    # linear between them, constant beyond
    got = distance_factor(np.array([0.0, 0.15, 0.3, 0.65, 1.0, 5.0, np.inf]), np.array([0.3, 1.0]), np.array([0.5, 1.0, 2.0]))
    np.testing.assert_allclose(got, [0.5, 0.5, 0.65, 1.0, 1.5, 2.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(distance_factor(np.array([0.0, 0.7, np.inf]), np.zeros(0), np.array([1.3])), 1.3, rtol=1e-6)


def _members(rng, num_members=6, num_tasks=200, num_points=10, own_scale=0.6, shared_offset=0.0):
    """Members whose errors grow with d and who disagree near the support more than their mean errs."""
    d = rng.uniform(0.0, 2.0, (num_tasks, num_points))
    shared = (shared_offset + d) * rng.normal(size=(num_tasks, num_points))  # every member's common error
    own = (own_scale + 0.1 * d) * rng.normal(size=(num_members, num_tasks, num_points))  # each member's own
    y = rng.normal(size=(num_tasks, num_points))
    mu = (y[None] - shared[None] - own)[..., None]
    return d, mu, y[..., None]


def test_each_bins_mixture_variance_matches_the_error_of_the_mean_exactly_with_every_member_out():
    rng = np.random.default_rng(1)
    d, mu, y = _members(rng)
    M = mu.shape[0]
    var = np.full(mu.shape, 0.5) * (1 + d[None, ..., None])
    fit = fit_distance_scale(mu, var, y, np.ones((M, d.shape[0])), np.ones(d.shape), d, num_bins=5, floor=0.01)
    assert fit.edges.shape == (4,) and fit.scales.shape == (5,)
    bins = np.sum(d[..., None] >= fit.edges, -1)
    mean = mu.mean(0)
    floored = 0
    for b in range(5):
        sel = bins == b
        err = np.mean((y[sel] - mean[sel]) ** 2)
        spread = np.mean(mu.var(0)[sel])
        if fit.scales[b] > 0.01:
            assert fit.scales[b] * np.mean(var[0][sel]) + spread == pytest.approx(err, rel=1e-4)
        else:  # the spread alone exceeds the error of the mean there: the floor
            assert spread >= err * (1 - 1e-4)
            floored += 1
    assert 0 < floored < 5  # both cases are checked
    assert np.all(np.diff(fit.scales) > 0)
    assert len(np.unique(bins)) == 5 and abs(np.bincount(bins.ravel()).std()) < 0.05 * bins.size / 5  # quantile bins


def test_from_two_or_three_members_a_task_the_factors_match_all_members():
    rng = np.random.default_rng(2)
    d, mu, y = _members(rng, num_members=8, num_tasks=3000, num_points=4, own_scale=0.2, shared_offset=0.3)
    var = np.full(mu.shape, 1.0)
    out = np.zeros((8, 3000))
    for j in range(3000):
        out[rng.choice(8, 2 + j % 2, replace=False), j] = 1.0
    full = fit_distance_scale(mu, var, y, np.ones_like(out), np.ones(d.shape), d, num_bins=4, floor=0.01)
    part = fit_distance_scale(mu, var, y, out, np.ones(d.shape), d, num_bins=4, floor=0.01)
    assert np.all(full.scales > 0.05)  # none floored: the comparison is of the estimates themselves
    np.testing.assert_allclose(part.scales, full.scales, rtol=0.15, atol=0.03)
    np.testing.assert_allclose(part.edges, full.edges)


def test_the_predictive_scales_each_points_variance_by_its_bins_factor():
    net = hb.mlp((1, 8, 1))
    tasks = hb.Sinusoid(num_support=5, num_query=6).sample(jax.random.key(0), 12)
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, step_size=0.01), net.init(jax.random.key(1)),
                        task_posterior=hb.TaskPosterior())
    kw = dict(key=1, num_members=4, init=net.init, num_iterations=20, meta_batch_size=4, progress=False)
    post = hb.run_ensemble(spec, tasks, **kw)
    plain = hb.run_ensemble(spec, tasks, **kw, distance_scale=False)
    shape = post.samples["tau"].shape
    assert post.samples["distance_edges"].shape == (*shape, DISTANCE_BINS - 1)
    assert post.samples["distance_scales"].shape == (*shape, DISTANCE_BINS)
    assert "distance_scales" not in plain.samples and plain.settings["distance_scale"] is False
    fit = post.info["holdout_noise"]
    np.testing.assert_allclose(post.samples["distance_scales"][0, 0], fit["distance_scales"])
    assert np.all(fit["distance_scales"] >= DISTANCE_FLOOR * (1 - 1e-6))
    for name in ("theta", "tau", "noise"):  # the factor is fitted last: everything else is the same
        np.testing.assert_array_equal(post.samples[name], plain.samples[name])
    edges, scales = np.array([0.3, 0.9]), np.array([0.4, 1.0, 2.5])
    custom = post._replace(samples={**{k: v for k, v in post.samples.items() if not k.startswith("distance")},
                                    "distance_edges": np.broadcast_to(edges, (*shape, 2)).astype(np.float32),
                                    "distance_scales": np.broadcast_to(scales, (*shape, 3)).astype(np.float32)})
    base = hb.sample_predictive(plain, tasks, key=3)
    got = hb.sample_predictive(custom, tasks, key=3)
    d = np.asarray(jax.vmap(support_distance)(tasks.x_support, tasks.x_query), np.float64)
    mids = np.array([0.15, 0.6, 1.2])  # the bins [0, 0.3), [0.3, 0.9), [0.9, ∞) taken as 0.6 wide
    c = np.interp(d, mids, scales)
    assert (d < mids[0]).any() and (d > mids[-1]).any() and ((d > mids[0]) & (d < mids[-1])).any()  # not vacuous
    np.testing.assert_allclose(got.mean, base.mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.noise, base.noise * np.sqrt(c)[None, None, :, :, None], rtol=1e-5)
    # the factors are fitted constants: diagnose neither checks nor plots them
    assert not {"distance_edges", "distance_scales"} & set(diagnostic_draws(custom, tasks=tasks))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hb.diagnose(custom, tasks=tasks)
    # ArviZ names the factor's axes: the bins and the edges between them
    idata = hb.to_arviz(custom, tasks, predictive=got)
    assert idata.posterior["distance_scales"].dims[2:] == ("distance_bin",)
    assert idata.posterior["distance_edges"].dims[2:] == ("distance_edge",)
    np.testing.assert_allclose(idata.posterior["distance_scales"].values[0, 0], scales)
    with pytest.raises(ValueError, match="distance_scale='yes'; expected True or False"):
        hb.run_ensemble(spec, tasks, **{**kw, "num_iterations": 2}, distance_scale="yes")


def test_bad_distance_arguments_are_refused_before_any_fit():
    net = hb.mlp((1, 4, 1))
    tasks = hb.Sinusoid(num_support=5, num_query=5).sample(jax.random.key(0), 8)
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, step_size=0.01), net.init(jax.random.key(1)),
                        task_posterior=hb.TaskPosterior())
    theta = jnp.zeros((4, spec.num_params))
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match=f"distance_bins={bad!r}; expected a positive integer"):
            holdout_task_scale(spec, theta, tasks, np.arange(8).reshape(4, 2), distance_bins=bad)
    ones = np.ones((2, 3, 4, 1))
    with pytest.raises(ValueError, match="num_bins=0; expected a positive integer"):
        fit_distance_scale(ones, ones, ones[0], np.ones((2, 3)), np.ones((3, 4)), np.ones((3, 4)), num_bins=0)
    with pytest.raises(ValueError, match=r"floor=1.5; expected a number in \(0, 1\]"):
        fit_distance_scale(ones, ones, ones[0], np.ones((2, 3)), np.ones((3, 4)), np.ones((3, 4)), floor=1.5)
