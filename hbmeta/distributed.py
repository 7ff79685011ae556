"""Several processes (hosts) as one JAX program: a thin layer over ``jax.distributed``.

Each process runs the same script. :func:`initialize` joins them (it calls
``jax.distributed.initialize``, which finds the coordinator, the process count
and this process's index itself under Slurm, Open MPI and on TPU pods, or
takes them as arguments); afterwards ``jax.devices()`` lists every process's
devices, and a mesh over them (:func:`hbmeta.tasks.sharding.task_mesh`) spans
the hosts. Task arrays are made global from each process's own share with
:func:`global_tasks` (``jax.make_array_from_process_local_data``), so no
process holds every task; tasks every process can draw itself (a seeded
family) may instead be given whole to ``devices=`` (each process then places
its own share). Only the main process (index 0) should write files:
:func:`is_main_process`. See docs/scale.md for a Slurm script.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from hbmeta.tasks.batch import TaskBatch
from hbmeta.tasks.sharding import check_divisible, task_mesh, task_sharding


class ProcessInfo(NamedTuple):
    """Where this process stands: ``index`` of ``count`` processes, ``local_devices`` of ``num_devices``."""

    index: int
    count: int
    local_devices: int
    num_devices: int


def process_info() -> ProcessInfo:
    """This process's :class:`ProcessInfo` (one process: ``ProcessInfo(0, 1, n, n)``).

    Example:
        >>> from hbmeta.distributed import process_info
        >>> process_info().index
        0
    """
    return ProcessInfo(jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids=None, initialization_timeout: int = 300,
               cpu_collectives: str = "gloo") -> ProcessInfo:
    """Join the processes of one distributed run (``jax.distributed.initialize``); call it before any computation.

    Without arguments the cluster is detected (Slurm, Open MPI, TPU pods);
    otherwise give the coordinator's ``"host:port"``, the number of processes
    and this process's index (0 … num_processes − 1). On CPU the processes
    exchange data through ``cpu_collectives`` (``"gloo"``; set before JAX
    starts its CPU backend). Every process must call it with the same
    coordinator and count; it waits up to ``initialization_timeout`` seconds
    for the others.

    Raises:
        ValueError: for a process id outside ``[0, num_processes)``, or when
            JAX has already started computing in this process.
    """
    if num_processes is not None and process_id is not None and not 0 <= int(process_id) < int(num_processes):
        raise ValueError(f"process_id={process_id}; expected an index in [0, {num_processes}) (num_processes)")
    try:
        from jax._src import xla_bridge  # private: the only way to ask whether the backends have started

        started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):
        started = False
    if started:
        raise ValueError("JAX has already started its devices in this process; expected hbmeta.distributed."
                         "initialize() to be called first, before any JAX computation")
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids,
                               initialization_timeout=int(initialization_timeout))
    return process_info()


def is_main_process() -> bool:
    """True in process 0 (and when there is only one process): the one that writes files and prints."""
    return jax.process_index() == 0


def process_tasks(num_tasks: int, *, process_index: int | None = None, process_count: int | None = None) -> slice:
    """The tasks ``[start, stop)`` that a process holds when ``num_tasks`` are split evenly by process.

    Raises:
        ValueError: if ``num_tasks`` is not a multiple of the number of devices.

    Example:
        >>> from hbmeta.distributed import process_tasks
        >>> process_tasks(8, process_index=1, process_count=2)
        slice(4, 8, None)
    """
    count = jax.process_count() if process_count is None else int(process_count)
    index = jax.process_index() if process_index is None else int(process_index)
    if num_tasks % count:
        raise ValueError(f"num_tasks is {num_tasks}; expected a multiple of the {count} processes")
    size = num_tasks // count
    return slice(index * size, (index + 1) * size)


def global_tasks(local: TaskBatch, *, mesh=None) -> TaskBatch:
    """One task batch over every process's devices, from this process's share ``local``.

    Process ``i`` passes its tasks (e.g. ``all_tasks.take(process_tasks(T))``,
    or the rows it read from its part of a file); the result is a
    :class:`~hbmeta.TaskBatch` of global arrays split along the task axis
    over ``mesh`` (default: a task mesh of all devices of all processes),
    whose task ``j`` is process ``j // (T / count)``'s. With one process it
    is ``local`` placed on the mesh.

    Raises:
        ValueError: if the global task count is not a multiple of the devices.

    Example:
        >>> import jax
        >>> from hbmeta import Sinusoid
        >>> from hbmeta.distributed import global_tasks
        >>> global_tasks(Sinusoid().sample(jax.random.key(0), 4)).num_tasks
        4
    """
    mesh = task_mesh(jax.devices()) if mesh is None else mesh
    check_divisible("the global number of tasks", local.num_tasks * jax.process_count(), mesh)
    sharding = task_sharding(mesh, axis_name=mesh.axis_names[0])
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), local)
