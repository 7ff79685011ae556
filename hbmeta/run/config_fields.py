"""Typed, checked configuration fields and the task-family table of a configuration.

``opt(default, kind, doc, ...)`` declares one key of a configuration section
(a dataclass field whose metadata carries its kind, bounds and description);
``check`` validates a value read from TOML against it. :class:`FamilyConfig`
holds the ``[family]`` table: a family name and its settings, whose allowed
keys and types are those of the family's own dataclass (e.g.
:class:`hbmeta.Sinusoid`), so the family's validation is reused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from hbmeta.tasks.families import GaussianBlobs, LinearGaussian, Sinusoid, SinusoidAndLine

FAMILIES = {"sinusoid": Sinusoid, "sinusoid_line": SinusoidAndLine, "linear": LinearGaussian, "blobs": GaussianBlobs}
_POINT_FIELDS = ("num_support", "num_query", "shots", "query_shots")


def opt(default, kind, doc, *, lo=None, hi=None, strict=False, choices=None, sentinel=None):
    """A configuration field: ``kind`` in int, float, bool, str, ints, strs, pos_or, section."""
    meta = {"kind": kind, "doc": doc, "lo": lo, "hi": hi, "strict": strict, "choices": choices, "sentinel": sentinel}
    return field(default=default, metadata=meta)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bounds_text(meta) -> str:
    lo, hi, strict = meta.get("lo"), meta.get("hi"), meta.get("strict")
    if lo is not None and hi is not None:
        return f" in ({lo}, {hi})" if strict else f" in [{lo}, {hi}]"
    if lo is not None:
        return f" > {lo}" if strict else f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def _in_bounds(v, meta) -> bool:
    lo, hi, strict = meta.get("lo"), meta.get("hi"), meta.get("strict")
    if lo is not None and (v <= lo if strict else v < lo):
        return False
    if hi is not None and (v >= hi if strict else v > hi):
        return False
    return True


def check(v, meta, where, key):
    """Validate one value; return it in its canonical type (ints → float for float keys, lists → tuples)."""
    kind = meta["kind"]

    def fail(expected):
        raise ValueError(f"{where}: {key} = {v!r}; expected {expected}")

    if kind == "bool":
        if not isinstance(v, bool):
            fail("true or false")
        return v
    if kind == "str":
        if not isinstance(v, str):
            fail("a string" + (f", one of {', '.join(meta['choices'])}" if meta.get("choices") else ""))
        if meta.get("choices") and v not in meta["choices"]:
            fail(f"one of {', '.join(repr(c) for c in meta['choices'])}")
        return v
    if kind == "int":
        if not isinstance(v, int) or isinstance(v, bool) or not _in_bounds(v, meta):
            fail("an integer" + _bounds_text(meta))
        return v
    if kind == "float":
        if not _is_number(v) or not math.isfinite(v) or not _in_bounds(v, meta):
            fail("a finite number" + _bounds_text(meta))
        return float(v)
    if kind == "ints":
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            fail("a list of integers, e.g. [40, 40]")
        if not all(_in_bounds(x, meta) for x in v):
            fail("a list of integers, each" + _bounds_text(meta))
        return tuple(v)
    if kind == "strs":
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) and x for x in v):
            fail('a list of non-empty strings, e.g. ["days"]')
        return tuple(v)
    if kind == "pos_or":
        if isinstance(v, str) and v == meta["sentinel"]:
            return v
        if not _is_number(v) or not math.isfinite(v) or v <= 0:
            fail(f"{meta['sentinel']!r} or a number > 0")
        return float(v)
    raise ValueError(f"unknown field kind {kind!r}")  # a programming error, not user input


@dataclass(frozen=True)
class FamilyConfig:
    """The ``[family]`` table: ``name`` and the family's own settings as ``(key, value)`` pairs."""

    name: str = "sinusoid"
    settings: tuple = ()

    @property
    def cls(self):
        return FAMILIES[self.name]

    def build(self, *, num_support=None, num_query=None):
        """The family object, e.g. ``Sinusoid(...)``, with the given point counts."""
        fam = self.cls(**dict(self.settings))
        return fam.with_points(num_support=num_support, num_query=num_query)

    @property
    def regression(self) -> bool:
        return self.cls.regression

    @property
    def points_multiple(self) -> int:
        """Point counts must be multiples of this (blobs: the number of classes)."""
        return dict(self.settings).get("num_classes", 5) if self.name == "blobs" else 1

    @property
    def input_dim(self) -> int:
        return dict(self.settings).get("dim", 2 if self.name == "blobs" else 1) if self.name in ("linear", "blobs") else 1

    @property
    def output_dim(self) -> int:
        return self.points_multiple if self.name == "blobs" else 1

    def to_dict(self) -> dict:
        out = {"name": self.name}
        for k, v in self.settings:
            out[k] = list(v) if isinstance(v, tuple) else v
        return out


def _family_fields(cls):
    return {f.name: f.default for f in fields(cls) if f.name not in _POINT_FIELDS}


def parse_family(raw, where) -> FamilyConfig:
    """Validate the ``[family]`` table: every key and type as in the family's dataclass."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: family is a {type(raw).__name__}; expected a table [family]")
    name = raw.get("name", "sinusoid")
    if name not in FAMILIES:
        raise ValueError(f"{where}: family.name = {name!r}; expected one of {', '.join(repr(n) for n in FAMILIES)}")
    defaults = _family_fields(FAMILIES[name])
    for key in raw:
        if key != "name" and key not in defaults:
            raise ValueError(
                f"{where}: unknown key family.{key} for family {name!r}; allowed keys: name, {', '.join(defaults)}"
            )
    settings = []
    for key, default in defaults.items():
        v = raw.get(key, default)
        full = f"family.{key}"
        if isinstance(default, bool):
            v = check(v, {"kind": "bool"}, where, full)
        elif isinstance(default, int):
            v = check(v, {"kind": "int"}, where, full)
        elif isinstance(default, float):
            v = check(v, {"kind": "float"}, where, full)
        elif isinstance(default, tuple):
            if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v)):
                raise ValueError(f"{where}: {full} = {v!r}; expected a [low, high] pair of numbers")
            v = (float(v[0]), float(v[1]))
        settings.append((key, v))
    fam = FamilyConfig(name, tuple(settings))
    try:
        fam.build()
    except ValueError as e:
        raise ValueError(f"{where}: family ({name}): {e}") from None
    return fam
