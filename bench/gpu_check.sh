#!/usr/bin/env bash
# The GPU path as one short script for a machine with an accelerator: device and
# versions, the MAML sinusoid benchmark (hbmeta vs its hand-written baseline in the
# same process, 20,000 iterations) and a short NUTS run (4 vectorised chains) on
# |T| = 100 sinusoid tasks. Run from the repository root: bash bench/gpu_check.sh
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import jax, numpyro, optax; print('jax', jax.__version__, 'numpyro', numpyro.__version__, jax.devices())"
timeout 70 python3 bench/maml_sinusoid.py --no-progress --iterations 20000 --baseline-iterations 2000 --dispatch-iterations 200
timeout 60 python3 - <<'PY'
import time, jax, hbmeta as hb
net = hb.mlp((1, 40, 40, 1)); rule = hb.GradientSteps(net.apply, step_size=0.01)
train = hb.Sinusoid(num_support=5, num_query=5).fixed(jax.random.key(0), 100).tasks
maml = hb.train_maml(net.init(jax.random.key(1)), train, rule=rule, key=jax.random.key(2), num_iterations=2000, progress=False)
spec = hb.ModelSpec(rule, maml.params)
t = time.perf_counter()
post = hb.run_nuts(spec, train, key=jax.random.key(3), init=hb.maml_posterior(spec, maml.params, train),
                   num_chains=4, num_warmup=100, num_samples=100, max_tree_depth=5, progress=False)
print(f"NUTS 4 chains x (100 + 100) on {jax.devices()[0].platform}: {time.perf_counter() - t:.1f} s,",
      "divergences", int(post.sample_stats["diverging"].sum()))
PY
