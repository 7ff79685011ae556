"""The ambiguity benchmark's building blocks: which tasks are ambiguous, and line-or-sine classification."""

import importlib.util
import math
import os

import numpy as np

import hbmeta as hb

_SPEC = importlib.util.spec_from_file_location(
    "ambiguity", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "ambiguity.py"))
ambiguity = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(ambiguity)


def test_classify_lines_and_sines_on_a_grid():
    x = np.linspace(-5, 5, 200)
    rng = np.random.default_rng(0)
    lines = rng.uniform(-3, 3, (20, 1)) * x + rng.uniform(-3, 3, (20, 1))
    sines = rng.uniform(0.1, 5, (20, 1)) * np.sin(x - rng.uniform(0, math.pi, (20, 1)))
    kinds, r2 = ambiguity.classify(np.stack([lines, sines]), x, with_r2=True)
    assert kinds.shape == (2, 20) and np.all(kinds[0] == 1) and np.all(kinds[1] == 0)
    np.testing.assert_allclose(r2, 1.0, atol=1e-9)
    # a noisy line is still a line, with R² below 1
    kind, r2 = ambiguity.classify(lines[:1] + 0.5 * np.sin(3 * x), x, with_r2=True)
    assert kind[0] == 1 and 0.5 < r2[0] < 1


def test_ambiguous_means_both_families_fit_within_their_priors():
    fam = hb.SinusoidAndLine(num_support=2)
    x = np.array([-1.0, 2.0])
    sine = 2.0 * np.sin(x - 1.0)  # A = 2, φ = 1: a line through these points has slope 0.96, intercept 0.64
    assert ambiguity.ambiguous(x, sine, fam)
    steep = np.array([-10.0, 10.0])  # the line's slope 20/3 is outside U[-3, 3]
    assert not ambiguity.ambiguous(x, steep, fam)
    # 2 sin(x − 4): the line through its points (slope −1.25, intercept 0.67) is in the prior, but the
    # only sine through them has phase 4 ∉ [0, π]
    assert not ambiguity.ambiguous(x, 2.0 * np.sin(x - 4.0), fam)
    assert ambiguity.ambiguous(x, 2.0 * np.sin(x - 3.0), fam)
