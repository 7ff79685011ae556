"""The one result type of every inference method: draws with leading (chain, draw) axes."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hbmeta.model.spec import ModelSpec, NormalLikelihood


class Posterior(NamedTuple):
    """Draws of θ and the other latent sites, whatever the method.

    - ``samples``: dict site name → array ``(chain, draw, ...)``. ``"theta"``
      is ``(chain, draw, P)``, the flat parameter vector; ``"noise"`` (σ) and
      ``"step_size"`` (α, with ``"log_step_size"``) are ``(chain, draw)`` when
      inferred; ``"phi"`` is ``(chain, draw, T, P)`` in the explicit variant.
      Arrays are numpy, on the host.
    - ``spec``: the :class:`~hbmeta.ModelSpec` (network, rule, prior,
      likelihood): what is needed to predict.
    - ``method``: ``"nuts"``, ``"hmc"``, ``"svi"``, ``"laplace"``, ``"svgd"``, ``"ensemble"``, ``"mclmc"`` or ``"maml"``.
    - ``settings``: the method's settings as a dict (JSON-able values).
    - ``sample_stats``: dict of ``(chain, draw)`` sampler statistics
      (``diverging``, ``accept_prob``, ``step_size``, ``num_steps``,
      ``potential_energy``), empty for methods without them.
    - ``info``: anything else the method returns (e.g. ``"losses"``, the ELBO
      loss history of SVI, or ``"map"``, the MAP θ of Laplace).

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> from hbmeta import GradientSteps, ModelSpec, Posterior, linear
        >>> spec = ModelSpec(GradientSteps(linear().apply), {"w": jnp.zeros(3)})
        >>> post = Posterior({"theta": np.zeros((2, 5, 3)), "noise": np.ones((2, 5))}, spec, "custom", {})
        >>> post.num_chains, post.num_draws, post.theta()["w"].shape, post.flat("noise").shape
        (2, 5, (2, 5, 3), (10,))
    """

    samples: dict
    spec: ModelSpec
    method: str
    settings: dict
    sample_stats: dict = {}
    info: dict = {}

    @property
    def num_chains(self) -> int:
        return int(self.samples["theta"].shape[0])

    @property
    def num_draws(self) -> int:
        return int(self.samples["theta"].shape[1])

    def theta(self):
        """θ draws as a params pytree with leading ``(chain, draw)`` axes."""
        flat = jnp.asarray(self.samples["theta"])
        return jax.vmap(jax.vmap(self.spec.unravel))(flat)

    def flat(self, name: str) -> np.ndarray:
        """Draws of one site with chain and draw merged: ``(chain·draw, ...)``."""
        a = np.asarray(self.samples[name])
        return a.reshape((-1,) + a.shape[2:])

    def noise(self) -> jax.Array:
        """σ per draw, ``(chain, draw)``: inferred draws or the fixed value."""
        if "noise" in self.samples:
            return jnp.asarray(self.samples["noise"])
        lik = self.spec.likelihood
        if isinstance(lik, NormalLikelihood) and lik.noise is not None:
            return jnp.full((self.num_chains, self.num_draws), lik.noise)
        raise ValueError("this posterior has no noise scale (classification likelihood?)")

    def step_size(self) -> Any:
        """α per draw, ``(chain, draw)``, when inferred; else the rule's fixed α."""
        if "step_size" in self.samples:
            return jnp.asarray(self.samples["step_size"])
        return self.spec.rule.step_size
