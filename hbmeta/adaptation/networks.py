"""A small functional MLP: ``(init, apply)`` over a params pytree.

hbmeta's engine takes any pure ``apply(params, x)`` and any params pytree;
this module ships a multilayer perceptron for convenience. Params are a list
of ``{"w": (n_in, n_out), "b": (n_out,)}`` dicts, one per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from hbmeta.base.validate import check_positive

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
    "elu": jax.nn.elu,
}
INITIALISATIONS = ("he", "glorot", "lecun", "normal")


class Network(NamedTuple):
    """A functional network: ``init(key) -> params`` and ``apply(params, x) -> outputs``."""

    init: Callable
    apply: Callable


def mlp(sizes: Sequence[int], *, activation="relu", init="he", init_scale: float = 1.0) -> Network:
    """A multilayer perceptron ``sizes[0] → … → sizes[-1]`` with a linear output.

    Args:
        sizes: layer widths including input and output, e.g. ``(1, 40, 40, 1)``.
        activation: a name in ``relu, tanh, gelu, silu, sigmoid, elu`` or a callable.
        init: weight initialisation, ``he`` (N(0, 2/n_in)), ``glorot``
            (N(0, 2/(n_in+n_out))), ``lecun`` (N(0, 1/n_in)) or ``normal`` (N(0, 1));
            biases start at zero.
        init_scale: a factor on the initial weights' standard deviation.

    ``apply(params, x)`` maps ``(..., sizes[0])`` to ``(..., sizes[-1])``.

    Example:
        >>> import jax
        >>> net = mlp((1, 40, 40, 1))
        >>> params = net.init(jax.random.key(0))
        >>> net.apply(params, jax.numpy.zeros((5, 1))).shape
        (5, 1)
    """
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or any(s <= 0 for s in sizes):
        raise ValueError(f"sizes={sizes}; expected at least two positive layer widths")
    if callable(activation):
        act = activation
    elif activation in ACTIVATIONS:
        act = ACTIVATIONS[activation]
    else:
        raise ValueError(f"activation={activation!r}; expected one of {sorted(ACTIVATIONS)} or a callable")
    if init not in INITIALISATIONS:
        raise ValueError(f"init={init!r}; expected one of {list(INITIALISATIONS)}")
    check_positive("init_scale", init_scale)

    def init_fn(key):
        params = []
        for n_in, n_out, k in zip(sizes[:-1], sizes[1:], jax.random.split(key, len(sizes) - 1)):
            std = {
                "he": (2.0 / n_in) ** 0.5,
                "glorot": (2.0 / (n_in + n_out)) ** 0.5,
                "lecun": (1.0 / n_in) ** 0.5,
                "normal": 1.0,
            }[init] * init_scale
            params.append({"w": std * jax.random.normal(k, (n_in, n_out)), "b": jnp.zeros((n_out,))})
        return params

    def apply(params, x):
        h = x
        for layer in params[:-1]:
            h = act(h @ layer["w"] + layer["b"])
        return h @ params[-1]["w"] + params[-1]["b"]

    # Compiled as one function: eager initialisation would compile every random draw separately.
    return Network(jax.jit(init_fn), apply)


def linear() -> Network:
    """The linear model ``f_θ(x) = xᵀθ`` with params ``{"w": (d,)}``-shaped weights.

    ``init`` is not meaningful for this model; use ``{"w": jnp.zeros(d)}``.
    ``apply(params, x)`` maps ``(..., d)`` to ``(..., 1)``.
    """

    def init_fn(key, dim: int = 1):
        return {"w": jnp.zeros((dim,))}

    def apply(params, x):
        return (x @ params["w"])[..., None]

    return Network(init_fn, apply)
