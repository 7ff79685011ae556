"""Task batches: the data of many few-shot tasks as one pytree of stacked arrays.

A task ``j`` has a support set ``S_j`` (``K`` points) used for adaptation and a
query set ``Q_j`` (``M`` points) used to score the adapted model. A
:class:`TaskBatch` stacks ``T`` tasks along a leading task axis, so every
function in hbmeta can ``vmap`` over it. Tasks with different numbers of
points share one batch by padding: a boolean mask marks the real points.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hbmeta.base.validate import check_type


class TaskBatch(NamedTuple):
    """``T`` few-shot tasks stacked along a leading task axis.

    Fields (shapes with ``T`` tasks, ``K`` support and ``M`` query points,
    ``d`` input features):

    - ``x_support``: ``(T, K, d)`` support inputs.
    - ``y_support``: ``(T, K)`` integer class labels or ``(T, K, o)`` real targets.
    - ``x_query``: ``(T, M, d)`` query inputs.
    - ``y_query``: ``(T, M)`` or ``(T, M, o)``, like ``y_support``.
    - ``support_mask``: ``(T, K)`` booleans, ``True`` for real points, or ``None``.
    - ``query_mask``: ``(T, M)`` booleans, or ``None``.

    Build one with :func:`make_tasks`, which validates the shapes and values.
    It is a pytree, so ``jax.tree.map`` and ``vmap`` work on it directly.
    """

    x_support: jax.Array
    y_support: jax.Array
    x_query: jax.Array
    y_query: jax.Array
    support_mask: jax.Array | None = None
    query_mask: jax.Array | None = None

    @property
    def num_tasks(self) -> int:
        """The number of tasks ``T``."""
        return self.x_support.shape[0]

    def take(self, index) -> TaskBatch:
        """The tasks at ``index`` (an int array or slice) as a new batch."""
        return jax.tree.map(lambda a: a[index], self)

    def support(self):
        """``(x, y, mask)`` of the support sets."""
        return self.x_support, self.y_support, self.support_mask

    def query(self):
        """``(x, y, mask)`` of the query sets."""
        return self.x_query, self.y_query, self.query_mask


def _check_finite(name, arr):
    a = np.asarray(arr)
    if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); expected finite numbers")


def make_tasks(
    x_support,
    y_support,
    x_query,
    y_query,
    *,
    support_mask=None,
    query_mask=None,
) -> TaskBatch:
    """Validate arrays and stack them into a :class:`TaskBatch`.

    Inputs of rank 2 ``(T, K)`` are taken as one input feature and become
    ``(T, K, 1)``. Real targets of rank 2 stay as they are only when they are
    integer class labels; real-valued targets of rank 2 become ``(T, K, 1)``.

    Raises:
        ValueError: naming the field, the shape seen and the shape expected,
            for mismatched leading sizes, wrong ranks, NaN or infinite values,
            an empty support set, or masks of the wrong shape.

    Example:
        >>> import numpy as np
        >>> from hbmeta import make_tasks
        >>> t = make_tasks(np.zeros((4, 5, 1)), np.zeros((4, 5, 1)),
        ...                np.zeros((4, 7, 1)), np.zeros((4, 7, 1)))
        >>> t.num_tasks, t.x_query.shape
        (4, (4, 7, 1))
    """
    fields = {
        "x_support": x_support,
        "y_support": y_support,
        "x_query": x_query,
        "y_query": y_query,
    }
    arrays = {}
    for name, value in fields.items():
        if value is None:
            raise ValueError(f"{name} is None; expected an array with a leading task axis")
        a = np.asarray(value)
        if a.dtype == object:
            raise ValueError(f"{name} could not be read as a numeric array")
        arrays[name] = a
    for name in ("x_support", "x_query"):
        a = arrays[name]
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3:
            raise ValueError(
                f"{name} has shape {a.shape} (rank {a.ndim}); expected rank 3, "
                "(tasks, points, features)"
            )
        arrays[name] = a
    for name in ("y_support", "y_query"):
        a = arrays[name]
        if a.ndim == 2 and a.dtype.kind == "f":
            a = a[..., None]
        if a.ndim not in (2, 3):
            raise ValueError(
                f"{name} has shape {a.shape} (rank {a.ndim}); expected (tasks, points) "
                "integer labels or (tasks, points, outputs) real targets"
            )
        arrays[name] = a
    for name, a in arrays.items():
        _check_finite(name, a)

    num_tasks = arrays["x_support"].shape[0]
    for name, a in arrays.items():
        if a.shape[0] != num_tasks:
            raise ValueError(
                f"{name} has {a.shape[0]} tasks (shape {a.shape}); expected {num_tasks} "
                f"tasks, the leading size of x_support {arrays['x_support'].shape}"
            )
    if num_tasks == 0:
        raise ValueError("x_support has 0 tasks; expected at least one task")
    for side in ("support", "query"):
        x, y = arrays[f"x_{side}"], arrays[f"y_{side}"]
        if y.shape[1] != x.shape[1]:
            raise ValueError(
                f"y_{side} has shape {y.shape}; expected {x.shape[1]} points per task "
                f"to match x_{side} {x.shape}"
            )
    if arrays["x_support"].shape[1] == 0:
        raise ValueError(
            f"x_support has shape {arrays['x_support'].shape}: the support set is empty; "
            "expected at least one support point per task"
        )
    ys, yq = arrays["y_support"], arrays["y_query"]
    if ys.ndim != yq.ndim or ys.shape[2:] != yq.shape[2:]:
        trailing = "".join(f", {s}" for s in ys.shape[2:])
        raise ValueError(
            f"y_query has shape {yq.shape}; expected ({yq.shape[0]}, {yq.shape[1]}{trailing}), "
            f"targets of the same kind as y_support {ys.shape}"
        )
    if arrays["x_query"].shape[2] != arrays["x_support"].shape[2]:
        raise ValueError(
            f"x_query has {arrays['x_query'].shape[2]} features (shape {arrays['x_query'].shape}); "
            f"expected {arrays['x_support'].shape[2]} like x_support"
        )

    masks = {}
    for side, mask in (("support", support_mask), ("query", query_mask)):
        if mask is None:
            masks[side] = None
            continue
        m = np.asarray(mask)
        expected = arrays[f"x_{side}"].shape[:2]
        if m.shape != expected:
            raise ValueError(f"{side}_mask has shape {m.shape}; expected {expected}")
        if m.dtype != bool:
            if not np.all((m == 0) | (m == 1)):
                raise ValueError(f"{side}_mask has values other than 0/1; expected booleans")
            m = m.astype(bool)
        if side == "support" and not np.all(m.any(axis=1)):
            empty = np.flatnonzero(~m.any(axis=1)).tolist()
            raise ValueError(
                f"support_mask leaves tasks {empty[:5]} with an empty support set; "
                "expected at least one True per task"
            )
        masks[side] = jnp.asarray(m)

    def to_jax(a):
        if a.dtype.kind == "f":
            return jnp.asarray(a, dtype=jnp.result_type(float))
        if a.dtype.kind in "iub":
            return jnp.asarray(a, dtype=jnp.int32)
        return jnp.asarray(a)

    return TaskBatch(
        to_jax(arrays["x_support"]),
        to_jax(arrays["y_support"]),
        to_jax(arrays["x_query"]),
        to_jax(arrays["y_query"]),
        masks["support"],
        masks["query"],
    )


def concatenate_tasks(batches) -> TaskBatch:
    """Join task batches with the same point counts along the task axis."""
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty; expected at least one TaskBatch")
    return jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *batches)


def with_query_inputs(tasks: TaskBatch, x) -> TaskBatch:
    """The same support sets with query inputs ``x`` (``(G, d)`` shared or ``(T, G, d)``), targets zero.

    Use it to predict on a dense grid (plots) or at fixed reference inputs (diagnostics).

    Example:
        >>> import jax
        >>> import hbmeta as hb
        >>> tasks = hb.Sinusoid(num_support=5).sample(jax.random.key(0), 3)
        >>> hb.with_query_inputs(tasks, jax.numpy.linspace(-5, 5, 7)).x_query.shape
        (3, 7, 1)
    """
    check_type("tasks", tasks, TaskBatch)
    x = jnp.asarray(x, dtype=tasks.x_support.dtype)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim == 2:
        x = jnp.broadcast_to(x, (tasks.num_tasks,) + x.shape)
    d = tasks.x_support.shape[-1]
    if x.ndim != 3 or x.shape[0] != tasks.num_tasks or x.shape[2] != d:
        raise ValueError(f"x has shape {x.shape}; expected (points, {d}) or ({tasks.num_tasks}, points, {d})")
    if tasks.y_support.ndim == 3:
        y = jnp.zeros(x.shape[:2] + tasks.y_support.shape[2:], tasks.y_support.dtype)
    else:
        y = jnp.zeros(x.shape[:2], tasks.y_support.dtype)
    return TaskBatch(tasks.x_support, tasks.y_support, x, y, tasks.support_mask, None)
