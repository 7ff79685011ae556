"""Spreading a task batch over several devices.

Tasks are independent, so the task axis is the natural one to shard. The
mesh uses ``AxisType.Auto`` (in jax ≥ 0.10 the default, Explicit, breaks the
backward pass of the meta-gradient; docs/references.md, the software stack).
Sharded arrays then go through the ordinary ``jit``-compiled functions: XLA
partitions the ``vmap`` over tasks and sums the meta-gradient across devices
correctly. (Taking ``grad`` inside ``shard_map`` with a replicated θ would
silently mix tasks' inner gradients; hbmeta does not do that.)
"""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding, PartitionSpec

from hbmeta.tasks.batch import TaskBatch


def task_mesh(devices=None, *, axis_name: str = "tasks"):
    """A one-axis mesh over ``devices`` (default: all) with an Auto axis type."""
    devices = jax.devices() if devices is None else list(devices)
    kwargs = {}
    if hasattr(jax.sharding, "AxisType"):
        kwargs["axis_types"] = (jax.sharding.AxisType.Auto,)
    return jax.make_mesh((len(devices),), (axis_name,), devices=devices, **kwargs)


def shard_tasks(tasks: TaskBatch, *, devices=None, axis_name: str = "tasks") -> TaskBatch:
    """Place ``tasks`` on ``devices`` split along the task axis.

    Raises:
        ValueError: if the number of tasks is not a multiple of the device count.

    Example:
        >>> import jax
        >>> from hbmeta import Sinusoid, shard_tasks
        >>> t = shard_tasks(Sinusoid().sample(jax.random.key(0), 4), devices=jax.devices()[:1])
        >>> t.num_tasks
        4
    """
    mesh = task_mesh(devices, axis_name=axis_name)
    n = mesh.devices.size
    if tasks.num_tasks % n:
        raise ValueError(
            f"tasks has {tasks.num_tasks} tasks; expected a multiple of the {n} devices to shard over"
        )
    sharding = NamedSharding(mesh, PartitionSpec(axis_name))
    return jax.tree.map(lambda a: jax.device_put(a, sharding), tasks)
