"""How a run uses a task store (``tasks.store``): opened and checked before any work, read lazily or loaded.

MAML's meta-training and SVI with ``inference.svi.subsample_size`` read a few tasks a step from the
memory-mapped files (:mod:`hbmeta.tasks.store`); every other method scores every training task a step, so
the store is loaded whole after a memory check. The held-out tasks still come from the family.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import numpy as np

from hbmeta.base.files import BadFileError
from hbmeta.base.memory import check_memory
from hbmeta.run.config import Config
from hbmeta.tasks.store import StoredTasks, open_task_store

STORE_SUMMARY_TASKS = 1000
"""With a task store read a few tasks a step (MAML, SVI with a ``subsample_size``), the stages that take the
training tasks as a whole (MAML's σ, the starting τ and σ of the task-level posterior, ``posterior.nc``) take
the whole store when it holds at most this many tasks, else this many of its tasks (a seeded random subset)."""


class _StorePlan(NamedTuple):
    """How a run uses its task store: ``num_tasks`` training tasks (the store's; loaded at toy size, its first
    8 at most), read a few a step (``lazy``) or loaded whole; ``describe`` says which in words."""

    store: StoredTasks
    num_tasks: int
    lazy: bool
    num_support: int
    describe: str


def open_store(cfg: Config) -> StoredTasks:
    """The store of ``tasks.store`` (relative to the working directory), opened and checked: ``ValueError`` naming it."""
    given = cfg.tasks.store
    path = os.path.abspath(os.fspath(given))
    if not os.path.isdir(path):
        seen = "is a file, not a directory" if os.path.exists(path) else "does not exist"
        raise ValueError(f"{cfg.source}: tasks.store = {given!r}: {path} {seen}; expected a task store directory "
                         "written by hbmeta.save_task_store (a relative path is relative to the working directory)")
    try:
        return open_task_store(path)
    except BadFileError as e:
        raise ValueError(f"{cfg.source}: tasks.store = {given!r}: {e}") from None


def check_store(cfg: Config, store: StoredTasks) -> None:
    """The store's tasks must fit the configured network and likelihood, as ``train_tasks`` (``pipeline._check_train_tasks``)."""
    where = f"{cfg.source}: tasks.store = {store.directory!r}"
    if store.num_tasks < 1:
        raise ValueError(f"{where} holds no tasks; expected one or more")
    layout = {name: (shape, np.dtype(dtype)) for name, shape, dtype in store.layout}
    d = cfg.family.input_dim
    for name in ("x_support", "x_query"):
        shape = layout[name][0]
        if len(shape) != 2 or shape[-1] != d:
            raise ValueError(f"{where}: {name} has shape (tasks, {', '.join(map(str, shape))}) per store.json; expected "
                             f"(tasks, points, {d}): {d} input feature{'s' if d != 1 else ''}, the input size of the "
                             f"configured network (family {cfg.family.name!r})")
    for name in ("y_support", "y_query"):
        shape, dtype = layout[name]
        if cfg.regression and (dtype.kind != "f" or len(shape) != 2 or shape[-1] != 1):
            raise ValueError(f"{where}: {name} is {dtype.name} of shape (tasks, {', '.join(map(str, shape))}); "
                             "expected (tasks, points, 1) real values for the normal likelihood")
        if not cfg.regression and (dtype.kind not in "iu" or len(shape) != 1):
            raise ValueError(f"{where}: {name} is {dtype.name} of shape (tasks, {', '.join(map(str, shape))}); "
                             "expected (tasks, points) integer class labels for the categorical likelihood")
    if not cfg.regression:  # every label in range: one pass over the memory-mapped label files
        k = cfg.family.output_dim
        for name in ("y_support", "y_query"):
            labels = np.load(os.path.join(store.directory, f"{name}.npy"), mmap_mode="r")
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= k:
                raise ValueError(f"{where}: {name} has labels {lo}..{hi}; expected class labels 0..{k - 1} "
                                 f"(family {cfg.family.name!r})")


def store_plan(eff: Config, store: StoredTasks, method: str, settings: dict, devices) -> _StorePlan:
    """Check the store against the configuration and choose how the run reads it (before any work).

    MAML's meta-training and SVI with ``inference.svi.subsample_size`` read a meta-batch or a subsample a step
    (``lazy``); every other method (NUTS, HMC, Laplace, SVGD, the ensemble, SVI without a subsample size)
    scores every training task a step, so the store is loaded whole, after a memory check (at toy size only
    its first ``tasks.num_train`` tasks, at most 8).
    """
    check_store(eff, store)
    n = min(eff.tasks.num_train, store.num_tasks)  # the store's count; loaded with run.toy: at most 8
    subsample = int(settings.get("subsample_size", 0)) if method == "svi" else 0
    lazy = eff.store_read_lazily
    layout = {name: shape for name, shape, _ in store.layout}
    num_support = int(layout["x_support"][0])
    if lazy:
        if subsample and devices is not None:
            raise ValueError(f"{eff.source}: tasks.store with inference.method = 'svi' and run.devices = "
                             f"{eff.run.devices}; expected run.devices = 1 (SVI reads its subsample of a store where "
                             "its step runs), or inference.svi.subsample_size = 0 to load the store whole")
        step = f", {subsample} an SVI step" if subsample else ""
        return _StorePlan(store, n, True, num_support,
                          f"{n} tasks, read from disk a MAML meta-batch{step} at a time")
    per_task = sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize for _, shape, dt in store.layout)
    describe = (f"its first {n} of {store.num_tasks} tasks loaded whole (run.toy)" if n < store.num_tasks else
                f"{n} tasks loaded whole (method {method!r} scores every training task a step"
                + (", inference.svi.subsample_size = 0)" if method == "svi" else ")"))
    check_memory(2 * n * per_task,  # read from the files, then placed on the device
                 what=f"tasks.store {store.directory}: {describe}",
                 lower="the tasks in the store, or run inference.method = 'svi' with inference.svi.subsample_size "
                       "> 0 or 'maml', which read only a few tasks a step")
    return _StorePlan(store, n, False, num_support, describe)


def store_tasks(plan: _StorePlan, key):
    """``(train, fit_tasks)``: the training tasks as a whole (all, or a seeded subset of a store read lazily) and
    what MAML and the method train on (the store itself when read lazily)."""
    store, n = plan.store, plan.num_tasks
    if not plan.lazy:
        batch = store.materialise() if n == store.num_tasks else store.take(np.arange(n))
        return batch, batch
    if n <= STORE_SUMMARY_TASKS:
        return store.materialise(), store
    index = np.sort(np.asarray(jax.random.choice(key, n, (STORE_SUMMARY_TASKS,), replace=False)))
    return store.take(index), store


def check_subsample_size(eff: Config, method: str, settings: dict, num_train: int) -> None:
    """SVI's ``subsample_size`` is at most the training tasks (of the family, a store, a table or the user's)."""
    b = settings.get("subsample_size", 0) if method == "svi" else 0
    if b > num_train:
        source = ("tasks.store" if eff.tasks.store else "data.path" if eff.data.path else "the training tasks"
                  if eff.tasks.num_train != num_train else "tasks.num_train")
        raise ValueError(f"{eff.source}: inference.svi.subsample_size = {b}; expected at most the {num_train} "
                         f"training tasks ({source}), or 0: every task")
