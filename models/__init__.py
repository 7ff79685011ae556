"""The ready-made model files that ``hbmeta run NAME`` runs, one TOML file each.

This package imports only the standard library, so ``hbmeta models`` lists
them without loading JAX.

Example:
    >>> from hbmeta import models
    >>> "sinusoid" in models.names()
    True
"""

from __future__ import annotations

import tomllib
from importlib import resources


def names() -> list[str]:
    """The names of the shipped model files, sorted."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def read(name: str) -> str:
    """The TOML text of the model file ``name`` (one of :func:`names`)."""
    return resources.files(__name__).joinpath(f"{name}.toml").read_text("utf-8")


def description(name: str) -> str:
    """The ``[model] description`` line of the model file ``name``."""
    return tomllib.loads(read(name)).get("model", {}).get("description", "")
