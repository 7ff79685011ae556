"""A small TOML writer (the standard library reads TOML but does not write it).

It writes what hbmeta's configuration needs: tables of scalars (bool, int,
float, str) and flat lists of scalars, nested tables as ``[a.b]`` headers,
and a comment after any key that has one. ``tomllib.loads(dumps(d))``
gives ``d`` back exactly (floats are written with ``repr``, which round-trips).
"""

from __future__ import annotations

import json
import math
import re

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else _string(name)


def _string(s: str) -> str:
    # JSON's escapes (\" \\ \n \t \u-escapes for other control characters) are valid TOML.
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def value(v) -> str:
    """The TOML text of one scalar or flat list.

    Example:
        >>> value([1, 2.5, "a"]), value(True), value(float("inf"))
        ('[1, 2.5, "a"]', 'true', 'inf')
    """
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    raise ValueError(f"cannot write a {type(v).__name__} as TOML; expected bool, int, float, str or a list of them")


def dumps(table: dict, *, comments: dict | None = None, header: str = "") -> str:
    """TOML text of a nested dict: scalars first, then one ``[section]`` per sub-dict.

    ``comments`` maps dotted key paths (``"inference.method"``) or table paths
    (``"inference"``) to a comment written after the key or above the
    table's header; ``header`` is written at the top as
    comment lines.

    Example:
        >>> import tomllib
        >>> d = {"run": {"seed": 0}, "inference": {"method": "nuts", "nuts": {"num_chains": 2}}}
        >>> tomllib.loads(dumps(d)) == d
        True
    """
    comments = comments or {}
    lines = [f"# {line}".rstrip() for line in header.splitlines()]

    def emit(tab: dict, path: tuple):
        scalars = {k: v for k, v in tab.items() if not isinstance(v, dict)}
        if path and (scalars or not any(isinstance(v, dict) for v in tab.values())):
            if lines:
                lines.append("")
            note = comments.get(".".join(path))
            if note:
                lines.append(f"# {note}")
            lines.append("[" + ".".join(_key(p) for p in path) + "]")
        for k, v in scalars.items():
            note = comments.get(".".join(path + (k,)))
            lines.append(f"{_key(k)} = {value(v)}" + (f"  # {note}" if note else ""))
        for k, v in tab.items():
            if isinstance(v, dict):
                emit(v, path + (k,))

    emit(table, ())
    return "\n".join(lines) + "\n"
