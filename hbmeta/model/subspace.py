"""Sampling θ in a subspace: the entries that move, the rest held at an anchor (a mode of the posterior).

Full-batch HMC on every weight of a ReLU network does not mix in minutes: the
data pin a few hundred directions of θ down to a scale of 10⁻³ while the
prior leaves a thousand others at its own scale, and a trajectory that must
resolve the first cannot cross the second (on the default sinusoid model
NUTS hits its depth limit at step size 2·10⁻⁴, R-hat 3). Subspace inference
(Izmailov et al., UAI 2019) samples the posterior restricted to an affine
subspace through a mode instead,

    θ = θ̂ + E z,      p(z | data) ∝ p(θ̂ + E z) Π_j p(Q_j | φ̂_j(θ̂ + E z)),

where ``E`` selects the coordinates that move. With the last layer as the
subspace (the choice of Laplace Redux, Daxberger et al. 2021, and of
Kristiadi et al. 2020 for ReLU networks), ``z`` is the output layer's weights
and bias: the posterior over them given the hidden layers at the anchor
θ̂. Started from the members of an ensemble (one anchor each), the chains of
every member sample that member's conditional posterior, and the equal-weight
mixture over members is the multi-mode answer (Sommer et al. 2024; MILE 2025).

What this is not: the full posterior over θ. The hidden layers' uncertainty
is represented only by the spread between members; within a member they are
fixed. The prior θ ~ N(μ, diag(s²)) has independent coordinates, so the
prior of ``z`` given the fixed ones is simply N(μ_E, diag(s_E²)): the
restricted density is the exact conditional of the model, not a new model.

Example:
    >>> import jax, numpy as np
    >>> import hbmeta as hb
    >>> net = hb.mlp((1, 8, 1)); spec = hb.ModelSpec(hb.GradientSteps(net.apply), net.init(jax.random.key(0)))
    >>> idx = subspace_indices(spec, "last_layer")
    >>> len(idx), int(idx[0]), spec.num_params      # the output layer's 8 weights and 1 bias, last in ravel order
    (9, 16, 25)
    >>> theta = embed(np.zeros(25), idx, np.ones(9)); float(theta.sum())
    9.0
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

SUBSPACES = ("all", "last_layer")


def subspace_indices(spec, subspace) -> np.ndarray | None:
    """The flat indices of θ that move, sorted; None for ``"all"`` (every coordinate).

    ``subspace`` is ``"all"``, ``"last_layer"`` (the last entry of a params
    list or tuple, e.g. the output layer of :func:`~hbmeta.mlp` and of the
    conv net) or a pytree of booleans shaped like ``spec.params`` (True: the
    entry moves).
    """
    if isinstance(subspace, str):
        if subspace not in SUBSPACES:
            raise ValueError(f"subspace={subspace!r}; expected one of {list(SUBSPACES)} or a pytree of booleans "
                             "shaped like the network's params")
        if subspace == "all":
            return None
        params = spec.params
        if not isinstance(params, (list, tuple)) or len(params) < 2:
            raise ValueError(
                f"subspace='last_layer' with params of type {type(params).__name__}; expected a list of layers "
                "(hbmeta.mlp or the conv net); for other networks pass a pytree of booleans shaped like the params"
            )
        mask = [jax.tree.map(lambda a: np.zeros(np.shape(a), bool), layer) for layer in params[:-1]]
        mask.append(jax.tree.map(lambda a: np.ones(np.shape(a), bool), params[-1]))
        mask = type(params)(mask)
    else:
        mask = subspace
    try:
        flat = np.asarray(ravel_pytree(jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), mask))[0])
        shapes_ok = jax.tree.structure(mask) == jax.tree.structure(spec.params) and all(
            np.shape(m) == np.shape(p) for m, p in zip(jax.tree.leaves(mask), jax.tree.leaves(spec.params)))
    except (TypeError, ValueError):
        shapes_ok = False
    if not shapes_ok:
        raise ValueError(f"subspace is a {type(subspace).__name__} that is not shaped like the network's params; "
                         "expected 'all', 'last_layer' or a pytree of booleans with the params' structure and shapes")
    idx = np.flatnonzero(flat > 0.5)
    if idx.size == 0:
        raise ValueError("subspace selects no parameter; expected at least one True entry")
    return idx


def embed(anchor, idx, z):
    """θ = the anchor with the entries ``idx`` replaced by ``z`` (batched over leading axes of both)."""
    anchor, z = jnp.asarray(anchor), jnp.asarray(z)
    shape = jnp.broadcast_shapes(anchor.shape[:-1], z.shape[:-1]) + anchor.shape[-1:]
    return jnp.broadcast_to(anchor, shape).at[..., idx].set(z)


def describe(idx, num_params: int, subspace) -> str:
    """The subspace in words, e.g. ``"last_layer (41 of 1761 parameters)"``."""
    name = subspace if isinstance(subspace, str) else "mask"
    return f"{name} ({num_params if idx is None else len(idx)} of {num_params} parameters)"
