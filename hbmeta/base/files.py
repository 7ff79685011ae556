"""Saving and loading parameter pytrees as plain ``.npz`` files.

The file holds one array per leaf (``leaf_0``, ``leaf_1``, …) and the tree's
structure as JSON (dicts, lists, tuples and None), so it loads without pickle.
Writes are atomic: a temporary file is renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile

import jax
import numpy as np


def _describe(node, leaves):
    if isinstance(node, dict):
        return {"dict": {str(k): _describe(v, leaves) for k, v in node.items()}}
    if isinstance(node, tuple) and not hasattr(node, "_fields"):
        return {"tuple": [_describe(v, leaves) for v in node]}
    if isinstance(node, list):
        return {"list": [_describe(v, leaves) for v in node]}
    if node is None:
        return {"none": None}
    if isinstance(node, (jax.Array, np.ndarray, float, int, np.generic)):
        leaves.append(np.asarray(node))
        return {"leaf": len(leaves) - 1}
    raise ValueError(
        f"params contain a {type(node).__name__}; save_params supports dicts, lists, tuples, None and arrays"
    )


def _build(desc, arrays):
    (kind, value), = desc.items()
    if kind == "dict":
        return {k: _build(v, arrays) for k, v in value.items()}
    if kind == "tuple":
        return tuple(_build(v, arrays) for v in value)
    if kind == "list":
        return [_build(v, arrays) for v in value]
    if kind == "none":
        return None
    return jax.numpy.asarray(arrays[f"leaf_{value}"])


def atomic_write(path, write):
    """Call ``write(tmp_path)`` then rename the temporary file to ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_params(path, params, **metadata) -> None:
    """Save a params pytree (and JSON-able ``metadata``) to ``path`` (``.npz``).

    Example:
        >>> import jax.numpy as jnp, tempfile, os
        >>> p = {"w": jnp.ones(3), "layers": [jnp.zeros(2)]}
        >>> f = os.path.join(tempfile.mkdtemp(), "theta.npz")
        >>> save_params(f, p); load_params(f)["w"].shape
        (3,)
    """
    leaves = []
    desc = _describe(params, leaves)
    header = json.dumps({"structure": desc, "metadata": metadata})

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, __structure__=np.array(header), **{f"leaf_{i}": a for i, a in enumerate(leaves)})

    atomic_write(path, write)


def load_params(path, *, with_metadata: bool = False):
    """Load a params pytree saved by :func:`save_params`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"path={path!r} does not exist; expected a .npz file written by save_params")
    with np.load(path, allow_pickle=False) as data:
        if "__structure__" not in data:
            raise ValueError(f"{path!r} has no __structure__ entry; expected a file written by save_params")
        header = json.loads(str(data["__structure__"]))
        params = _build(header["structure"], data)
    return (params, header["metadata"]) if with_metadata else params
