"""Checkpoints of long compiled loops: the carried state as a plain ``.npz``, written atomically.

A checkpoint holds the leaves of the loop's carry (a pytree: parameters,
optimiser state, PRNG key, counters), the number of steps done and the
per-step values so far. The tree's structure is not stored: it is the
structure of the state the loop starts from, which a resumed run rebuilds
from the same configuration, so any pytree (optax states, NamedTuples) is
saved without pickle. PRNG keys are stored as their raw key data. The file is
replaced atomically (:func:`~hbmeta.base.files.atomic_write`), so a kill
while saving leaves the previous checkpoint intact. Plain ``.npz`` rather
than a checkpointing library: the state is a few arrays on one host, and the
format is then the one every other hbmeta file uses.

Example:
    >>> import jax, jax.numpy as jnp, numpy as np, tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "ck.npz")
    >>> carry = {"w": jnp.arange(3.0), "key": jax.random.key(0)}
    >>> save_checkpoint(f, carry, 5, np.ones(5))
    >>> back, done, values = load_checkpoint(f, like=carry)
    >>> done, values.shape, bool(jnp.all(back["w"] == carry["w"]))
    (5, (5,), True)
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from hbmeta.base.files import BadFileError, atomic_write, read_npz


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def save_checkpoint(path, carry, done: int, values) -> None:
    """Write ``carry``'s leaves, ``done`` and the per-step ``values`` so far to ``path``, atomically."""
    leaves = jax.tree.leaves(carry)
    arrays = {f"leaf_{i}": np.asarray(jax.random.key_data(x) if _is_key(x) else x) for i, x in enumerate(leaves)}

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, __done__=np.asarray(int(done)), __values__=np.asarray(values), **arrays)

    atomic_write(path, write)


def load_checkpoint(path, *, like):
    """``(carry, done, values)`` from a checkpoint, the carry shaped like ``like``; ``BadFileError`` if it is not."""
    data = read_npz(path, what="checkpoint", names=("__done__", "__values__"))
    leaves, treedef = jax.tree.flatten(like)
    if len(data) - 2 != len(leaves):
        raise BadFileError(path, f"holds {len(data) - 2} state arrays; expected {len(leaves)} "
                                 "(a checkpoint of another configuration)")
    restored = []
    for i, ref in enumerate(leaves):
        a = data[f"leaf_{i}"]
        want = jax.random.key_data(ref) if _is_key(ref) else jnp.asarray(ref)
        if a.shape != want.shape or a.dtype != want.dtype:
            raise BadFileError(path, f"state array {i} is {a.dtype}{list(a.shape)}; expected "
                                     f"{want.dtype}{list(want.shape)} (a checkpoint of another configuration)")
        restored.append(jax.random.wrap_key_data(a, impl=jax.random.key_impl(ref)) if _is_key(ref) else jnp.asarray(a))
    return jax.tree.unflatten(treedef, restored), int(data["__done__"]), data["__values__"]


class Checkpointer:
    """Where and how often a loop saves its state.

    ``path``: the checkpoint file. A save happens after a chunk once ``every_steps`` steps (0: any)
    and ``every_seconds`` seconds (0: any) have passed since the last one, and always after the
    last chunk. :func:`~hbmeta.base.progress.run_in_chunks` calls :meth:`restore` before its first
    chunk and :meth:`maybe_save` after each one.
    """

    def __init__(self, path, *, every_steps: int = 0, every_seconds: float = 0.0):
        self.path, self.every_steps, self.every_seconds = os.fspath(path), int(every_steps), float(every_seconds)
        self._last_time, self._last_done = time.monotonic(), 0
        self.saves = 0

    def restore(self, like):
        """``(carry, done, values)`` of an existing checkpoint, or None if there is none yet."""
        if not os.path.exists(self.path):
            return None
        carry, done, values = load_checkpoint(self.path, like=like)
        self._last_done = done
        return carry, done, values

    def maybe_save(self, carry, done, values, *, final: bool = False) -> None:
        due = (done - self._last_done >= self.every_steps
               and time.monotonic() - self._last_time >= self.every_seconds)
        if final or due:
            save_checkpoint(self.path, carry, done, values)
            self._last_time, self._last_done = time.monotonic(), done
            self.saves += 1
