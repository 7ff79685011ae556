"""The inference methods by name: the function that runs each, its settings' defaults and its kind of draws.

This table is the one source of truth for method names and defaults. The
library functions' keyword defaults equal :attr:`Method.defaults` (a test
checks every one), the configuration's ``[inference.<method>]`` sections
take their defaults from here, and the dispatcher :func:`~hbmeta.infer`, the
command line and the diagnosis all read the same names. The module imports
nothing heavy: a method's function is imported when it is first asked for.

``kind`` says what the draws are, which decides the diagnostics that apply:

- ``"mcmc"``: dependent draws of Markov chains (R-hat and ESS apply);
- ``"iid"``: independent draws from a fitted distribution (SVI, Laplace):
  R-hat and ESS say nothing about the approximation's quality;
- ``"particles"``: a fixed set of interacting particles (SVGD) or
  independently trained members (an ensemble): one draw per particle;
- ``"point"``: one point estimate (MAML).

Example:
    >>> from hbmeta.inference.registry import METHODS, get
    >>> get("nuts").defaults["num_chains"], get("nuts").kind
    (4, 'mcmc')
    >>> sorted(METHODS)[:3]
    ['ensemble', 'hmc', 'laplace']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from hbmeta.base.validate import check_choice


class Method(NamedTuple):
    """One inference method.

    - ``name``: what :func:`~hbmeta.infer` and the configuration call it.
    - ``module``, ``function``: where the function that runs it lives.
    - ``kind``: ``"mcmc"``, ``"iid"``, ``"particles"`` or ``"point"`` (see the module docstring).
    - ``defaults``: the settings the configuration exposes, with the library's defaults.
    - ``fixed``: settings always passed (``hmc`` is ``run_nuts`` with ``kernel="hmc"``).
    - ``optimizer``: ``(name, learning_rate)`` of the default optax optimiser, or None.
    - ``summary``: one line for help texts.
    """

    name: str
    module: str
    function: str
    kind: str
    defaults: Mapping[str, Any]
    fixed: Mapping[str, Any]
    optimizer: tuple | None
    summary: str

    def load(self) -> Callable:
        """The function that runs the method (imported now)."""
        return getattr(importlib.import_module(self.module), self.function)


def _method(name, module, function, kind, summary, *, defaults=None, fixed=None, optimizer=None) -> Method:
    return Method(name, module, function, kind, MappingProxyType(dict(defaults or {})),
                  MappingProxyType(dict(fixed or {})), optimizer, summary)


_NUTS = {"num_chains": 4, "num_warmup": 500, "num_samples": 500, "max_tree_depth": 8,
         "target_accept_prob": 0.8, "dense_mass": False, "subspace": "all"}

METHODS: Mapping[str, Method] = MappingProxyType({m.name: m for m in (
    _method("nuts", "hbmeta.inference.nuts", "run_nuts", "mcmc", "No-U-Turn sampler (NumPyro)", defaults=_NUTS),
    _method("hmc", "hbmeta.inference.nuts", "run_nuts", "mcmc", "Hamiltonian Monte Carlo, fixed trajectory length",
            defaults={k: v for k, v in _NUTS.items() if k != "max_tree_depth"}, fixed={"kernel": "hmc"}),
    _method("svi", "hbmeta.inference.svi", "run_svi", "iid", "stochastic variational inference (NumPyro guides)",
            defaults={"guide": "mean_field", "rank": None, "num_steps": 2000, "num_draws": 1000},
            optimizer=("adam", 1e-2)),
    _method("laplace", "hbmeta.inference.laplace", "run_laplace", "iid",
            "Gaussian at the MAP with the inverse Hessian as covariance",
            defaults={"num_steps": 2000, "num_draws": 1000}, optimizer=("lbfgs", None)),
    _method("svgd", "hbmeta.inference.svgd", "run_svgd", "particles", "Stein variational gradient descent",
            defaults={"num_particles": 10, "num_steps": 2000}, optimizer=("adagrad", 0.1)),
    _method("ensemble", "hbmeta.inference.ensemble", "run_ensemble", "particles",
            "independently meta-trained MAML solutions, one draw each",
            defaults={"num_members": 8, "num_iterations": 10000, "meta_batch_size": 25, "holdout": "folds",
                      "tails": True, "spread_scale": True, "class_scale": True,
                      "distance_scale": True}),
    _method("maml", "hbmeta.inference.dispatch", "maml_posterior", "point", "MAML's point estimate θ (one draw)"),
)})


def get(name: str) -> Method:
    """The :class:`Method` called ``name``, or ``ValueError`` listing the known names."""
    return METHODS[check_choice("method", name, tuple(METHODS))]
