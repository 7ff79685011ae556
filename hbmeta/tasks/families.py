"""Task families: pure samplers of few-shot tasks driven by a JAX PRNG key.

Every family is a frozen dataclass with the same interface:

- ``sample(key, num_tasks)`` draws fresh tasks at every call (MAML's infinite
  task distribution); it is ``jit``-able with ``num_tasks`` static;
- ``fixed(key, num_tasks)`` draws a finite set of ``T`` tasks once and returns a
  :class:`FixedTasks` whose ``sample`` picks meta-batches from that set;
- ``sample_params(key, n)`` and ``function(task_params, x)`` give the task
  parameters and the noiseless function of one task (for plots and tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from hbmeta.base.validate import check_int, check_positive
from hbmeta.tasks.batch import TaskBatch
from hbmeta.tasks.generated import GeneratedTasks, generated_tasks


def _check_range(name, value):
    lo, hi = value
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"{name}={value!r}; expected a finite (low, high) pair with low <= high")


def _uniform(key, shape, bounds):
    if bounds[0] == bounds[1]:  # a fixed value: no random draw (cheaper inside meta-training loops)
        return jnp.full(shape, bounds[0], dtype=jnp.result_type(float))
    return jax.random.uniform(key, shape, minval=bounds[0], maxval=bounds[1])


def _inputs_and_noise(key, noise, draw_x):
    """``(x, add_noise)``: inputs from ``draw_x(key)`` and a function ``y -> y + scale·ε``.

    A noiseless family makes no noise draw at all (and no key split): every
    random draw is a separate piece of compiled code inside training loops.
    """
    if noise == 0:
        return draw_x(key), lambda y, scale: y
    kx, ke = jax.random.split(key)
    return draw_x(kx), lambda y, scale: y + scale * jax.random.normal(ke, y.shape, dtype=y.dtype)


def _sample_impl(family, key, num_tasks, num_support, num_query):
    k_params, k_points = jax.random.split(key)
    params = family.sample_params(k_params, num_tasks)
    x, y = family._points(k_points, params, num_tasks, num_support + num_query)
    k = num_support
    return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:]), params


# Compiled once per (family, sizes): an eager call then costs one dispatch, not one per operation.
_sample_jit = jax.jit(_sample_impl, static_argnums=(0, 2, 3, 4))


def _sample(family, key, num_tasks, num_support, num_query):
    try:
        hash(family)
    except TypeError:  # a user-defined family that cannot be a static argument
        return _sample_impl(family, key, num_tasks, num_support, num_query)
    return _sample_jit(family, key, num_tasks, num_support, num_query)


@partial(jax.jit, static_argnums=2)
def _pick(key, tasks, num_tasks):
    index = jax.random.permutation(key, tasks.num_tasks)[:num_tasks]
    return tasks.take(index)


class _Family:
    """Shared sampling logic: subclasses give ``sample_params`` and ``_points``.

    ``_points(key, params, num_tasks, num_points)`` draws the inputs and targets
    of all tasks at once, ``(T, N, d)`` and ``(T, N, o)`` (or ``(T, N)`` labels);
    the first ``num_support`` points of each task form its support set.
    """

    regression = True

    def sample(self, key, num_tasks: int, *, num_support=None, num_query=None, return_params=False):
        """Draw ``num_tasks`` fresh tasks as a :class:`~hbmeta.TaskBatch`.

        ``num_support``/``num_query`` override the family's point counts.
        With ``return_params=True`` it also returns the task parameters.
        """
        num_support = self.num_support if num_support is None else num_support
        num_query = self.num_query if num_query is None else num_query
        check_int("num_tasks", num_tasks)
        check_int("num_support", num_support)
        check_int("num_query", num_query, minimum=0)
        self._check_points(num_support, num_query)
        tasks, params = _sample(self, key, int(num_tasks), int(num_support), int(num_query))
        return (tasks, params) if return_params else tasks

    def _check_points(self, num_support, num_query):
        """Family-specific checks of point counts (raise ValueError)."""

    def _check_noise_and_points(self):
        """The checks every regression family makes of its noise and its point counts."""
        if not self.noise >= 0:
            raise ValueError(f"noise={self.noise}; expected a non-negative standard deviation")
        check_int("num_support", self.num_support)
        check_int("num_query", self.num_query, minimum=0)

    def fixed(self, key, num_tasks: int, *, num_support=None, num_query=None) -> FixedTasks:
        """A finite set of ``num_tasks`` tasks drawn once (e.g. BMAML's |T| = 100)."""
        tasks, params = self.sample(
            key, num_tasks, num_support=num_support, num_query=num_query, return_params=True
        )
        return FixedTasks(tasks=tasks, task_params=params, family=self)

    def generated(self, key, num_tasks: int, *, num_support=None, num_query=None) -> GeneratedTasks:
        """A finite set of ``num_tasks`` tasks that is never stored: task ``j`` is generated when taken.

        See :class:`~hbmeta.GeneratedTasks` (memory and cost per step independent of ``num_tasks``).
        """
        return generated_tasks(self, key, num_tasks, num_support=num_support, num_query=num_query)

    def with_points(self, *, num_support=None, num_query=None):
        """A copy with other support and query sizes."""
        changes = {}
        if num_support is not None:
            changes["num_support"] = num_support
        if num_query is not None:
            changes["num_query"] = num_query
        return replace(self, **changes)


@dataclass(frozen=True)
class Sinusoid(_Family):
    """``y = A sin(ω x − φ) + ε``: the MAML regression family.

    See docs/references.md, the MAML sinusoid protocol.

    Defaults are the MAML protocol: ``A ~ U[0.1, 5]``, ``φ ~ U[0, π]``,
    ``ω = 1``, ``x ~ U[−5, 5]``, no noise, 10 support and 10 query points.
    BMAML's variant is ``Sinusoid(phase=(0, 2π), frequency=(0.5, 2.0),
    noise=0.01, relative_noise=True)`` (noise standard deviation 0.01·A).

    Example:
        >>> import jax
        >>> tasks = Sinusoid().sample(jax.random.key(0), 25)
        >>> tasks.x_support.shape, tasks.y_query.shape
        ((25, 10, 1), (25, 10, 1))
    """

    amplitude: tuple = (0.1, 5.0)
    phase: tuple = (0.0, math.pi)
    frequency: tuple = (1.0, 1.0)
    x_range: tuple = (-5.0, 5.0)
    noise: float = 0.0
    relative_noise: bool = False
    num_support: int = 10
    num_query: int = 10

    def __post_init__(self):
        for name in ("amplitude", "phase", "frequency", "x_range"):
            _check_range(name, getattr(self, name))
        self._check_noise_and_points()

    def sample_params(self, key, n):
        ka, kp, kf = jax.random.split(key, 3)
        return {
            "amplitude": _uniform(ka, (n,), self.amplitude),
            "phase": _uniform(kp, (n,), self.phase),
            "frequency": _uniform(kf, (n,), self.frequency),
        }

    @staticmethod
    def function(p, x):
        """The noiseless function of one task at inputs ``x`` of shape ``(..., 1)``."""
        return p["amplitude"] * jnp.sin(p["frequency"] * x - p["phase"])

    def _points(self, key, p, n, num_points):
        x, add_noise = _inputs_and_noise(key, self.noise, lambda k: _uniform(k, (n, num_points, 1), self.x_range))
        scale = self.noise * (p["amplitude"][:, None, None] if self.relative_noise else 1.0)
        return x, add_noise(jax.vmap(self.function)(p, x), scale)


@dataclass(frozen=True)
class SinusoidAndLine(_Family):
    """PLATIPUS's ambiguous mixture: each task is a sinusoid or a line.

    See docs/references.md, task families of the probabilistic variants.

    Sines as in :class:`Sinusoid`; lines ``y = a x + b`` with ``a ~ U[−3, 3]``,
    ``b ~ U[−3, 3]``; a task is a line with probability ``line_probability``.
    Task params carry ``is_line`` (0 or 1).

    Example:
        >>> import jax
        >>> t, p = SinusoidAndLine(num_support=2).sample(jax.random.key(0), 4, return_params=True)
        >>> t.x_support.shape, p["is_line"].shape
        ((4, 2, 1), (4,))
    """

    amplitude: tuple = (0.1, 5.0)
    phase: tuple = (0.0, math.pi)
    slope: tuple = (-3.0, 3.0)
    intercept: tuple = (-3.0, 3.0)
    x_range: tuple = (-5.0, 5.0)
    line_probability: float = 0.5
    noise: float = 0.0
    num_support: int = 5
    num_query: int = 10

    def __post_init__(self):
        for name in ("amplitude", "phase", "slope", "intercept", "x_range"):
            _check_range(name, getattr(self, name))
        if not 0.0 <= self.line_probability <= 1.0:
            raise ValueError(f"line_probability={self.line_probability}; expected a value in [0, 1]")
        self._check_noise_and_points()

    def sample_params(self, key, n):
        ka, kp, ks, ki, kl = jax.random.split(key, 5)
        return {
            "amplitude": _uniform(ka, (n,), self.amplitude),
            "phase": _uniform(kp, (n,), self.phase),
            "slope": _uniform(ks, (n,), self.slope),
            "intercept": _uniform(ki, (n,), self.intercept),
            "is_line": jax.random.bernoulli(kl, self.line_probability, (n,)).astype(jnp.int32),
        }

    @staticmethod
    def function(p, x):
        """The noiseless function of one task at inputs ``x`` of shape ``(..., 1)``."""
        sine = p["amplitude"] * jnp.sin(x - p["phase"])
        line = p["slope"] * x + p["intercept"]
        return jnp.where(p["is_line"] == 1, line, sine)

    def _points(self, key, p, n, num_points):
        x, add_noise = _inputs_and_noise(key, self.noise, lambda k: _uniform(k, (n, num_points, 1), self.x_range))
        return x, add_noise(jax.vmap(self.function)(p, x), self.noise)


@dataclass(frozen=True)
class LinearGaussian(_Family):
    """``y = xᵀw + ε``, ``w ~ N(μ, τ²I)``, ``x ~ N(0, s²I)``, ``ε ~ N(0, σ²)``.

    The closed-form reference family: with the linear model and a squared loss
    the gradient-step estimator is affine in θ and the posterior over θ is
    Gaussian (docs/references.md, linear-Gaussian tasks).

    Example:
        >>> import jax
        >>> LinearGaussian(dim=3).sample(jax.random.key(0), 2).x_support.shape
        (2, 10, 3)
    """

    dim: int = 2
    mean: float = 0.0
    scale: float = 1.0
    noise: float = 0.1
    x_scale: float = 1.0
    num_support: int = 10
    num_query: int = 10

    def __post_init__(self):
        check_int("dim", self.dim)
        for name in ("scale", "x_scale"):
            check_positive(name, getattr(self, name))
        self._check_noise_and_points()

    def sample_params(self, key, n):
        return {"w": self.mean + self.scale * jax.random.normal(key, (n, self.dim))}

    @staticmethod
    def function(p, x):
        """The noiseless function of one task: ``(..., d) -> (..., 1)``."""
        return (x @ p["w"])[..., None]

    def _points(self, key, p, n, num_points):
        x, add_noise = _inputs_and_noise(
            key, self.noise, lambda k: self.x_scale * jax.random.normal(k, (n, num_points, self.dim))
        )
        return x, add_noise(jax.vmap(self.function)(p, x), self.noise)


@dataclass(frozen=True)
class GaussianBlobs(_Family):
    """N-way K-shot classification: class centres drawn per task.

    Centres ``c_n ~ N(0, centre_scale² I)`` in ``dim`` dimensions; points of
    class ``n`` are ``N(c_n, spread² I)``. Support has ``shots`` points per
    class, query ``query_shots`` per class; labels are integers ``0..N−1``.

    Example:
        >>> import jax
        >>> t = GaussianBlobs(num_classes=5, shots=1).sample(jax.random.key(0), 3)
        >>> t.x_support.shape, t.y_support.shape
        ((3, 5, 2), (3, 5))
    """

    num_classes: int = 5
    shots: int = 1
    query_shots: int = 5
    dim: int = 2
    centre_scale: float = 2.0
    spread: float = 1.0

    regression = False

    def __post_init__(self):
        check_int("num_classes", self.num_classes, minimum=2)
        check_int("shots", self.shots)
        check_int("query_shots", self.query_shots, minimum=0)
        check_int("dim", self.dim)
        for name in ("centre_scale", "spread"):
            check_positive(name, getattr(self, name))

    @property
    def num_support(self):
        return self.num_classes * self.shots

    @property
    def num_query(self):
        return self.num_classes * self.query_shots

    def generated(self, key, num_tasks: int, *, num_support=None, num_query=None) -> GeneratedTasks:
        """A finite set of ``num_tasks`` tasks that is never stored: task ``j`` is generated when taken.

        See :class:`~hbmeta.GeneratedTasks` (memory and cost per step independent of ``num_tasks``).
        """
        return generated_tasks(self, key, num_tasks, num_support=num_support, num_query=num_query)

    def with_points(self, *, num_support=None, num_query=None):
        changes = {}
        for name, value, attr in (("num_support", num_support, "shots"), ("num_query", num_query, "query_shots")):
            if value is None:
                continue
            if value % self.num_classes:
                raise ValueError(f"{name}={value}; expected a multiple of num_classes={self.num_classes}")
            changes[attr] = value // self.num_classes
        return replace(self, **changes)

    def sample_params(self, key, n):
        return {"centres": self.centre_scale * jax.random.normal(key, (n, self.num_classes, self.dim))}

    @staticmethod
    def function(p, x):
        """Class probabilities of the Bayes classifier for one task (equal priors)."""
        d2 = jnp.sum(jnp.square(x[..., None, :] - p["centres"]), axis=-1)
        return jax.nn.softmax(-0.5 * d2, axis=-1)

    def _check_points(self, num_support, num_query):
        for name, value in (("num_support", num_support), ("num_query", num_query)):
            if value % self.num_classes:
                raise ValueError(f"{name}={value}; expected a multiple of num_classes={self.num_classes}")

    def _points(self, key, p, n, num_points):
        # Labels 0..N−1 repeated: support and query each hold every class equally often.
        labels = jnp.tile(jnp.arange(self.num_classes, dtype=jnp.int32), num_points // self.num_classes)
        noise = self.spread * jax.random.normal(key, (n, num_points, self.dim))
        return p["centres"][:, labels] + noise, jnp.broadcast_to(labels, (n, num_points))


@dataclass(frozen=True)
class FixedTasks:
    """A finite set of tasks drawn once; ``sample`` picks meta-batches from it.

    ``tasks`` holds all ``T`` tasks; ``sample(key, n)`` returns ``n`` distinct
    tasks chosen at random (``jit``-able), so MAML meta-training on a finite
    set uses the same code as on a fresh task stream.
    """

    tasks: TaskBatch
    task_params: Any = None
    family: Any = field(default=None, compare=False)

    @property
    def num_tasks(self) -> int:
        return self.tasks.num_tasks

    @property
    def regression(self) -> bool:
        return True if self.family is None else self.family.regression

    def sample(self, key, num_tasks: int, **_):
        if num_tasks > self.num_tasks:
            raise ValueError(f"num_tasks={num_tasks}; expected at most the {self.num_tasks} tasks in the set")
        return _pick(key, self.tasks, int(num_tasks))
