"""The predictive CDF of a Gaussian mixture at given values: the probability integral transform (PIT).

With draws s = 1..S of a predictive N(μˢ, σˢ²) per point, the predictive is the
mixture (1/S) Σ_s N(μˢ, σˢ²) and its CDF at y is

    F(y) = (1/S) Σ_s Φ((y − μˢ)/σˢ).

Calibration curves, coverage and the mixture's quantiles all use this one
function.

Example:
    >>> import jax.numpy as jnp
    >>> float(pit(jnp.zeros((2, 1)), jnp.ones((2, 1)), jnp.zeros(1))[0])
    0.5
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.stats import norm


def pit(mu, sd, y):
    """``F(y) = mean over axis 0 of Φ((y − μ)/σ)``: ``mu`` and ``sd`` have the draws first and broadcast with ``y``."""
    return jnp.mean(norm.cdf((y - mu) / sd), axis=0)
