"""Argument checks shared by every stage, each raising ``ValueError`` in one wording.

Every message names the argument, what was seen and what was expected, e.g.
``num_chains=0; expected an integer >= 1`` or
``tasks is a dict; expected hbmeta.TaskBatch``. The checks run on concrete
Python values before anything is traced or compiled. This module imports only
the standard library, so the configuration and the command line can use it without loading
JAX; checks of JAX values (PRNG keys, pytrees) are in :mod:`hbmeta.base.jax_checks`.

Example:
    >>> from hbmeta.base.validate import check_int, check_choice
    >>> check_int("num_chains", 4)
    4
    >>> check_choice("guide", "map", ("mean_field", "map"))
    'map'
    >>> check_int("num_chains", 0)
    Traceback (most recent call last):
    ...
    ValueError: num_chains=0; expected an integer >= 1
"""

from __future__ import annotations

import math
import numbers


def _is_int(value) -> bool:
    """An int or a NumPy integer (both are ``numbers.Integral``); never a bool."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def _is_integral(value) -> bool:
    """An int, a NumPy integer or an integral float (``5.0``); never a bool or a string."""
    if isinstance(value, bool):
        return False
    if _is_int(value):
        return True
    return isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()


def check_int(name: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an int, or ``ValueError`` unless it is an integer in ``[minimum, maximum]``."""
    if not _is_integral(value) or value < minimum or (maximum is not None and value > maximum):
        bound = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
        raise ValueError(f"{name}={value!r}; expected {bound}")
    return int(value)


def check_positive_int(name: str, value) -> int:
    """``value`` as an int, or ``ValueError`` unless it is a positive integer (integral floats are accepted)."""
    if not _is_integral(value) or value < 1:
        raise ValueError(f"{name}={value!r}; expected a positive integer")
    return int(value)


def check_positive(name: str, value, *, what: str = "a positive number") -> float:
    """``value`` as a float, or ``ValueError`` unless it is a finite number > 0 (a 0-d array is accepted)."""
    try:
        ok = (not isinstance(value, bool) and getattr(value, "ndim", 0) == 0
              and math.isfinite(float(value)) and float(value) > 0)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name}={value!r}; expected {what}")
    return float(value)


def check_choice(name: str, value, choices) -> str:
    """``value`` unless it is not one of ``choices`` (then ``ValueError`` listing them)."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not known; expected one of {list(choices)}")
    return value


def check_type(name: str, value, cls, *, hint: str = "") -> None:
    """``ValueError`` ``"<name> is a <type>; expected hbmeta.<cls>"`` unless ``value`` is a ``cls``.

    ``cls`` may be a tuple of classes; ``hint`` is appended to the message (e.g. where to get one).
    """
    if not isinstance(value, cls):
        classes = cls if isinstance(cls, tuple) else (cls,)
        expected = " or ".join(f"hbmeta.{c.__name__}" for c in classes)
        raise ValueError(f"{name} is a {type(value).__name__}; expected {expected}{hint}")
