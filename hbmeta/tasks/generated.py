"""A finite set of ``T`` tasks that is never stored: task ``j`` is generated from the key when it is used.

``family.generated(key, T)`` defines ``T`` fixed tasks, task ``j`` being
``family.sample(fold_in(key, j), 1)``. The set costs one PRNG key of memory
whatever ``T`` is, and taking ``B`` tasks costs the generation of ``B`` tasks,
so the cost of a subsampled SVI step or a MAML meta-iteration over it does not
grow with ``T`` (``bench/scale_tasks.py`` measures this from 10³ to 10⁶ tasks).
The same ``j`` gives the same task on every call, on every device and in
every process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

from hbmeta.base.validate import check_int
from hbmeta.tasks.batch import TaskBatch


def distinct_indices(key, population: int, size: int) -> jax.Array:
    """``size`` distinct indices drawn uniformly from ``range(population)`` (a partial Fisher–Yates shuffle).

    ``size`` swaps on an index array: the work is a fill of ``population``
    integers and ``size`` random draws, never a full permutation or a sort.
    Exactly as likely as any other ``size``-subset in any order.

    Example:
        >>> import jax
        >>> idx = distinct_indices(jax.random.key(0), 10**6, 5)
        >>> idx.shape, bool(len(set(idx.tolist())) == 5), bool(idx.max() < 10**6)
        ((5,), True, True)
    """
    population, size = int(population), int(size)
    if not 1 <= size <= population:
        raise ValueError(f"size={size}; expected an integer in [1, {population}] (the population)")
    keys = jax.random.split(key, size)

    def swap(values, step):
        last = population - 1 - step  # the slot filled at this step, from the end
        j = jax.random.randint(keys[step], (), 0, last + 1)
        a, b = values[last], values[j]
        return values.at[last].set(b).at[j].set(a), None

    values, _ = jax.lax.scan(swap, jnp.arange(population, dtype=jnp.int32), jnp.arange(size))
    return values[population - size:]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class GeneratedTasks:
    """``num_tasks`` tasks of ``family``, each generated from ``key`` when taken; build with ``family.generated``.

    Task ``j`` is ``family.sample(jax.random.fold_in(key, j), 1)`` (with the
    family's point counts, or ``num_support``/``num_query``). A pytree whose only
    array is the key, so it passes through ``jit`` at no cost.

    - ``take(index)``: the tasks at an integer ``index`` array, as a :class:`~hbmeta.TaskBatch`.
    - ``sample(key, n)``: ``n`` distinct tasks chosen at random (what
      :func:`~hbmeta.train_maml` calls for a meta-batch).
    - ``materialise()``: all ``T`` tasks as one :class:`~hbmeta.TaskBatch` (for small ``T``).

    :func:`~hbmeta.run_svi` takes it with ``subsample_size``: each ELBO step
    generates only its ``B`` tasks, so neither time nor memory grow with ``T``.

    Example:
        >>> import jax
        >>> from hbmeta import Sinusoid
        >>> tasks = Sinusoid(num_support=5).generated(jax.random.key(0), 10**6)
        >>> tasks.num_tasks, tasks.take(jax.numpy.array([3, 999_999])).x_support.shape
        (1000000, (2, 5, 1))
        >>> bool((tasks.take(jax.numpy.array([7])).y_query == tasks.take(jax.numpy.array([7])).y_query).all())
        True
    """

    key: jax.Array
    family: Any = field(metadata={"static": True})
    num_tasks: int = field(metadata={"static": True})
    num_support: int = field(metadata={"static": True})
    num_query: int = field(metadata={"static": True})

    def take(self, index) -> TaskBatch:
        """The tasks at ``index`` (an integer array, shape ``(B,)``), generated now."""
        index = jnp.asarray(index)
        if index.ndim != 1 or not jnp.issubdtype(index.dtype, jnp.integer):
            raise ValueError(f"index has shape {index.shape} and dtype {index.dtype}; expected a 1-d integer array")

        def one(j):
            tasks = self.family.sample(jax.random.fold_in(self.key, j), 1, num_support=self.num_support,
                                       num_query=self.num_query)
            return jax.tree.map(lambda a: a[0], tasks)

        return jax.vmap(one)(index)

    def sample(self, key, num_tasks: int, **_) -> TaskBatch:
        """``num_tasks`` distinct tasks of the set, chosen at random (``jit``-able, ``num_tasks`` static)."""
        if num_tasks > self.num_tasks:
            raise ValueError(f"num_tasks={num_tasks}; expected at most the {self.num_tasks} tasks in the set")
        return self.take(distinct_indices(key, self.num_tasks, num_tasks))

    def materialise(self) -> TaskBatch:
        """All ``T`` tasks as one :class:`~hbmeta.TaskBatch` (memory in proportion to ``T``)."""
        return self.take(jnp.arange(self.num_tasks))

    @property
    def regression(self) -> bool:
        return self.family.regression


def generated_tasks(family, key, num_tasks: int, *, num_support=None, num_query=None) -> GeneratedTasks:
    """``GeneratedTasks`` of ``family`` (validated: counts, a hashable family, a PRNG key)."""
    num_tasks = check_int("num_tasks", num_tasks)
    num_support = family.num_support if num_support is None else num_support
    num_query = family.num_query if num_query is None else num_query
    check_int("num_support", num_support)
    check_int("num_query", num_query, minimum=0)
    family._check_points(num_support, num_query)
    try:
        hash(family)
    except TypeError as err:
        raise ValueError(f"family {type(family).__name__} is not hashable; expected a frozen dataclass") from err
    if not (isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ()):
        raise ValueError(f"key is {type(key).__name__} {getattr(key, 'shape', '')}; expected one jax.random.key")
    return GeneratedTasks(key=key, family=family, num_tasks=num_tasks, num_support=int(num_support),
                          num_query=int(num_query))
