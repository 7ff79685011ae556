"""Spreading a task batch over several devices.

Tasks are independent, so the task axis is the natural one to shard. The
mesh uses ``AxisType.Auto`` (in jax ≥ 0.10 the default, Explicit, breaks the
backward pass of the meta-gradient; docs/references.md, the software stack).
Sharded arrays then go through the ordinary ``jit``-compiled functions: XLA
partitions the ``vmap`` over tasks and sums the meta-gradient across devices
correctly. (Taking ``grad`` inside ``shard_map`` with a replicated θ would
silently mix tasks' inner gradients: :func:`task_map` marks θ as varying over
the task axis first, so each device's inner steps see only its own tasks.)

Every function that takes ``devices=`` (the inference methods through
:func:`~hbmeta.infer`, :func:`~hbmeta.train_maml`,
:func:`~hbmeta.sample_predictive`, :func:`~hbmeta.to_arviz`) reads it with
:func:`resolve_mesh`: ``None`` or ``1`` (one device, no sharding), an int ``n``
(the first ``n`` devices), a list of devices, or a :class:`jax.sharding.Mesh`
with a ``"tasks"`` axis. Results equal the unsharded ones up to the order of
floating-point sums (docs/scale.md).
"""

from __future__ import annotations

import functools

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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


def resolve_mesh(devices, *, axis_name: str = "tasks"):
    """The task mesh that ``devices`` asks for, or None for no sharding (one device).

    ``devices`` is None or 1 (no sharding), an int ``n`` (the first ``n`` of
    ``jax.devices()``), a sequence of devices, or a Mesh with an ``axis_name``
    axis (used as it is).

    Raises:
        ValueError: for a count outside ``[1, jax.device_count()]``, an empty
            sequence or a mesh without the task axis.

    Example:
        >>> import jax
        >>> from hbmeta.tasks.sharding import resolve_mesh
        >>> resolve_mesh(None) is None, resolve_mesh(1) is None, resolve_mesh(jax.devices()[:1]) is None
        (True, True, True)
    """
    if devices is None:
        return None
    if isinstance(devices, Mesh):
        if axis_name not in devices.axis_names:
            raise ValueError(f"devices is a Mesh with axes {devices.axis_names}; expected one named {axis_name!r}")
        return devices
    if isinstance(devices, (bool, str)) or not (isinstance(devices, int) or hasattr(devices, "__len__")):
        raise ValueError(f"devices={devices!r}; expected None, a device count, a list of devices or a jax Mesh")
    if isinstance(devices, int):
        available = jax.device_count()
        if not 1 <= devices <= available:
            raise ValueError(f"devices={devices}; expected a count in [1, {available}] (the devices JAX sees)")
        devices = jax.devices()[:devices]
    devices = list(devices)
    if not devices:
        raise ValueError("devices is an empty list; expected at least one device")
    return None if len(devices) == 1 else task_mesh(devices, axis_name=axis_name)


def task_sharding(mesh, *, axis_name: str = "tasks") -> NamedSharding:
    """Arrays split along their leading (task) axis over ``mesh``."""
    return NamedSharding(mesh, PartitionSpec(axis_name))


def check_divisible(name: str, count: int, mesh) -> None:
    """``ValueError`` unless ``count`` (of tasks, a meta-batch…) is a multiple of the mesh's devices."""
    n = 1 if mesh is None else mesh.devices.size
    if count % n:
        raise ValueError(f"{name} is {count}; expected a multiple of the {n} devices to shard the tasks over "
                         f"(use {count - count % n or n} or {count + n - count % n}, or fewer devices)")


def place_tasks(tasks: TaskBatch, devices, *, name: str = "the number of tasks") -> TaskBatch:
    """``tasks`` split over the devices of :func:`resolve_mesh` (unchanged for one device).

    Raises:
        ValueError: if the task count is not a multiple of the devices (before any compilation).
    """
    mesh = resolve_mesh(devices)
    if mesh is None:
        return tasks
    check_divisible(name, tasks.num_tasks, mesh)
    sharding = task_sharding(mesh, axis_name=mesh.axis_names[0])
    return jax.tree.map(lambda a: jax.device_put(a, sharding), tasks)


def constrain_tasks(tasks, mesh):
    """Inside ``jit``: ask XLA to split ``tasks`` (any pytree with a leading task axis) over ``mesh``."""
    if mesh is None:
        return tasks
    sharding = task_sharding(mesh, axis_name=mesh.axis_names[0])
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), tasks)


def task_map(fn, mesh, *, axis_name: str = "tasks"):
    """``fn(params, tasks)`` run with ``shard_map``: each device computes its own tasks' outputs.

    ``fn`` returns arrays with a leading task axis (e.g. per-task query losses
    after adaptation). θ is replicated; before ``fn`` sees it, it is marked as
    varying over the task axis (``jax.lax.pcast(..., to="varying")``). Without
    that, an inner ``jax.grad`` with respect to the replicated θ is summed
    over devices (its transpose is a ``psum``), so every task would adapt with
    the gradient of all devices' tasks: a silently wrong answer. The outer
    gradient of the returned values with respect to θ (taken outside) is then
    the sum over devices, as it should be.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from hbmeta import GradientSteps, Sinusoid, mlp
        >>> from hbmeta.tasks.sharding import task_map, task_mesh
        >>> net = mlp((1, 8, 1)); rule = GradientSteps(net.apply, step_size=0.01)
        >>> f = task_map(lambda p, t: rule.query_losses(p, t), task_mesh(jax.devices()[:1]))
        >>> f(net.init(jax.random.key(0)), Sinusoid().sample(jax.random.key(1), 4)).shape
        (4,)
    """
    spec = PartitionSpec(axis_name)

    def local(params, tasks):
        params = jax.tree.map(lambda a: jax.lax.pcast(a, axis_name, to="varying"), params)
        return fn(params, tasks)

    return jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(), spec), out_specs=spec)


def shard_inputs(fn, mesh):
    """``fn(tasks, *args, **kwargs)`` with ``tasks`` split over ``mesh`` wherever it is traced (``fn`` if no mesh).

    A sharding placed on the arrays alone is lost when a compiled loop closes
    over them (NumPyro's ``SVI.run``, ``MCMC`` and SVGD capture the model's
    arguments as constants, which XLA keeps on one device); the constraint
    inside the function splits the work again at every trace.

    Example:
        >>> import jax
        >>> from hbmeta import Sinusoid
        >>> from hbmeta.tasks.sharding import shard_inputs, task_mesh
        >>> f = shard_inputs(lambda t: t.x_query.sum(), task_mesh(jax.devices()[:1]))
        >>> float(jax.jit(f)(Sinusoid().sample(jax.random.key(0), 2))) != 0
        True
    """
    if mesh is None:
        return fn

    @functools.wraps(fn)
    def wrapped(tasks, *args, **kwargs):
        return fn(constrain_tasks(tasks, mesh), *args, **kwargs)

    return wrapped


def to_host(tree):
    """``tree``'s arrays as numpy arrays, also when they span devices of other processes (a distributed run)."""
    if all(getattr(a, "is_fully_addressable", True) for a in jax.tree.leaves(tree)):
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)  # every process takes part, each gets the whole


def spread_over_devices(count: int, asked="auto", *, noun: str, argument: str):
    """``(mesh, reason)``: the devices ``count`` independent units (e.g. members) are spread over, and why.

    ``mesh`` is a one-axis Mesh named ``noun`` (None: one device) and
    ``reason`` says the choice in words for the user. ``asked`` is the
    value of the argument called ``argument``: ``"auto"`` takes the largest
    number of this process's devices that divides ``count`` (all of them
    when ``count`` is a multiple of the device count), so that every device
    holds the same number; with one device, no such split or several
    processes, all stay vectorised on one device. None or 1 keeps them on
    one device; an int ``n``, a list of devices or a Mesh with a ``noun`` axis
    (:func:`hbmeta.tasks.sharding.resolve_mesh`) spreads them over those
    devices, whose count must divide ``count``.

    Example:
        >>> spread_over_devices(4, None, noun="members", argument="member_devices")
        (None, '4 members vectorised on one device, as asked')
    """
    if isinstance(asked, str):
        if asked != "auto":
            raise ValueError(f"{argument}={asked!r}; expected 'auto', None, a device count, a list of devices "
                             "or a jax Mesh")
        n = jax.local_device_count()
        if count == 1:
            return None, f"one {noun.removesuffix('s')}"
        if n == 1:
            return None, f"{count} {noun} vectorised on one device (only one device)"
        if jax.process_count() > 1:
            return None, (f"{count} {noun} vectorised where the tasks are (a run over {jax.process_count()} "
                          "processes)")
        d = max(k for k in range(1, min(n, count) + 1) if count % k == 0)
        if d == 1:
            over = "2 devices" if n == 2 else f"any 2 to {n} devices"
            return None, f"{count} {noun} vectorised on one device ({count} do not split evenly over {over})"
        mesh = resolve_mesh(jax.local_devices()[:d], axis_name=noun)
        of = "" if d == n else f" (of {n} devices: the most that divide {count} evenly)"
        return mesh, f"{count} {noun} spread over {d} devices, {count // d} per device{of}"
    try:
        mesh = resolve_mesh(asked, axis_name=noun)
    except ValueError as e:  # its message names the argument devices=: name this one instead
        raise ValueError(argument + str(e)[len("devices"):]) from e
    if mesh is None:
        return None, f"{count} {noun} vectorised on one device, as asked"
    d = mesh.devices.size
    if count % d:
        raise ValueError(f"{argument}={asked!r} gives {d} devices for {count} {noun}; expected a device count "
                         f"that divides {count} (or {argument}='auto')")
    return mesh, f"{count} {noun} spread over {d} devices, {count // d} per device, as asked"


def place_along(tree, mesh):
    """Every leaf of ``tree`` (a leading member axis) split along it over ``mesh`` (None: as it is)."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    return jax.tree.map(lambda a: jax.device_put(a, sharding), tree)
