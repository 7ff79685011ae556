#!/usr/bin/env bash
# The GPU path, as one short script for a machine with an accelerator:
# device and versions, the MAML sinusoid benchmark (hbmeta vs hand-written
# baseline, same process), and MAML + NUTS on |T| = 100 sinusoid tasks.
# Run from the repository root: bash bench/gpu_check.sh [OUTDIR]
set -u
out=${1:-${OUT:-/tmp/hbmeta-gpu}}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi -L 2>&1 | tee "$out/device.txt"
python3 -c "import jax, numpyro, optax; print('jax', jax.__version__, 'numpyro', numpyro.__version__, 'optax', optax.__version__); print(jax.devices())" 2>&1 | tee -a "$out/device.txt"
timeout 240 python3 bench/maml_sinusoid.py --no-progress 2>&1 | tee "$out/maml_sinusoid.txt"
timeout 240 python3 bench/posterior_sinusoid.py --tasks 100 --methods maml nuts --no-progress 2>&1 | tee "$out/posterior_sinusoid.txt"
