"""Run directories: written under a temporary name, renamed when complete, and read back.

A run writes every file into ``<parent>/.<name>.partial-<pid>/`` (each file
itself written atomically with :func:`hbmeta.base.files.atomic_write`), writes the
marker ``run.json`` last, and only then renames the directory to its final
name. So an interrupted run never leaves a directory that looks complete:
either the final directory exists with its marker, or there is only a hidden
``.partial`` directory (removed on a Python exception, kept with its checkpoints
on Ctrl-C so that ``hbmeta run --resume`` continues it; left behind by a hard
kill, and never read by ``hbmeta predict`` or ``hbmeta diagnose``, which
require the marker).

Concurrent runs: a default name (``<model>-<time>``) is reserved by creating
the directory (an atomic ``mkdir``), so two runs started in the same second
get different directories; a run holds an exclusive lock on
``<parent>/.<name>.lock`` while it writes, so a second run pointed at the same
``--out`` fails at once with :class:`RunDirectoryBusy` (the lock dies with its
process, even after SIGKILL). The marker records each file's SHA-256, and
:func:`load_run` refuses a file changed since the run wrote it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import tomllib
from typing import Any, NamedTuple

import jax
import numpy as np

from hbmeta.base.files import BadFileError, atomic_write, check_numeric, check_readable, load_params, read_npz

try:
    import fcntl
except ImportError:  # not on Windows: runs there are not locked against a second writer
    fcntl = None
from hbmeta.model.posterior import Posterior
from hbmeta.run import build as _build
from hbmeta.run.config import load_config
from hbmeta.tasks.table import Standardization

MARKER = "run.json"
CHECKPOINTS = "checkpoints"
_RESERVED: set = set()  # directories new_run_path created in this process (removed again if the run fails)


class RunDirectoryExists(ValueError):
    """The run directory asked for already exists and is not empty (``path``: the directory)."""

    def __init__(self, path: str):
        super().__init__(f"out={path!r} already exists and is not an empty directory; expected a new directory")
        self.path = path


class RunDirectoryBusy(ValueError):
    """Another hbmeta process is writing the run directory ``path`` now."""

    def __init__(self, path: str):
        super().__init__(f"out={path!r} is being written by another hbmeta run now; expected a directory no other "
                         "run is using")
        self.path = path


def new_run_path(name: str, *, out=None, runs_dir="runs") -> str:
    """The final path of a new run: ``out``, or ``runs_dir/<name>-<YYYYmmdd-HHMMSS>``.

    Raises:
        ValueError: if ``out`` exists and is not an empty directory.
    """
    if out is not None:
        out = os.fspath(out)
        if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
            raise RunDirectoryExists(out)
        return out
    base = os.path.join(runs_dir, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(runs_dir, exist_ok=True)
    path, n = base, 1
    while True:  # mkdir is atomic: of two runs started in the same second, one gets base, the other base-2
        try:
            os.mkdir(path)
            _RESERVED.add(os.path.abspath(path))
            return path
        except FileExistsError:
            n += 1
            path = f"{base}-{n}"


class RunWriter:
    """Writes the files of one run into a temporary directory; :meth:`commit` publishes it."""

    def __init__(self, final_path: str, *, resume: str | None = None):
        self.final = os.path.abspath(final_path)
        parent, name = os.path.split(self.final)
        os.makedirs(parent, exist_ok=True)
        self._lock_path = os.path.join(parent, f".{name}.lock")
        self._lock = _lock(self._lock_path, self.final)
        if os.path.exists(self.final) and (not os.path.isdir(self.final) or os.listdir(self.final)):
            self._unlock()  # another run finished there while this one waited to start
            raise RunDirectoryExists(self.final)
        self.tmp = os.path.join(parent, f".{name}.partial-{os.getpid()}")
        if resume is not None and os.path.abspath(resume) != self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            os.rename(resume, self.tmp)  # the interrupted run's files and checkpoints, now this process's
        elif resume is None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            os.makedirs(self.tmp)
        self.files: list[str] = []

    def checkpoint_path(self, stage: str) -> str:
        """Where the checkpoint of ``stage`` goes: ``checkpoints/<stage>.npz`` in the partial directory."""
        return os.path.join(self.tmp, CHECKPOINTS, f"{stage}.npz")

    def path(self, name: str) -> str:
        """Where ``name`` goes (inside the temporary directory); records it as a run file."""
        if name not in self.files:
            self.files.append(name)
        return os.path.join(self.tmp, name)

    def write_text(self, name: str, text: str) -> str:
        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)

        path = self.path(name)
        atomic_write(path, write)
        return path

    def write_json(self, name: str, data) -> str:
        return self.write_text(name, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")

    def write_arrays(self, name: str, **arrays) -> str:
        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})

        path = self.path(name)
        atomic_write(path, write)
        return path

    def commit(self, info: dict) -> str:
        """Write the marker last, then rename the directory to its final name; returns the final path."""
        shutil.rmtree(os.path.join(self.tmp, CHECKPOINTS), ignore_errors=True)  # only for an unfinished run
        present = [f for f in self.files if os.path.exists(os.path.join(self.tmp, f))]
        digests = {f: _sha256(os.path.join(self.tmp, f)) for f in present}
        self.write_json(MARKER, {**info, "files": present + [MARKER], "sha256": digests, "complete": True})
        umask = os.umask(0)
        os.umask(umask)
        for name in present + [MARKER]:  # temporary files are created private (0600): give them the usual mode
            os.chmod(os.path.join(self.tmp, name), 0o666 & ~umask)
        os.chmod(self.tmp, 0o777 & ~umask)
        try:
            os.rename(self.tmp, self.final)  # POSIX: replaces the empty reserved (or given) directory
        except OSError:
            if not (os.path.isdir(self.final) and not os.listdir(self.final)):
                raise
            os.rmdir(self.final)  # where rename does not replace an empty directory
            os.rename(self.tmp, self.final)
        self._unlock()
        return self.final

    def discard(self, *, keep_checkpoints: bool = False) -> None:
        """Remove the partial directory (kept, to be resumed, when ``keep_checkpoints`` and it has checkpoints)."""
        if keep_checkpoints and os.path.isdir(os.path.join(self.tmp, CHECKPOINTS)):
            self._unlock()
            return
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.final in _RESERVED and os.path.isdir(self.final) and not os.listdir(self.final):
            os.rmdir(self.final)  # the reserved name of a run that did not finish
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            try:
                os.remove(self._lock_path)
            except FileNotFoundError:
                pass
            os.close(self._lock)
            self._lock = None


def find_partial(path) -> tuple[str, str]:
    """``(final_path, partial_dir)`` of an interrupted run, from either path (``hbmeta run --resume``).

    ``path`` is the run's final directory (absent, or the empty one reserved for it) or its hidden
    ``.<name>.partial-<pid>`` directory; of several partial directories, the most recent one with a
    ``config.toml`` is taken.

    Raises:
        ValueError: if the run is complete already, or there is nothing to resume.
    """
    path = os.path.abspath(os.fspath(path)).rstrip(os.sep)
    parent, name = os.path.split(path)
    if name.startswith(".") and ".partial-" in name:
        final = os.path.join(parent, name[1:name.rindex(".partial-")])
        candidates = [path]
    else:
        final = path
        candidates = sorted((os.path.join(parent, n) for n in (os.listdir(parent) if os.path.isdir(parent) else [])
                             if n.startswith(f".{name}.partial-")), key=os.path.getmtime, reverse=True)
    if os.path.isfile(os.path.join(final, MARKER)):
        raise ValueError(f"{final!r} is a complete run already (it has {MARKER}); expected an interrupted run")
    for c in candidates:
        if os.path.isfile(os.path.join(c, "config.toml")):
            return final, c
    raise ValueError(f"nothing to resume at {path!r}: no partial directory .{os.path.basename(final)}.partial-* "
                     "with a config.toml beside it; expected a run interrupted after it started")


def _lock(path: str, final: str):
    """An exclusive lock on ``path`` (a file descriptor), or :class:`RunDirectoryBusy` if another process holds it."""
    if fcntl is None:
        return None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunDirectoryBusy(final) from None
        try:  # the holder may have removed the file between our open and flock: lock the one now there
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _json_default(obj):
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def check_run(path) -> dict:
    """The marker of a complete run directory, or ``ValueError`` saying what is wrong."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"run directory {path!r} does not exist; expected a directory written by `hbmeta run` or `hbmeta fit`")
    marker = os.path.join(path, MARKER)
    if not os.path.isfile(marker):
        raise ValueError(f"{path!r} has no {MARKER}: not a complete hbmeta run (interrupted, or another directory)")
    info = _read_json(marker, "run marker")
    if not isinstance(info, dict) or not info.get("complete") or not isinstance(info.get("files", []), list):
        raise BadFileError(marker, "is not the marker hbmeta writes (no complete: true and list of files)")
    for name in info.get("files", []):
        if not os.path.isfile(os.path.join(path, name)):
            raise ValueError(f"{path!r} is missing {name}, which its {MARKER} lists; the run directory is damaged")
    return info


def verify_files(path, info: dict, names) -> None:
    """``BadFileError`` if one of ``names`` differs from the file the run wrote (its SHA-256 in ``run.json``)."""
    digests = info.get("sha256", {}) if isinstance(info.get("sha256"), dict) else {}
    for name in names:
        if name in digests and _sha256(os.path.join(path, name)) != digests[name]:
            raise BadFileError(os.path.join(path, name), f"differs from the file this run wrote (its SHA-256 is not "
                                                         f"the one in {MARKER}): changed or damaged since")


def _read_json(path, what):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadFileError(path, f"is not valid JSON ({e}): a damaged {what}") from None


ADDED_KEYS = frozenset({"tasks.store", "inference.svi.subsample_size", "inference.ensemble.member_devices",
                        "inference.nuts.subspace", "inference.nuts.members"})
"""Keys newer than some run directories, whose defaults (no store, every task a step, members on one device
or spread as before, every weight sampled from inference.init) reproduce what those runs did."""


def _load_run_config(path):
    """The run's config.toml: readable, every key written out (a cut-off file misses some), and valid."""
    file = check_readable(os.path.join(path, "config.toml"), "run configuration")
    cfg = load_config(file)
    with open(file, "rb") as fh:
        raw = tomllib.loads(fh.read().decode("utf-8", errors="replace"))
    missing = [k for k in _missing_keys(cfg.to_dict(), raw) if k not in ADDED_KEYS]
    if missing:
        raise BadFileError(file, f"lacks {missing[0]} (and {len(missing) - 1} more keys): cut off or edited; "
                                 "expected the fully resolved configuration that a run writes")
    return cfg


def _missing_keys(full: dict, raw, prefix=""):
    out = []
    for key, value in full.items():
        name = f"{prefix}{key}"
        if not isinstance(raw, dict) or key not in raw:
            out.append(name)
        elif isinstance(value, dict):
            out += _missing_keys(value, raw[key], f"{name}.")
    return out


def _load_samples(file, num_params: int) -> dict:
    """The posterior draws of posterior.npz: real arrays, ``theta`` of shape (chain, draw, num_params)."""
    samples = read_npz(file, what="posterior draws file", names=("theta",))
    for name, value in samples.items():
        check_numeric(file, name, value, kinds="f")
    theta = samples["theta"]
    if theta.ndim != 3 or theta.shape[-1] != num_params:
        raise BadFileError(file, f"theta has shape {theta.shape}; expected (chain, draw, {num_params}) "
                                 "(a file from another run or model?)")
    for name, value in samples.items():
        if value.shape[:2] != theta.shape[:2]:
            raise BadFileError(file, f"{name} has shape {value.shape}; expected ({theta.shape[0]}, {theta.shape[1]}, "
                                     "...) like theta")
    return samples


class LoadedRun(NamedTuple):
    """A run read back: ``config`` (:class:`~hbmeta.run.config.Config`), ``spec``, ``posterior``, ``maml_params``, ``info``."""

    path: str
    config: Any
    spec: Any
    posterior: Any
    maml_params: Any
    info: dict
    scaler: Any = None  # the Standardization of a [data] table run (standardization.json), else None


def load_run(path) -> LoadedRun:
    """Read a complete run: its configuration, meta-parameters and posterior draws.

    Raises:
        ValueError: if ``path`` is not a complete run directory (no ``run.json``: an
            interrupted run, or another directory) or its files do not fit together.

    Example (``RUN`` is a directory written by ``hbmeta run``)::

        run = load_run(RUN)
        run.posterior.samples["theta"].shape      # (chain, draw, P)
        hbmeta.sample_predictive(run.posterior, my_tasks, key=jax.random.key(0))
    """
    info = check_run(path)
    cfg = _load_run_config(path)
    verify_files(path, info, ["config.toml"])  # the other files are checked against it
    scaler = None
    if os.path.isfile(os.path.join(path, "standardization.json")):  # a [data] table run
        file = check_readable(os.path.join(path, "standardization.json"), "standardization file")
        try:
            scaler = Standardization.from_dict(_read_json(file, "standardization file"))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            if isinstance(e, BadFileError):
                raise
            raise BadFileError(file, f"does not describe a standardisation ({e})") from None
    input_dim = None if scaler is None else scaler.num_features
    net = _build.network(cfg, input_dim=input_dim)
    like = jax.eval_shape(lambda k: _build.initial_params(cfg, net, k, input_dim=input_dim), jax.random.key(0))
    params, meta = load_params(os.path.join(path, "meta_params.npz"), with_metadata=True, like=like)
    step_size = meta.get("step_size") if isinstance(meta, dict) else None
    if step_size is not None and not (isinstance(step_size, (int, float)) and step_size > 0):
        raise BadFileError(os.path.join(path, "meta_params.npz"), f"records step_size={step_size!r}; expected a "
                                                                   "positive number")
    spec = _build.spec(cfg, net, params, step_size=step_size)
    samples = _load_samples(os.path.join(path, "posterior.npz"), spec.num_params)
    verify_files(path, info, ["config.toml", "meta_params.npz", "posterior.npz", "standardization.json"])
    posterior = Posterior(samples, spec, info.get("method", "unknown"), info.get("settings", {}))
    return LoadedRun(os.fspath(path), cfg, spec, posterior, params, info, scaler)
