"""Test set-up (in each of pytest's two worker processes): two simulated CPU devices, quick-to-compile XLA code, seeded randomness, warnings as errors.

The device count must be set before JAX initialises its backend, so it is
done here, at collection, before any test module runs a computation.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
# pytest runs two worker processes (pyproject.toml): on a GPU, neither may take most of its memory up front
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# The tests compile far more than they compute: less optimised, quicker-to-compile XLA code (a third off the
# suite's time). Subprocesses started by the tests inherit it. The numbers compared are computed under it.
from hbmeta.base.xla import QUICK_COMPILE_FLAGS, with_quick_compile

os.environ["XLA_FLAGS"] = with_quick_compile(os.environ.get("XLA_FLAGS", ""))
FAST_XLA = " ".join(QUICK_COMPILE_FLAGS)  # for tests that set a process's XLA_FLAGS themselves

import jax  # noqa: E402 (after XLA_FLAGS: JAX reads them when it starts)

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
