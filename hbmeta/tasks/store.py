"""A task set stored on disk as memory-mapped ``.npy`` files, read a few tasks at a time.

``save_task_store(directory, parts)`` writes ``T`` tasks (a :class:`~hbmeta.TaskBatch`, or an iterable of
them, e.g. a generator over a data set larger than memory) as one ``.npy`` file per field plus
``store.json``; ``open_task_store(directory)`` checks the files and returns a :class:`StoredTasks`. Its
``take(index)`` reads only the rows at ``index`` from the memory-mapped files (a host callback inside
compiled code), so an SVI step with ``subsample_size=B`` or a MAML meta-batch reads ``B`` tasks whatever
``T`` is: neither the time per step nor the memory grow with ``T`` (apart from the pages the operating
system caches), and the tasks are never all on the device.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from hbmeta.base.files import BadFileError
from hbmeta.tasks.batch import TaskBatch
from hbmeta.tasks.generated import GeneratedTasks, distinct_indices

FIELDS = ("x_support", "y_support", "x_query", "y_query", "support_mask", "query_mask")
_MARKER = "store.json"
_OPEN: dict = {}  # (path, size, mtime) -> the open memory map, one per process


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class StoredTasks:
    """``num_tasks`` tasks in memory-mapped ``.npy`` files; open with :func:`open_task_store`.

    - ``take(index)``: the tasks at an integer ``index`` array ``(B,)``, read now (works under ``jit``,
      ``vmap`` and inside NumPyro models: a ``jax.pure_callback`` that reads the rows from disk).
    - ``sample(key, n)``: ``n`` distinct tasks chosen at random (what :func:`~hbmeta.train_maml` calls).
    - ``materialise()``: all ``T`` tasks as one :class:`~hbmeta.TaskBatch` (for small ``T``).

    :func:`~hbmeta.run_svi` takes it with ``subsample_size`` and :func:`~hbmeta.train_maml` as it takes
    a family, like :class:`~hbmeta.GeneratedTasks`. A pytree without arrays (its fields are static).

    Example:
        >>> import jax, os, tempfile
        >>> import hbmeta as hb
        >>> d = os.path.join(tempfile.mkdtemp(), "store")
        >>> tasks = hb.Sinusoid(num_support=5).sample(jax.random.key(0), 100)
        >>> store = hb.save_task_store(d, [tasks.take(slice(0, 60)), tasks.take(slice(60, 100))])
        >>> store.num_tasks, store.take(jax.numpy.array([3, 99])).x_support.shape
        (100, (2, 5, 1))
        >>> bool((store.take(jax.numpy.array([70])).y_query == tasks.y_query[70:71]).all())
        True
    """

    directory: str = field(metadata={"static": True})
    num_tasks: int = field(metadata={"static": True})
    layout: tuple = field(metadata={"static": True})  # ((name, per-task shape, dtype name), ...)

    def take(self, index) -> TaskBatch:
        """The tasks at ``index`` (an integer array, shape ``(B,)``), read from the files now."""
        index = jnp.asarray(index)
        if index.ndim != 1 or not jnp.issubdtype(index.dtype, jnp.integer):
            raise ValueError(f"index has shape {index.shape} and dtype {index.dtype}; expected a 1-d integer array")
        if not isinstance(index, jax.core.Tracer):
            bad = np.asarray(index)
            bad = bad[(bad < 0) | (bad >= self.num_tasks)]
            if bad.size:
                raise ValueError(f"index holds {int(bad[0])}; expected task numbers in [0, {self.num_tasks})")
        names = tuple(name for name, _, _ in self.layout)
        shapes = tuple(jax.ShapeDtypeStruct((index.shape[0], *shape), jax.dtypes.canonicalize_dtype(np.dtype(dt)))
                       for _, shape, dt in self.layout)
        read = partial(_read_rows, self.directory, names, tuple(s.dtype for s in shapes))
        arrays = dict(zip(names, jax.pure_callback(read, shapes, index, vmap_method="sequential")))
        return TaskBatch(*(arrays.get(name) for name in FIELDS))

    def sample(self, key, num_tasks: int, **_) -> TaskBatch:
        """``num_tasks`` distinct tasks of the store, chosen at random (``jit``-able, ``num_tasks`` static)."""
        if num_tasks > self.num_tasks:
            raise ValueError(f"num_tasks={num_tasks}; expected at most the {self.num_tasks} tasks in the store")
        return self.take(distinct_indices(key, self.num_tasks, num_tasks))

    def materialise(self) -> TaskBatch:
        """All ``T`` tasks as one :class:`~hbmeta.TaskBatch` (memory in proportion to ``T``)."""
        arrays = {name: jnp.asarray(np.asarray(_memmap(self.directory, name))) for name, _, _ in self.layout}
        return TaskBatch(*(arrays.get(name) for name in FIELDS))

    @property
    def regression(self) -> bool:
        return np.dtype(dict((n, d) for n, _, d in self.layout)["y_query"]).kind == "f"


# The task sets whose tasks exist only when a step takes them (run_svi with subsample_size, train_maml).
LAZY_TASKS = (GeneratedTasks, StoredTasks)


def _memmap(directory: str, name: str):
    path = os.path.join(directory, f"{name}.npy")
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    mm = _OPEN.get(key)
    if mm is None:
        if len(_OPEN) >= 64:
            _OPEN.clear()
        mm = _OPEN[key] = np.load(path, mmap_mode="r")
    return mm


def _read_rows(directory, names, dtypes, index):
    idx = np.asarray(index)
    return tuple(np.asarray(_memmap(directory, name)[idx], dtype=dt) for name, dt in zip(names, dtypes))


def save_task_store(directory, parts) -> StoredTasks:
    """Write tasks to ``directory`` as a store of memory-mapped ``.npy`` files; returns it opened.

    Args:
        directory: a new (or empty) directory. The store is written beside it under a temporary name and
            renamed into place when complete, so a store is whole or absent.
        parts: a :class:`~hbmeta.TaskBatch`, or an iterable of them (written one after another, so the
            tasks need never all be in memory). Every part has the same per-task shapes, dtypes and masks.

    Raises:
        ValueError: naming the part and field whose shape, dtype or masks differ from the first part's,
            or the directory when it is not empty.
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
        raise ValueError(f"directory {directory} exists and is not empty; expected a new or empty directory")
    if isinstance(parts, TaskBatch):
        parts = [parts]
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-store-")
    try:
        layout, counts, raw = None, 0, {}
        for n, part in enumerate(parts):
            if not isinstance(part, TaskBatch):
                raise ValueError(f"part {n} is a {type(part).__name__}; expected a hbmeta.TaskBatch")
            arrays = {name: np.asarray(getattr(part, name)) for name in FIELDS if getattr(part, name) is not None}
            here = tuple((name, tuple(a.shape[1:]), a.dtype.name) for name, a in arrays.items())
            if layout is None:
                layout = here
                raw = {name: open(os.path.join(tmp, f"{name}.raw"), "wb") for name in arrays}
            elif here != layout:
                raise ValueError(f"part {n} has fields {here}; expected those of part 0: {layout}")
            for name, a in arrays.items():
                raw[name].write(np.ascontiguousarray(a).tobytes())
            counts += int(part.num_tasks)
        if layout is None:
            raise ValueError("parts is empty; expected one or more hbmeta.TaskBatch")
        for name, shape, dtype in layout:
            raw[name].close()
            _raw_to_npy(os.path.join(tmp, f"{name}.raw"), os.path.join(tmp, f"{name}.npy"), (counts, *shape), dtype)
        with open(os.path.join(tmp, _MARKER), "w", encoding="utf-8") as fh:
            json.dump({"hbmeta_task_store": 1, "num_tasks": counts,
                       "fields": [[n, list(s), d] for n, s, d in layout]}, fh)
        if os.path.isdir(directory):
            os.rmdir(directory)  # empty (checked above)
        os.replace(tmp, directory)
    finally:
        for fh in raw.values():
            fh.close()
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return open_task_store(directory)


def _raw_to_npy(raw_path, npy_path, shape, dtype):
    """A ``.npy`` file of ``shape`` whose data are the bytes of ``raw_path`` (copied in 16 MB pieces)."""
    with open(npy_path, "wb") as out, open(raw_path, "rb") as src:
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                   "fortran_order": False, "shape": tuple(shape)})
        shutil.copyfileobj(src, out, 16 * 2**20)
    os.remove(raw_path)


def open_task_store(directory) -> StoredTasks:
    """Open a store written by :func:`save_task_store`, after checking every file against ``store.json``.

    Raises:
        hbmeta.BadFileError: (a ``ValueError``) one line naming the file and what is wrong: a missing or
            damaged ``store.json`` or ``.npy`` file, or one whose shape or dtype differs from the record.
    """
    directory = os.path.abspath(os.fspath(directory))
    marker = os.path.join(directory, _MARKER)
    if not os.path.isfile(marker):
        raise BadFileError(marker, "not found; expected a task store written by hbmeta.save_task_store")
    try:
        with open(marker, encoding="utf-8") as fh:
            info = json.load(fh)
        num_tasks = int(info["num_tasks"])
        layout = tuple((str(n), tuple(int(k) for k in s), np.dtype(d).name) for n, s, d in info["fields"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadFileError(marker, f"is not a task store record ({type(e).__name__}: {e}); expected the "
                                   "store.json that hbmeta.save_task_store writes") from None
    names = [n for n, _, _ in layout]
    if not {"x_support", "y_support", "x_query", "y_query"} <= set(names) or not set(names) <= set(FIELDS):
        raise BadFileError(marker, f"lists fields {names}; expected x_support, y_support, x_query, y_query "
                                   "and optionally the two masks")
    for name, shape, dtype in layout:
        path = os.path.join(directory, f"{name}.npy")
        try:
            mm = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise BadFileError(path, f"is not a readable .npy file: truncated, damaged or missing ({e})") from None
        if mm.shape != (num_tasks, *shape) or mm.dtype.name != dtype:
            raise BadFileError(path, f"holds {mm.dtype.name} of shape {mm.shape}; expected {dtype} of shape "
                                     f"{(num_tasks, *shape)} (store.json)")
    return StoredTasks(directory=directory, num_tasks=num_tasks, layout=layout)
