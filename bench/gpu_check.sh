#!/usr/bin/env bash
# The GPU path as one short script for a machine with an accelerator (under 5 minutes on one H200):
# 1. device and versions; 2. the MAML sinusoid benchmark (hbmeta against its hand-written baseline in the
# same process, 20,000 iterations); 3. a short NUTS run (4 vectorised chains) on |T| = 100 sinusoid
# tasks; 4. SVI with task subsampling at T = 10^3 and 10^5 (bench/scale_tasks.py, one round);
# 5. sharded against unsharded on the real devices (tests/_scale_checks.py, when there are 2 or more);
# 6. the test suite's ArviZ and NetCDF tests, which exercise ArviZ 1.x where that machine has it (this
# project's CPU machines have Python 3.11 and ArviZ 0.23). Each step has its own time limit, and one
# that fails does not stop the others. Run from the repository root: bash bench/gpu_check.sh
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi -L || echo "no nvidia-smi: running on what JAX finds"
python3 -c "import sys, jax, numpyro, optax, arviz; print('python', sys.version.split()[0], 'jax', jax.__version__, 'numpyro', numpyro.__version__, 'arviz', arviz.__version__, jax.devices())"
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
echo "== SVI with task subsampling, T = 10^3 and 10^5 (generated tasks, one round)"
timeout 90 python3 bench/scale_tasks.py --tasks 1000 100000 --stores generated --rounds 1 --repeats 3
n=$(python3 -c "import jax; print(jax.device_count())")
if [ "$n" -ge 2 ]; then
  echo "== sharded against unsharded on $n devices (relative differences; the naive shard_map must be large)"
  timeout 120 python3 tests/_scale_checks.py "$n" --no-samplers --real-devices | grep '^RESULT'
else
  echo "== sharded against unsharded: one device only, nothing to split (tests/_scale_checks.py needs 2 or more)"
fi
echo "== the ArviZ and NetCDF tests"
timeout 120 python3 -m pytest -q -n 0 -p no:cacheprovider tests/test_arviz.py tests/test_netcdf_stream.py 2>&1 | tail -5
