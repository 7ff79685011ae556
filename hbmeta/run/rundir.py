"""Run directories: written under a temporary name, renamed when complete, and read back.

A run writes every file into ``<parent>/.<name>.partial-<pid>/`` (each file
itself written atomically with :func:`hbmeta.base.files.atomic_write`), writes the
marker ``run.json`` last, and only then renames the directory to its final
name. So an interrupted run never leaves a directory that looks complete:
either the final directory exists with its marker, or there is only a hidden
``.partial`` directory (removed on a Python exception; left behind by a hard
kill, and never read by ``hbmeta predict`` or ``hbmeta diagnose``, which
require the marker).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, NamedTuple

import numpy as np

from hbmeta.base.files import atomic_write, load_params
from hbmeta.model.posterior import Posterior
from hbmeta.run import build as _build
from hbmeta.run.config import load_config
from hbmeta.tasks.table import Standardization

MARKER = "run.json"


class RunDirectoryExists(ValueError):
    """The run directory asked for already exists and is not empty (``path``: the directory)."""

    def __init__(self, path: str):
        super().__init__(f"out={path!r} already exists and is not an empty directory; expected a new directory")
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
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


class RunWriter:
    """Writes the files of one run into a temporary directory; :meth:`commit` publishes it."""

    def __init__(self, final_path: str):
        self.final = os.path.abspath(final_path)
        parent, name = os.path.split(self.final)
        os.makedirs(parent, exist_ok=True)
        self.tmp = os.path.join(parent, f".{name}.partial-{os.getpid()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(self.tmp)
        self.files: list[str] = []

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
        present = [f for f in self.files if os.path.exists(os.path.join(self.tmp, f))]
        self.write_json(MARKER, {**info, "files": present + [MARKER], "complete": True})
        umask = os.umask(0)
        os.umask(umask)
        for name in present + [MARKER]:  # temporary files are created private (0600): give them the usual mode
            os.chmod(os.path.join(self.tmp, name), 0o666 & ~umask)
        os.chmod(self.tmp, 0o777 & ~umask)
        if os.path.isdir(self.final):
            os.rmdir(self.final)  # an empty `out` directory (checked by new_run_path)
        os.rename(self.tmp, self.final)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


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
    with open(marker, encoding="utf-8") as fh:
        info = json.load(fh)
    for name in info.get("files", []):
        if not os.path.isfile(os.path.join(path, name)):
            raise ValueError(f"{path!r} is missing {name}, which its {MARKER} lists; the run directory is damaged")
    return info


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
    cfg = load_config(os.path.join(path, "config.toml"))
    params, meta = load_params(os.path.join(path, "meta_params.npz"), with_metadata=True)
    scaler = None
    if os.path.isfile(os.path.join(path, "standardization.json")):  # a [data] table run
        with open(os.path.join(path, "standardization.json"), encoding="utf-8") as fh:
            scaler = Standardization.from_dict(json.load(fh))
    net = _build.network(cfg, input_dim=None if scaler is None else scaler.num_features)
    spec = _build.spec(cfg, net, params, step_size=meta.get("step_size"))
    with np.load(os.path.join(path, "posterior.npz"), allow_pickle=False) as data:
        samples = {k: np.asarray(data[k]) for k in data.files}
    if samples["theta"].ndim != 3 or samples["theta"].shape[-1] != spec.num_params:
        raise ValueError(
            f"{path!r}: posterior.npz theta has shape {samples['theta'].shape}; expected (chain, draw, {spec.num_params})"
        )
    posterior = Posterior(samples, spec, info.get("method", "unknown"), info.get("settings", {}))
    return LoadedRun(os.fspath(path), cfg, spec, posterior, params, info, scaler)
