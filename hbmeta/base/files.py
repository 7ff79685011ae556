"""Saving and loading parameter pytrees as plain ``.npz`` files.

The file holds one array per leaf (``leaf_0``, ``leaf_1``, …) and the tree's
structure as JSON (dicts, lists, tuples and None), so it loads without pickle.
Writes are atomic: a temporary file is renamed into place. Reads never trust
the file: :func:`read_npz` checks every array's declared shape and type
against the bytes really there before reading anything, so a truncated,
emptied or foreign file raises one :class:`BadFileError` naming the file and
what is wrong, and nothing is partly loaded.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
import zlib

import jax
import numpy as np

NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats: the arrays hbmeta reads


class BadFileError(ValueError):
    """A file hbmeta reads is missing, damaged or of the wrong kind.

    The message is one line, ``<path>: <problem>``; ``path`` and ``problem`` are kept as attributes.
    """

    def __init__(self, path, problem: str):
        self.path, self.problem = os.fspath(path), problem
        super().__init__(f"{self.path}: {problem}")


def check_readable(path, what: str = "file") -> str:
    """``path`` as a string, or :class:`BadFileError` if it does not exist, is a directory or is empty."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise BadFileError(path, f"{what} does not exist")
    if not os.path.isfile(path):
        raise BadFileError(path, f"{what} is a directory, not a file")
    if os.path.getsize(path) == 0:
        raise BadFileError(path, f"{what} is empty (0 bytes): emptied or cut off before anything was written")
    return path


def _header(fh):
    """``(shape, dtype)`` from an ``.npy`` member's header (versions 1.0 and 2.0, the ones NumPy writes)."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f"npy format version {version}")
    return shape, dtype


def read_npz(path, *, what: str = "file", names=(), max_bytes: int | None = None) -> dict:
    """Every array of an ``.npz`` file, checked before it is read; :class:`BadFileError` otherwise.

    Each member's header is read first: an object (pickled) array, a shape
    whose size exceeds the bytes stored (a truncated file, or a huge declared
    shape), or a total above ``max_bytes`` is refused before any allocation, so
    reading random bytes never hangs or exhausts memory. ``names`` are the
    arrays that must be there.

    Example:
        >>> import numpy as np, tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "a.npz"); np.savez(f, x=np.ones(2))
        >>> read_npz(f, names=("x",))["x"].shape
        (2,)
        >>> with open(f, "wb") as fh: _ = fh.write(b"not a zip")
        >>> read_npz(f)
        Traceback (most recent call last):
        ...
        hbmeta.base.files.BadFileError: ...a.npz: file is not an .npz (zip) archive: truncated, damaged or ...
    """
    path = check_readable(path, what)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise BadFileError(path, f"{what} is not an .npz (zip) archive: truncated, damaged or another kind "
                                 "of file") from None
    try:
        with archive:
            out = _read_members(archive, path, what, max_bytes)
    except BadFileError:
        raise
    # NotImplementedError: zipfile's answer to a member stored with a compression method it cannot read
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError, NotImplementedError) as e:
        raise BadFileError(path, f"{what} could not be read: {' '.join(str(e).split()) or type(e).__name__} "
                                 "(truncated or damaged)") from None
    missing = [n for n in names if n not in out]
    if missing:
        raise BadFileError(path, f"{what} has arrays {sorted(out)}; expected {', '.join(names)}")
    return out


def _read_members(archive, path, what, max_bytes) -> dict:
    members, declared = archive.infolist(), 0
    for info in members:
        name = info.filename[:-4]
        if not info.filename.endswith(".npy"):
            raise BadFileError(path, f"{what} holds {info.filename!r}, which is not a NumPy array; "
                                     "expected an .npz of arrays only")
        with archive.open(info) as fh:
            try:
                shape, dtype = _header(fh)
            except ValueError as e:
                raise BadFileError(path, f"array {name!r} has no valid NumPy header ({e})") from None
            start = fh.tell()
        if dtype.hasobject:
            raise BadFileError(path, f"array {name!r} holds Python objects ({dtype}); expected numeric arrays "
                                     "(hbmeta never unpickles)")
        size = math.prod(shape) * dtype.itemsize
        if size > info.file_size - start:
            raise BadFileError(path, f"array {name!r} declares shape {shape} of {dtype} ({size} bytes) but holds "
                                     f"only {max(info.file_size - start, 0)}: truncated or damaged")
        declared += size
    if max_bytes is not None and declared > max_bytes:
        raise BadFileError(path, f"{what} holds {declared} bytes of arrays; expected at most {max_bytes}")
    out = {}
    for info in members:
        with archive.open(info) as fh:
            out[info.filename[:-4]] = np.lib.format.read_array(fh, allow_pickle=False)
    return out


def check_numeric(path, name: str, array, *, kinds: str = NUMERIC_KINDS) -> np.ndarray:
    """``array`` unless its dtype is not numeric (then :class:`BadFileError` naming the file and array)."""
    if array.dtype.kind not in kinds:
        raise BadFileError(path, f"array {name!r} has dtype {array.dtype}; expected "
                                 + ("real numbers" if kinds == "f" else "numbers"))
    return array


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
    if kind != "leaf":
        raise ValueError(f"unknown node kind {kind!r}")
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


def load_params(path, *, with_metadata: bool = False, like=None):
    """Load a params pytree saved by :func:`save_params`.

    With ``like`` (a pytree of arrays or ``jax.ShapeDtypeStruct``, e.g. the
    network's initialisation), the file must hold the same tree of the same
    shapes: a file from another run (a different parameter count) is refused.

    Raises:
        BadFileError: (a ``ValueError``) naming the file and what is wrong: missing, empty,
            truncated, not written by save_params, non-numeric values, or not shaped like ``like``.
    """
    path = os.fspath(path)
    data = read_npz(path, what="parameter file")
    entry = data.get("__structure__")
    if entry is None:
        raise BadFileError(path, "has no __structure__ entry; expected a file written by save_params")
    if entry.dtype.kind != "U" or entry.ndim != 0:
        raise BadFileError(path, f"its __structure__ entry is {entry.dtype} of shape {entry.shape}; "
                                 "expected the JSON text save_params writes")
    for name, leaf in data.items():
        if name != "__structure__":
            check_numeric(path, name, leaf)
    try:
        header = json.loads(str(entry))
        params = _build(header["structure"], data)
        metadata = header["metadata"]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise BadFileError(path, "its __structure__ entry does not describe a parameter tree; "
                                 "expected a file written by save_params") from None
    if like is not None:
        _check_like(path, params, like)
    return (params, metadata) if with_metadata else params


def _check_like(path, params, like) -> None:
    got, want = jax.tree.structure(params), jax.tree.structure(like)
    shapes = [tuple(np.shape(a)) for a in jax.tree.leaves(params)]
    expected = [tuple(a.shape) for a in jax.tree.leaves(like)]
    if got != want or shapes != expected:
        n, m = sum(math.prod(s) for s in shapes), sum(math.prod(s) for s in expected)
        raise BadFileError(path, f"holds {n} parameters in shapes {shapes}; expected {m} in shapes {expected} "
                                 "(a file from another run or model)")
