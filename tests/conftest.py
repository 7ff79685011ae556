"""Test set-up: two simulated CPU devices, seeded randomness, warnings as errors.

The device count must be set before JAX initialises its backend, so it is
done here, at collection, before any test module runs a computation.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax

jax.config.update("jax_num_cpu_devices", 2)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Run a test in float64 (the identities of docs/references.md hold to machine precision)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)
