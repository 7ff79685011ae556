"""Few-shot classification on scikit-learn's 8×8 digits with the MAML paper's convolutional network.

Protocol: N-way K-shot episodes (default 5-way 1-shot, 15 query images per class); meta-training
classes are the digits 0–4 and meta-test classes the digits 5–9, each also rotated by 90°, 180° and
270° (20 classes per side, as in the MAML paper's Omniglot protocol); ``hbmeta.conv4`` with 64
filters, stride-2 convolutions and per-task normalisation; one inner step with α = 0.4 (the paper's
Omniglot value), meta-batch 32, Adam 1e-3 (the paper's), ``--iterations`` meta-iterations.

Methods, all scored on the same ``--test-episodes`` held-out episodes (drawn with their own seed from
the test digits): MAML's θ (point estimate), and the posterior over θ from MAML's θ on a fixed set of
``--posterior-episodes`` training episodes by SVI (mean-field, task subsampling) and by a short NUTS
run. Metrics: accuracy (± 95% interval over episodes), NLL, Brier score and ECE (15 bins).

Speed: in the same process, ms per meta-iteration of hbmeta's ``train_maml`` with ``conv4`` beside a
bare ``jax.jit(jax.vmap(...))`` MAML step written here from scratch (same network, same sizes), in
two versions: with ``lax.conv_general_dilated`` (what one writes first) and with the same im2col
patches product as ``conv4``; compilation excluded, median of chunks.

Usage:
    python bench/fewshot_digits.py                     # the full run (about 15-25 minutes on 2 cores)
    python bench/fewshot_digits.py --quick             # seconds: a smoke test, numbers mean nothing
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hbmeta as hb
from hbmeta.adaptation.conv import conv4
from hbmeta.tasks.digits import TEST_DIGITS, TRAIN_DIGITS, digits_episodes

MAML_PAPER = "Omniglot 5-way 1-shot 98.7 ± 0.4 % (Finn et al. 2017, Table 1)"


# --------------------------------------------------------------------------- the baseline, from scratch
def base_init(key, filters, classes, c_in=1):
    keys = jax.random.split(key, 5)
    params, c = [], c_in
    for k in keys[:4]:
        params.append((jax.random.normal(k, (3, 3, c, filters)) * math.sqrt(2 / (9 * c)), jnp.ones(filters),
                       jnp.zeros(filters)))
        c = filters
    return params, (jax.random.normal(keys[4], (filters, classes)) / math.sqrt(filters), jnp.zeros(classes))


def base_forward(params, x, impl):
    convs, (w_out, b_out) = params
    h = x.reshape(x.shape[0], 8, 8, 1)
    for w, scale, offset in convs:
        if impl == "xla":
            h = jax.lax.conv_general_dilated(h, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        else:
            p = jax.lax.conv_general_dilated_patches(h, (3, 3), (2, 2), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h = p @ jnp.transpose(w, (2, 0, 1, 3)).reshape(-1, w.shape[-1])
        mean = h.mean(axis=(0, 1, 2))
        var = h.var(axis=(0, 1, 2))
        h = jax.nn.relu((h - mean) / jnp.sqrt(var + 1e-5) * scale + offset)
    return h.mean(axis=(1, 2)) @ w_out + b_out


def base_loss(params, x, y, impl):
    logp = jax.nn.log_softmax(base_forward(params, x, impl))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def make_base_loop(impl, opt, alpha, src, meta_batch):
    def task_loss(params, xs, ys, xq, yq):
        g = jax.grad(base_loss)(params, xs, ys, impl)
        phi = jax.tree.map(lambda p, d: p - alpha * d, params, g)
        return base_loss(phi, xq, yq, impl)

    def step(carry, _):
        params, state, key = carry
        key, sub = jax.random.split(key)
        t = src.sample(sub, meta_batch)  # the same episode sampler as hbmeta's run (not part of the MAML code)
        batch = (t.x_support, t.y_support, t.x_query, t.y_query)
        loss, grads = jax.value_and_grad(
            lambda p: jnp.mean(jax.vmap(task_loss, in_axes=(None, 0, 0, 0, 0))(p, *batch)))(params)
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state, key), loss

    @partial(jax.jit, static_argnums=1)
    def loop(carry, n):
        return jax.lax.scan(step, carry, None, length=n)

    return loop


def time_baseline(impl, src, *, filters, meta_batch, iterations, chunk, alpha):
    opt = optax.adam(1e-3)
    params = base_init(jax.random.key(0), filters, src.num_ways)
    carry = (params, opt.init(params), jax.random.key(1))
    loop = make_base_loop(impl, opt, alpha, src, meta_batch)
    carry, _ = loop(carry, chunk)  # compile
    jax.block_until_ready(carry)
    times = []
    for _ in range(max(1, iterations // chunk)):
        t0 = time.perf_counter()
        carry, loss = loop(carry, chunk)
        jax.block_until_ready(loss)
        times.append((time.perf_counter() - t0) / chunk * 1000)
    return float(np.median(times))


def time_hbmeta(src, rule, net, *, meta_batch, iterations, chunk):
    opt = optax.adam(1e-3)
    res = hb.train_maml(net.init(jax.random.key(0)), src, rule=rule, key=jax.random.key(1), num_iterations=chunk,
                        meta_batch_size=meta_batch, chunk_size=chunk, optimizer=opt, progress=False)  # compile
    times = []
    for _ in range(max(1, iterations // chunk)):
        t0 = time.perf_counter()
        res = hb.train_maml(None, src, rule=rule, key=None, num_iterations=chunk, meta_batch_size=meta_batch,
                            chunk_size=chunk, optimizer=opt, progress=False, state=res.state)
        times.append((time.perf_counter() - t0) / chunk * 1000)
    return float(np.median(times))


# --------------------------------------------------------------------------- evaluation
def scores(post, tasks, key):
    pred = hb.sample_predictive(post, tasks, key=key, draw_chunk=16, task_chunk=25)
    m = hb.predictive_metrics(post, tasks, key=key, predictive=pred)
    probs = np.asarray(pred.probs).reshape((-1,) + pred.probs.shape[2:]).mean(axis=0)  # (T, M, k)
    per_task = (probs.argmax(-1) == np.asarray(tasks.y_query)).mean(axis=1)
    m["accuracy_ci95"] = float(1.96 * per_task.std(ddof=1) / np.sqrt(len(per_task)))
    return m


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--query", type=int, default=15, help="query images per class")
    p.add_argument("--filters", type=int, default=64)
    p.add_argument("--iterations", type=int, default=3000, help="MAML meta-iterations")
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--step-size", type=float, default=0.4)
    p.add_argument("--test-episodes", type=int, default=500)
    p.add_argument("--posterior-episodes", type=int, default=100)
    p.add_argument("--svi-steps", type=int, default=1000)
    p.add_argument("--nuts-samples", type=int, default=50)
    p.add_argument("--timing-iterations", type=int, default=100)
    p.add_argument("--xla-baseline-iterations", type=int, default=20,
                   help="iterations of the lax.conv baseline (slow on CPU); 0 skips it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    a = p.parse_args(argv)
    if a.quick:
        a.filters, a.iterations, a.meta_batch, a.test_episodes, a.posterior_episodes = 8, 20, 4, 20, 8
        a.svi_steps, a.nuts_samples, a.timing_iterations, a.xla_baseline_iterations = 10, 4, 10, 10
    chunk = min(50, a.timing_iterations)

    train_src = digits_episodes(TRAIN_DIGITS, num_ways=a.ways, num_shots=a.shots, num_query=a.query)
    test_src = digits_episodes(TEST_DIGITS, num_ways=a.ways, num_shots=a.shots, num_query=a.query)
    net = conv4(a.ways, image_shape=train_src.image_shape, filters=a.filters)
    rule = hb.GradientSteps(net.apply, loss="cross_entropy", step_size=a.step_size)
    print(f"{a.ways}-way {a.shots}-shot digits, conv4 with {a.filters} filters "
          f"({sum(x.size for x in jax.tree.leaves(net.init(jax.random.key(0))))} parameters), "
          f"train digits {TRAIN_DIGITS}, test digits {TEST_DIGITS}, with rotations", flush=True)

    # speed, same process
    ms_hb = time_hbmeta(train_src, rule, net, meta_batch=a.meta_batch, iterations=a.timing_iterations, chunk=chunk)
    ms_patch = time_baseline("patches", train_src, filters=a.filters, meta_batch=a.meta_batch,
                             iterations=a.timing_iterations, chunk=chunk, alpha=a.step_size)
    ms_xla = None
    if a.xla_baseline_iterations:
        n = a.xla_baseline_iterations
        ms_xla = time_baseline("xla", train_src, filters=a.filters, meta_batch=a.meta_batch, iterations=n,
                               chunk=min(10, n), alpha=a.step_size)
    print(f"\nms per meta-iteration (meta-batch {a.meta_batch}, median of chunks, compilation excluded)")
    print(f"  hbmeta train_maml + conv4             {ms_hb:8.2f}")
    print(f"  baseline jit+vmap, im2col patches     {ms_patch:8.2f}   ratio hbmeta / baseline {ms_hb / ms_patch:.3f}")
    if ms_xla is not None:
        print(f"  baseline jit+vmap, lax.conv           {ms_xla:8.2f}   ratio hbmeta / baseline {ms_hb / ms_xla:.3f}")
    sys.stdout.flush()

    # MAML, then the posterior over θ
    t0 = time.perf_counter()
    res = hb.train_maml(net.init(jax.random.key(a.seed)), train_src, rule=rule, key=jax.random.key(a.seed + 1),
                        num_iterations=a.iterations, meta_batch_size=a.meta_batch, optimizer=optax.adam(1e-3),
                        progress=not a.quick)
    t_maml = time.perf_counter() - t0
    spec = hb.ModelSpec(rule, res.params, likelihood=hb.CategoricalLikelihood())
    post_tasks = train_src.fixed(jax.random.key(a.seed + 2), a.posterior_episodes).tasks
    test = test_src.sample(jax.random.key(10_000 + a.seed), a.test_episodes)  # held out: own seed, used once
    maml_post = hb.maml_posterior(spec, res.params, post_tasks)
    posts, times = {"maml": maml_post}, {"maml": t_maml}
    t0 = time.perf_counter()
    posts["svi (mean-field)"] = hb.infer(spec, post_tasks, method="svi", key=jax.random.key(a.seed + 3), init=maml_post,
                                         num_steps=a.svi_steps, num_draws=32,
                                         subsample_size=min(16, a.posterior_episodes),
                                         progress=False)
    times["svi (mean-field)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    posts["nuts (short)"] = hb.infer(spec, post_tasks, method="nuts", key=jax.random.key(a.seed + 4), init=maml_post,
                                     num_chains=1, num_warmup=a.nuts_samples, num_samples=a.nuts_samples,
                                     max_tree_depth=3, progress=False)
    times["nuts (short)"] = time.perf_counter() - t0

    print(f"\nheld-out: {a.test_episodes} episodes of the test digits (each with {a.ways * a.query} query images)")
    print(f"  {'method':<18}{'accuracy':>18}{'NLL':>9}{'Brier':>9}{'ECE':>9}{'fit s':>9}")
    results = {}
    for name, post in posts.items():
        m = scores(post, test, jax.random.key(a.seed + 5))
        results[name] = m
        print(f"  {name:<18}{m['accuracy']:>10.4f} ± {m['accuracy_ci95']:.4f}{m['nll']:>9.4f}{m['brier']:>9.4f}"
              f"{m['ece']:>9.4f}{times[name]:>9.1f}")
    print(f"\nfor reference, the MAML paper: {MAML_PAPER}; these are 8×8 digits, not Omniglot.")
    return {"ms": {"hbmeta": ms_hb, "baseline_patches": ms_patch, "baseline_xla": ms_xla}, "results": results}


if __name__ == "__main__":
    main()
