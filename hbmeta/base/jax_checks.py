"""Checks on JAX values shared by every stage: PRNG keys and pytree structures (``ValueError`` on bad input).

Example:
    >>> import jax
    >>> from hbmeta.base.jax_checks import as_key, check_tree
    >>> as_key(0).dtype == jax.random.key(0).dtype
    True
    >>> check_tree("params", {"w": 1.0}, {"b": 0.0})
    Traceback (most recent call last):
    ...
    ValueError: params has tree structure PyTreeDef({'w': *}); expected PyTreeDef({'b': *})
"""

from __future__ import annotations

import jax
import numpy as np


def check_tree(name: str, tree, template) -> None:
    """``ValueError`` unless ``tree`` has the pytree structure of ``template``."""
    seen, expected = jax.tree.structure(tree), jax.tree.structure(template)
    if seen != expected:
        raise ValueError(f"{name} has tree structure {seen}; expected {expected}")


def as_key(key):
    """A JAX PRNG key from a key or an int seed, else ``ValueError``."""
    if not isinstance(key, bool) and isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    if not isinstance(key, jax.Array):
        raise ValueError(f"key is a {type(key).__name__}; expected a JAX PRNG key (jax.random.key(0)) or an int")
    return key
