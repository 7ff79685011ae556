"""Memory bounds: a stage that allocates in proportion to draws × tasks × points checks its estimate first.

The limit is the memory the system has available now (``MemAvailable`` of
``/proc/meminfo`` on Linux; ``sysconf`` elsewhere), or the cap in the
environment variable ``HBMETA_MEMORY_CAP`` (bytes, or a number with ``K``,
``M``, ``G`` or ``T``: ``HBMETA_MEMORY_CAP=8G``) when that is lower. A stage
whose estimate exceeds it raises :class:`MemoryLimitError` before any work,
with the estimate and the setting to lower.

Example:
    >>> import os
    >>> os.environ["HBMETA_MEMORY_CAP"] = "1M"
    >>> try:
    ...     check_memory(8 * 2**20, what="the predictive (10 draws × 5 tasks)", lower="the number of draws")
    ... except MemoryLimitError as err:
    ...     print(err)
    the predictive (10 draws × 5 tasks) needs about 8.4 MB of memory; the limit is 1.0 MB (HBMETA_MEMORY_CAP); lower the number of draws
    >>> del os.environ["HBMETA_MEMORY_CAP"]
"""

from __future__ import annotations

import os
import re

ENV = "HBMETA_MEMORY_CAP"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class MemoryLimitError(ValueError):
    """A stage would need more memory than is available (or than ``HBMETA_MEMORY_CAP`` allows)."""


def _format(nbytes: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} bytes"


def parse_size(text: str, *, name: str = ENV) -> int:
    """Bytes from ``"123"``, ``"500M"``, ``"8G"``, ``"1.5T"`` (binary units); ``ValueError`` naming ``name`` if not."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)i?B?\s*", str(text), re.I)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{name}={text!r}; expected a positive size in bytes, e.g. 500M or 8G")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def available_bytes() -> int | None:
    """The memory the system can give now (Linux ``MemAvailable``), or None when it cannot be told."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_limit() -> tuple[int | None, str]:
    """``(bytes, where it comes from)``: the lower of the available memory and ``HBMETA_MEMORY_CAP``."""
    cap = os.environ.get(ENV)
    avail = available_bytes()
    if cap is not None:
        cap_bytes = parse_size(cap)
        if avail is None or cap_bytes <= avail:
            return cap_bytes, ENV
    return avail, "available memory"


def check_memory(nbytes: float, *, what: str, lower: str) -> None:
    """Raise :class:`MemoryLimitError` if ``nbytes`` exceed :func:`memory_limit` (naming ``what`` and ``lower``)."""
    limit, source = memory_limit()
    if limit is not None and nbytes > limit:
        raise MemoryLimitError(f"{what} needs about {_format(nbytes)} of memory; the limit is {_format(limit)} "
                               f"({source}); lower {lower}")
