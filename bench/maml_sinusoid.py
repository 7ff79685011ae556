"""MAML on sinusoids, the paper's protocol exactly, timed against a hand-written baseline.

The protocol and the reported figures: docs/references.md, the MAML sinusoid protocol.

Protocol (Finn et al. 2017, §5.1): y = A sin(x − φ), A ~ U[0.1, 5], φ ~ U[0, π],
x ~ U[−5, 5]; network 1–40–40–1 ReLU, He initialisation (weights N(0, 2/n_in),
biases zero: hbmeta.mlp's default; the paper's code uses N(0, 0.01²), which
in our runs ended 10–40% worse after 70,000 iterations); K = 10 support + 10 query points per
training task; one inner step with α = 0.01; meta-batch 25; Adam with meta
learning rate 0.001; 70,000 meta-iterations on fresh tasks. Evaluation: 600
new tasks, 5-shot, fine-tuned with α = 0.01, mean squared error on the query
points (100 per task here, the paper's figures use its own query sets) after
1, 5 and 10 gradient steps, with a 95% confidence interval.

In the same process it times a minimal hand-written ``jit`` + ``vmap`` MAML
step of the same protocol (plain jax + optax, the same scanned chunks of
meta-iterations), plus the same step dispatched from Python one iteration at a
time, and prints ms per meta-iteration and the ratio hbmeta / baseline.

Usage:
    python bench/maml_sinusoid.py                 # the full 70,000-iteration run
    python bench/maml_sinusoid.py --quick         # a few seconds, for smoke tests
    python bench/maml_sinusoid.py --iterations 5000 --baseline-iterations 3000
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

PAPER = {1: 0.67, 5: 0.38, 10: 0.35}
SIZES = (1, 40, 40, 1)
ALPHA = 0.01
META_LR = 1e-3
META_BATCH = 25
K_TRAIN = 10
K_EVAL = 5


# --------------------------------------------------------------------------- baseline, written from scratch
def baseline_init(hb_params):
    """The baseline's 1–40–40–1 MLP as a list of (w, b), starting from the same weights as hbmeta's
    (He initialisation, biases zero); initialisation is not part of what is timed."""
    return [(layer["w"], layer["b"]) for layer in hb_params]


def baseline_forward(params, x):
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def baseline_mse(params, x, y):
    return jnp.mean(jnp.square(baseline_forward(params, x) - y))


def baseline_task_loss(params, xs, ys, xq, yq):
    grads = jax.grad(baseline_mse)(params, xs, ys)
    phi = jax.tree.map(lambda p, g: p - ALPHA * g, params, grads)
    return baseline_mse(phi, xq, yq)


def baseline_sample(key):
    ka, kp, kx = jax.random.split(key, 3)
    amp = jax.random.uniform(ka, (META_BATCH, 1, 1), minval=0.1, maxval=5.0)
    phase = jax.random.uniform(kp, (META_BATCH, 1, 1), minval=0.0, maxval=math.pi)
    x = jax.random.uniform(kx, (META_BATCH, 2 * K_TRAIN, 1), minval=-5.0, maxval=5.0)
    y = amp * jnp.sin(x - phase)
    return x[:, :K_TRAIN], y[:, :K_TRAIN], x[:, K_TRAIN:], y[:, K_TRAIN:]


ADAM = optax.adam(META_LR)


def baseline_step(carry, _):
    params, opt_state, key = carry
    key, sub = jax.random.split(key)
    batch = baseline_sample(sub)

    def meta(p):
        return jnp.mean(jax.vmap(baseline_task_loss, (None, 0, 0, 0, 0))(p, *batch))

    loss, grads = jax.value_and_grad(meta)(params)
    updates, opt_state = ADAM.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, key), loss


@partial(jax.jit, static_argnums=1)
def baseline_chunk(carry, n):
    return jax.lax.scan(baseline_step, carry, None, length=n)


baseline_single = jax.jit(lambda carry: baseline_step(carry, None))


def time_both(key, rounds, chunk, rule, net, optimizer):
    """Steady-state ms per meta-iteration of hbmeta's ``train_maml`` and of the scanned baseline.

    Both compile on a first chunk (not timed); then ``rounds`` chunks of each
    run alternately, so that load on a shared machine hits both alike, and the
    median over rounds is reported. hbmeta's chunks go through the public
    ``train_maml`` (resuming its state), including its per-chunk host work.
    """
    k_params, k_train = jax.random.split(key)
    theta = net.init(k_params)
    warm = hb.train_maml(theta, hb.Sinusoid(), rule=rule, key=k_train,
                         optimizer=optimizer, num_iterations=chunk, chunk_size=chunk, progress=False)
    state = warm.state
    params = baseline_init(theta)
    carry = (params, ADAM.init(params), k_train)
    carry, losses = baseline_chunk(carry, chunk)
    np.asarray(losses)
    t_hb, t_base = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        state = hb.train_maml(None, hb.Sinusoid(), rule=rule, key=None, optimizer=optimizer, num_iterations=chunk,
                              chunk_size=chunk, progress=False, state=state).state
        jax.block_until_ready(state.params)
        t_hb.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        carry, losses = baseline_chunk(carry, chunk)
        np.asarray(losses)  # the same host transfer hbmeta does per chunk
        t_base.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(t_hb)) / chunk, 1e3 * float(np.median(t_base)) / chunk


def time_baseline_dispatched(key, iterations, net):
    """ms per meta-iteration of the baseline step dispatched from Python one iteration at a time."""
    k_params, k_train = jax.random.split(key)
    params = baseline_init(net.init(k_params))
    carry = (params, ADAM.init(params), k_train)
    carry, loss = baseline_single(carry)
    jax.block_until_ready(loss)
    t0 = time.perf_counter()
    for _ in range(iterations):
        carry, loss = baseline_single(carry)
    jax.block_until_ready(loss)
    return 1e3 * (time.perf_counter() - t0) / iterations


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=70_000,
                        help="meta-iterations of the hbmeta run (default 70000)")
    parser.add_argument("--baseline-iterations", type=int, default=3000,
                        help="meta-iterations timed for each implementation (default 3000)")
    parser.add_argument("--dispatch-iterations", type=int, default=None,
                        help="iterations timed for the Python-dispatched baseline (default 500; 0 skips it; "
                             "--quick skips it)")
    parser.add_argument("--chunk-size", type=int, default=1000,
                        help="meta-iterations per compiled chunk (default 1000)")
    parser.add_argument("--eval-tasks", type=int, default=600, help="evaluation tasks (default 600)")
    parser.add_argument("--query-points", type=int, default=100, help="query points per evaluation task (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    parser.add_argument("--quick", action="store_true", help="a short run for smoke tests (seconds)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress display")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations = min(args.iterations, 1000)  # He-initialised nets diverge in 10-step fine-tuning before ~500
        args.baseline_iterations = min(args.baseline_iterations, 200)
        args.chunk_size = min(args.chunk_size, 100)
        args.eval_tasks = min(args.eval_tasks, 100)
    if args.dispatch_iterations is None:  # --quick skips it: one compilation fewer
        args.dispatch_iterations = 0 if args.quick else 500
    for name in ("iterations", "baseline_iterations", "chunk_size", "eval_tasks", "query_points"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")

    key = jax.random.key(args.seed)
    k_init, k_train, k_eval, k_time = jax.random.split(key, 4)
    net = hb.mlp(SIZES, activation="relu", init="he")
    rule = hb.GradientSteps(net.apply, loss="mse", step_size=ALPHA, num_steps=1)
    chunk = min(args.chunk_size, args.baseline_iterations)

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    print(f"Timing {args.baseline_iterations} meta-iterations each: chunks of {chunk}, alternating, "
          "median over chunks, compilation excluded")
    rounds = max(1, args.baseline_iterations // chunk)
    ms_hb, ms_base = time_both(k_time, rounds, chunk, rule, net, ADAM)
    ms_disp = time_baseline_dispatched(k_time, args.dispatch_iterations, net) if args.dispatch_iterations > 0 else None

    print(f"\nMeta-training hbmeta: {args.iterations} meta-iterations, meta-batch {META_BATCH}, K={K_TRAIN}, "
          f"alpha={ALPHA}, Adam {META_LR}")
    t0 = time.perf_counter()
    # A fresh optimiser object, so the wall time includes compilation (--quick reuses the timed one's).
    optimizer = ADAM if args.quick else optax.adam(META_LR)
    res = hb.train_maml(net.init(k_init), hb.Sinusoid(), rule=rule, key=k_train, num_iterations=args.iterations,
                        optimizer=optimizer, meta_batch_size=META_BATCH,
                        chunk_size=min(args.chunk_size, args.iterations), progress=not args.no_progress)
    jax.block_until_ready(res.params)
    wall = time.perf_counter() - t0

    tasks = hb.Sinusoid(num_support=K_EVAL, num_query=args.query_points).sample(k_eval, args.eval_tasks)
    ev = hb.evaluate(res.params, tasks, rule=rule, num_steps=10)

    print("\nSpeed (ms per meta-iteration, steady state)")
    print(f"  hbmeta train_maml            {ms_hb:8.3f}")
    print(f"  baseline jit+vmap, scanned   {ms_base:8.3f}")
    if ms_disp is not None:
        print(f"  baseline jit, per-step call  {ms_disp:8.3f}")
    else:
        print("  baseline jit, per-step call   skipped")
    ratio = ms_hb / ms_base
    print(f"  ratio hbmeta / baseline      {ratio:8.3f}   (target <= 1.3: {'met' if ratio <= 1.3 else 'NOT met'})")
    print(f"\nWall time of the {args.iterations}-iteration hbmeta run: {wall:.1f} s "
          f"({1e3 * wall / args.iterations:.3f} ms per iteration incl. compilation)"
          + (f"   (target < 90 s: {'met' if wall < 90 else 'NOT met'})" if args.iterations == 70_000 else ""))
    tail = min(1000, args.iterations)
    print(f"Final meta-loss (mean of the last {tail} iterations): {float(np.mean(res.losses[-tail:])):.4f}")
    print(f"\n{K_EVAL}-shot MSE on {args.eval_tasks} new tasks ({args.query_points} query points each), mean ± 95% CI")
    print("  steps   hbmeta            paper")
    for s in (1, 5, 10):
        m, c = ev.at(s)
        print(f"  {s:5d}   {m:.3f} ± {c:.3f}     {PAPER[s]:.2f}")
    m0, c0 = ev.at(0)
    print(f"  (0 steps: {m0:.3f} ± {c0:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
