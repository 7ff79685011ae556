"""The cost of checkpoints: the default run's long stages with and without them, as a ratio in one process.

The default model (``models/sinusoid.toml``: 1–40–40–1 ReLU, |T| = 100, 5-shot,
10,000 MAML meta-iterations, meta-batch 25) checkpoints MAML training every
``run.checkpoint_every`` = 1000 meta-iterations; SVI (for a run with
``--method svi``, 2,000 steps) the same. Each stage runs here with the same
chunks, once with a :class:`~hbmeta.base.checkpoint.Checkpointer` saving after
every chunk and once without, alternating ``--repeats`` times after one
untimed warm-up of each (so compilation is not timed); the table gives the
median wall times and their ratio (target: close to 1).

NUTS (the default run's method: 2 chains, 200 warm-up and 200 kept
transitions, tree depth 5, from MAML's θ) saves after each of its 20 chunks.
Each call compiles its own chunk, so its times include compilation; its
baseline is NumPyro's own ``MCMC.run`` of the same kernel (one compiled loop,
no checkpoints) in the same process, and the table gives both ratios.

Usage:
    python bench/checkpoint_overhead.py              # the default run's sizes
    python bench/checkpoint_overhead.py --quick      # a few seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax

import hbmeta as hb
from hbmeta.base.checkpoint import Checkpointer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=10_000, help="MAML meta-iterations (the default run's)")
    p.add_argument("--svi-steps", type=int, default=2_000, help="SVI steps (the sinusoid [inference.svi] default)")
    p.add_argument("--every", type=int, default=1000, help="steps between checkpoints (run.checkpoint_every)")
    p.add_argument("--nuts", type=int, default=200, help="NUTS warm-up and kept transitions per chain (each)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1,000 iterations, 400 SVI steps, every 100, 2 repeats, "
                                                         "20 NUTS transitions")
    a = p.parse_args(argv)
    if a.quick:
        a.iterations, a.svi_steps, a.every, a.repeats, a.nuts = 1000, 400, 100, 2, 20

    net = hb.mlp((1, 40, 40, 1))
    rule = hb.GradientSteps(net.apply, step_size=0.01)
    family = hb.Sinusoid(num_support=5, num_query=10)
    train = family.fixed(jax.random.key(1), 100)
    theta0 = net.init(jax.random.key(0))
    maml = hb.train_maml(theta0, train, rule=rule, key=jax.random.key(2), num_iterations=a.every,
                         meta_batch_size=25, progress=False)
    spec = hb.ModelSpec(rule, maml.params)
    folder = tempfile.mkdtemp(prefix="hbmeta-ck-")

    def stage(name, checkpointed):
        path = os.path.join(folder, f"{name}.npz")
        if os.path.exists(path):
            os.remove(path)  # a fresh start each time: every checkpoint is written, none is resumed
        ck = Checkpointer(path, every_steps=a.every) if checkpointed else None
        t = time.perf_counter()
        if name == "maml":
            r = hb.train_maml(theta0, train, rule=rule, key=jax.random.key(3), num_iterations=a.iterations,
                              meta_batch_size=25, chunk_size=a.every, checkpoint=ck, progress=False)
            jax.block_until_ready(r.params)
        elif name == "ensemble":  # the default run's posterior stage: 8 members' meta-training under vmap
            post = hb.run_ensemble(spec, train.tasks, key=jax.random.key(6), num_members=8, init=net.init,
                                   num_iterations=a.iterations, meta_batch_size=25, chunk_size=a.every,
                                   checkpoint=ck, progress=False)
            jax.block_until_ready(post.samples["theta"])
        else:
            post = hb.run_svi(spec, train.tasks, key=jax.random.key(4), num_steps=a.svi_steps, num_draws=100,
                              init=maml.params, chunk_size=a.every, checkpoint=ck, progress=False)
            jax.block_until_ready(post.samples["theta"])
        wall = time.perf_counter() - t
        return wall, (ck.saves if ck else 0)

    rows = []
    for name, steps in (("maml", a.iterations), ("ensemble", a.iterations), ("svi", a.svi_steps)):
        stage(name, False), stage(name, True)  # compile both
        times = {False: [], True: []}
        saves = 0
        for _ in range(a.repeats):
            for checkpointed in (False, True):
                wall, n = stage(name, checkpointed)
                times[checkpointed].append(wall)
                saves = max(saves, n)
            print(f"  {name}: without {times[False][-1]:.2f} s, with {times[True][-1]:.2f} s", file=sys.stderr,
                  flush=True)
        without, with_ = statistics.median(times[False]), statistics.median(times[True])
        rows.append((name, steps, saves, without, with_))

    print(f"Checkpoint overhead, sinusoid 1-40-40-1, |T| = 100, a checkpoint every {a.every} steps "
          f"(baseline: the same stage without checkpoints, same run; median of {a.repeats})")
    print(f"{'stage':>8} {'steps':>7} {'saves':>6} {'without s':>10} {'with s':>8} {'ratio':>7}")
    for name, steps, saves, without, with_ in rows:
        print(f"{name:>8} {steps:>7,} {saves:>6} {without:>10.2f} {with_:>8.2f} {with_ / without:>7.3f}")

    # NUTS: hbmeta's chunked chains with and without checkpoints, against NumPyro's MCMC.run (compilation included)
    from numpyro.infer import MCMC, NUTS, init_to_value

    from hbmeta.model.hierarchical import build_model

    init = hb.maml_posterior(spec, maml.params, train.tasks)
    kw = dict(num_chains=2, num_warmup=a.nuts, num_samples=a.nuts, max_tree_depth=5, chain_method="vectorized",
              init=init, progress=False)
    from hbmeta.inference.chains import default_chunk_size

    chunk = default_chunk_size(2 * a.nuts)

    def nuts(checkpointed):
        path = os.path.join(folder, "nuts.npz")
        if os.path.exists(path):
            os.remove(path)
        ck = Checkpointer(path) if checkpointed else None
        t = time.perf_counter()
        post = hb.run_nuts(spec, train.tasks, key=jax.random.key(5), chunk_size=chunk, checkpoint=ck, **kw)
        jax.block_until_ready(post.samples["theta"])
        return time.perf_counter() - t, (ck.saves if ck else 0)

    def numpyro_mcmc():
        values = {"theta": spec.ravel(maml.params), "noise": float(init.noise().mean())}
        kernel = NUTS(build_model(spec), max_tree_depth=5, init_strategy=init_to_value(values=values))
        mcmc = MCMC(kernel, num_warmup=a.nuts, num_samples=a.nuts, num_chains=2, chain_method="vectorized",
                    progress_bar=False)
        t = time.perf_counter()
        mcmc.run(jax.random.key(5), train.tasks)
        jax.block_until_ready(mcmc.get_samples())
        return time.perf_counter() - t

    baseline = numpyro_mcmc()
    (without, _), (with_, saves) = nuts(False), nuts(True)
    print(f"NUTS {2 * a.nuts} transitions x 2 chains, compilation included: NumPyro MCMC.run {baseline:.2f} s "
          f"(baseline, same run); hbmeta chunks without checkpoints {without:.2f} s (ratio {without / baseline:.3f}), "
          f"with a checkpoint after each of {saves} chunks {with_:.2f} s (ratio to MCMC.run {with_ / baseline:.3f}, "
          f"to no checkpoints {with_ / without:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
