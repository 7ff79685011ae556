"""Sharded against unsharded results on every path with a task axis; run by tests/test_scale_sharding.py.

``checks(n)`` computes each path once with ``devices=None`` and once split over
``n`` devices and returns ``{name: relative difference}``, plus the
``shard_map`` trap (a naive ``grad`` inside ``shard_map``) as a difference
that must be large. Beside the task axis, the axes of independent units: the
ensemble's members spread over the ``n`` devices against all on one, and (for
``n = 2``) NUTS's 2 chains one per device (``chain_method="parallel"``) against
vectorised; the choices' reasons are returned as strings. ``python tests/_scale_checks.py N [--no-samplers] [--real-devices]`` prints the same as
JSON (the test runs it in a fresh process with N simulated CPU devices);
``--no-samplers`` leaves out NUTS, SVI, SVGD and Laplace (their potential is
the log density checked anyway) and scores the predictive with MAML's θ.
"""

from __future__ import annotations

import json
import os
import sys


def _rel(a, b):
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-30))


def _flat(tree):
    import jax
    import numpy as np

    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def checks(n: int, *, samplers: bool = True) -> dict:
    import jax
    import jax.numpy as jnp
    from numpyro.infer.util import log_density

    import hbmeta as hb
    from hbmeta.model.hierarchical import build_model
    from hbmeta.tasks.sharding import place_tasks, shard_inputs, task_mesh

    assert jax.device_count() >= n, (jax.device_count(), n)
    out = {}
    net = hb.mlp((1, 8, 1))
    rule = hb.GradientSteps(net.apply, step_size=0.05, num_steps=2)
    maml = hb.train_maml(net.init(jax.random.key(0)), hb.Sinusoid(), rule=rule, key=jax.random.key(1),
                         num_iterations=10, meta_batch_size=8, progress=False)
    maml_n = hb.train_maml(net.init(jax.random.key(0)), hb.Sinusoid(), rule=rule, key=jax.random.key(1),
                           num_iterations=10, meta_batch_size=8, progress=False, devices=n)
    out["maml_losses"] = _rel(maml_n.losses, maml.losses)
    out["maml_params"] = _rel(_flat(maml_n.params), _flat(maml.params))
    theta = maml.params
    tasks = hb.Sinusoid().sample(jax.random.key(2), 8)
    spec = hb.ModelSpec(rule, theta)  # σ inferred: two latent sites

    # the model's log density and its gradient (what NUTS, HMC and SVI differentiate)
    model = build_model(spec)
    flat = spec.ravel(theta)
    f = jax.jit(jax.value_and_grad(lambda th, t: log_density(model, (t,), {}, {"theta": th, "noise": 0.3})[0]))
    v1, g1 = f(flat, tasks)
    vn, gn = f(flat, place_tasks(tasks, n))
    out["log_density"], out["log_density_grad"] = _rel(vn, v1), _rel(gn, g1)
    # as the samplers see it: the tasks closed over by a compiled function (a constant, on one device) are
    # split again by shard_inputs, so the compiled potential sums the tasks' terms across devices
    mesh = task_mesh(jax.devices()[:n])
    closed = jax.jit(jax.grad(lambda th: log_density(shard_inputs(model, mesh), (tasks,), {},
                                                     {"theta": th, "noise": 0.3})[0]))
    out["closed_log_density_grad"] = _rel(closed(flat), g1)
    out["closed_all_reduces"] = closed.lower(flat).compile().as_text().count("all-reduce")
    unsharded = jax.jit(jax.grad(lambda th: log_density(model, (tasks,), {}, {"theta": th, "noise": 0.3})[0]))
    out["unsharded_all_reduces"] = unsharded.lower(flat).compile().as_text().count("all-reduce")

    # the ensemble's members spread over the n devices (one compiled loop, partitioned along the members)
    # against all on one device: the same arithmetic, member by member
    ens = dict(key=jax.random.key(11), num_members=4, init=net.init, num_iterations=20, meta_batch_size=4,
               progress=False)
    e1 = hb.run_ensemble(spec, tasks, member_devices=None, **ens)
    en = hb.run_ensemble(spec, tasks, **ens)
    out["ensemble_theta"] = _rel(en.samples["theta"], e1.samples["theta"])
    out["ensemble_noise"] = _rel(en.samples["noise"], e1.samples["noise"])
    out["ensemble_losses"] = _rel(en.info["losses"], e1.info["losses"])
    out["ensemble_reasons"] = [e1.info["member_devices_reason"], en.info["member_devices_reason"]]
    out["ensemble_devices"] = [e1.settings["member_devices"], en.settings["member_devices"]]
    from hbmeta.inference.ensemble import choose_member_devices

    out["member_reasons"] = [choose_member_devices(m)[1] for m in (1, 2, 3, 6)]  # nothing compiled

    init = hb.maml_posterior(spec, theta, tasks)
    out["num_devices"] = n
    if not samplers:  # the paths that are not the samplers', with MAML's posterior
        return _predictive_and_task_map(out, n, init, mesh, rule, theta, tasks)
    nuts = dict(method="nuts", key=jax.random.key(3), init=init, num_chains=2, num_warmup=10, num_samples=10,
                max_tree_depth=3, progress=False)
    p1 = hb.infer(spec, tasks, chain_method="vectorized", **nuts)
    pn = hb.infer(spec, tasks, devices=n, **nuts)
    out["nuts_theta"] = _rel(pn.samples["theta"], p1.samples["theta"])
    out["nuts_chain_method"] = pn.settings["chain_method"] + " | " + pn.info["chain_method_reason"]
    if n == 2:  # 2 chains, one per device (pmap; with more devices the same 2 devices, so checked once)
        pp = hb.infer(spec, tasks, **nuts)
        out["nuts_parallel_theta"] = _rel(pp.samples["theta"], p1.samples["theta"])
        out["nuts_parallel_method"] = pp.settings["chain_method"] + " | " + pp.info["chain_method_reason"]

    svi = dict(method="svi", key=jax.random.key(4), init=init, num_steps=40, num_draws=20, progress=False)
    s1, sn = hb.infer(spec, tasks, **svi), hb.infer(spec, tasks, devices=n, **svi)
    out["svi_losses"] = _rel(sn.info["losses"], s1.info["losses"])
    out["svi_theta"] = _rel(sn.samples["theta"], s1.samples["theta"])

    svgd = dict(method="svgd", key=jax.random.key(5), init=init, num_particles=3, num_steps=20, progress=False)
    out["svgd_theta"] = _rel(hb.infer(spec, tasks, devices=n, **svgd).samples["theta"],
                             hb.infer(spec, tasks, **svgd).samples["theta"])

    # Laplace on the linear-Gaussian model (a well-conditioned Hessian: the network's is nearly singular, and
    # its draws would magnify the last bits of the MAP)
    lin = hb.ModelSpec(hb.GradientSteps(hb.linear().apply, step_size=0.1), {"w": jnp.zeros(2)},
                       likelihood=hb.NormalLikelihood(noise=0.5))
    lin_tasks = hb.LinearGaussian(dim=2).sample(jax.random.key(9), 8)
    laplace = dict(method="laplace", key=jax.random.key(10), num_steps=30, num_draws=20, progress=False)
    out["laplace_theta"] = _rel(hb.infer(lin, lin_tasks, devices=n, **laplace).samples["theta"],
                                hb.infer(lin, lin_tasks, **laplace).samples["theta"])

    return _predictive_and_task_map(out, n, s1, mesh, rule, theta, tasks)


def _predictive_and_task_map(out, n, s1, mesh, rule, theta, tasks):
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec

    import hbmeta as hb
    from hbmeta.tasks.sharding import task_map

    # the predictive and the per-task log-likelihood, on a task count that is not a multiple of n
    odd = hb.Sinusoid().sample(jax.random.key(6), 2 * n + 1)
    q1 = hb.sample_predictive(s1, odd, key=jax.random.key(7), task_chunk=3)
    qn = hb.sample_predictive(s1, odd, key=jax.random.key(7), task_chunk=3, devices=n)
    out["predictive_mean"], out["predictive_y"] = _rel(qn.mean, q1.mean), _rel(qn.y, q1.y)
    ll1 = hb.to_arviz(s1, odd, key=jax.random.key(8)).log_likelihood["y"].values
    lln = hb.to_arviz(s1, odd, key=jax.random.key(8), devices=n).log_likelihood["y"].values
    out["log_likelihood"] = _rel(lln, ll1)

    # shard_map: hbmeta's task_map against the naive version (grad inside shard_map w.r.t. a replicated θ)
    losses = lambda p, t: rule.query_losses(p, t)
    naive = jax.shard_map(losses, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec("tasks")),
                          out_specs=PartitionSpec("tasks"))
    reference = jax.jit(losses)(theta, tasks)
    out["task_map_losses"] = _rel(jax.jit(task_map(losses, mesh))(theta, tasks), reference)
    out["naive_shard_map_losses"] = _rel(jax.jit(naive)(theta, tasks), reference)
    meta = lambda fn: jax.jit(jax.grad(lambda p: jnp.mean(fn(p, tasks))))(theta)
    out["task_map_meta_grad"] = _rel(_flat(meta(task_map(losses, mesh))), _flat(meta(losses)))
    return out


if __name__ == "__main__":
    if "--real-devices" not in sys.argv:  # N simulated CPU devices; --real-devices: the accelerators JAX finds
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    if "--real-devices" not in sys.argv:
        jax.config.update("jax_num_cpu_devices", int(sys.argv[1]))
    print("RESULT " + json.dumps(checks(int(sys.argv[1]), samplers="--no-samplers" not in sys.argv)))
