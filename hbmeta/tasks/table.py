"""Few-shot tasks from a long-format table: one task per group, support and query rows per task.

Users' grouped data (measurements per subject, per county, per sensor) usually
sit in a long table: one row per observation, a column naming the group, some
input columns and one target column. :func:`tasks_from_table` turns such a
table (a pandas DataFrame, a ``.csv`` or a ``.parquet`` file) into a
:class:`~hbmeta.TaskBatch`:

- one task per value of the ``task`` column (groups sorted by value);
- a support/query split per task: ``"random"`` (``num_support = K`` rows drawn
  with a seed), ``"order"`` (the first ``K`` rows, optionally after sorting
  by ``order_by``: e.g. a subject's first days) or the name of a boolean
  column (``True`` = support);
- ragged tasks padded to the largest one, with ``support_mask`` and
  ``query_mask`` marking the real rows;
- inputs and target standardised, ``z = (v − mean) / sd``, with means and
  standard deviations fitted on the training table only and kept in a
  :class:`Standardization` record, so that held-out tasks, new groups and
  predictions use the same transformation and predictions come back in the
  original units: ``y = mean_y + sd_y · z`` and ``sd(y) = sd_y · sd(z)``;
- categorical input columns (listed in ``categorical`` or of pandas dtype
  ``category``) one-hot encoded, one 0/1 feature per level seen in training
  (not standardised).

pandas is an optional dependency (``pip install "hbmeta[data]"``; Parquet
files also need pyarrow); it is imported only when a table is read.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from hbmeta.tasks.batch import TaskBatch, make_tasks
from hbmeta.tasks.standardize import Standardization, _columns, _numeric, _pandas, _require, read_table

__all__ = ["SPLITS", "Standardization", "TableTasks", "read_table", "split_groups", "tasks_from_table", "tasks_info"]

SPLITS = ("random", "order")


class TableTasks(NamedTuple):
    """What :func:`tasks_from_table` returns.

    - ``tasks``: the :class:`~hbmeta.TaskBatch` (standardised; masks mark real rows).
    - ``groups``: ``(T,)`` the task column's value of each task, in task order.
    - ``scaler``: the :class:`Standardization` used (fitted here, or the one given).
    - ``support_rows``, ``query_rows``: ``(T, K)`` and ``(T, M)`` positions of each
      point's row in the table (``−1`` for padding), to map predictions back.
    - ``dropped``: groups left out for having too few rows (``small_tasks="drop"``).
    """

    tasks: TaskBatch
    groups: np.ndarray
    scaler: Standardization
    support_rows: np.ndarray
    query_rows: np.ndarray
    dropped: tuple


def _pad(rows_per_task, width):
    out = np.full((len(rows_per_task), width), -1, dtype=np.int64)
    for j, rows in enumerate(rows_per_task):
        out[j, : len(rows)] = rows
    return out


def _gather(values, index):
    """``values[index]`` with zeros where ``index == −1``."""
    out = values[np.maximum(index, 0)]
    out[index < 0] = 0
    return out


def tasks_from_table(
    table,
    *,
    task: str,
    x,
    y: str,
    split: str = "random",
    num_support: int | None = None,
    num_query: int | None = None,
    seed: int = 0,
    order_by: str | None = None,
    categorical=(),
    standardize: bool = True,
    scaler: Standardization | None = None,
    small_tasks: str = "error",
) -> TableTasks:
    """Few-shot regression tasks from a long-format table: one task per value of the ``task`` column.

    Args:
        table: a pandas DataFrame, a dict of columns, or a ``.csv``/``.parquet`` path.
        task: the column whose values name the groups (one task each).
        x: the input column(s); numeric, or categorical (one-hot).
        y: the (numeric) target column.
        split: ``"random"`` (``num_support`` rows per task drawn with ``seed``),
            ``"order"`` (the first ``num_support`` rows of each task, in table
            order or sorted by ``order_by``), or the name of a boolean (or 0/1)
            column, ``True`` for support rows.
        num_support: K, support rows per task (``"random"``/``"order"``).
        num_query: at most this many query rows per task (default: all the others).
        seed: the seed of the random split.
        order_by: a column to sort each task's rows by before an ``"order"`` split.
        categorical: input columns to one-hot encode (columns of pandas dtype
            ``category`` are encoded too).
        standardize: standardise numeric inputs and the target (when fitting).
        scaler: a :class:`Standardization` fitted on the training table, to
            apply to held-out or new groups; default: fit one on ``table``.
        small_tasks: ``"error"`` (default) or ``"drop"`` for tasks with fewer
            than ``num_support + 1`` rows (K support rows and at least one query row).

    Returns:
        :class:`TableTasks` (the tasks, the group names, the standardisation and the row positions).

    Raises:
        ValueError: one line naming the column or the task: a missing column,
            non-numeric values, NaN, an unknown split, a task with too few rows.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"subject": [1] * 4 + [2] * 5, "day": list(range(4)) + list(range(5)),
        ...                    "rt": [250., 260, 270, 280, 300, 305, 320, 330, 350]})
        >>> data = tasks_from_table(df, task="subject", x=["day"], y="rt", split="order", num_support=2)
        >>> data.tasks.x_support.shape, data.tasks.x_query.shape, data.tasks.query_mask.sum(axis=1).tolist()
        ((2, 2, 1), (2, 3, 1), [2, 3])
        >>> data.groups.tolist(), round(float(data.scaler.y_to_original(data.tasks.y_support[1, 0, 0])), 3)
        ([1, 2], 300.0)
    """
    pd = _pandas()
    df = read_table(table)
    if not isinstance(task, str):
        raise ValueError(f"task={task!r}; expected the name of the column that names the groups")
    _require(df, task, "task")
    x_cols = _columns("x", x)
    if not isinstance(y, str):
        raise ValueError(f"y={y!r}; expected the name of the target column")
    for c in x_cols:
        _require(df, c, "input x")
    _require(df, y, "target y")
    if task in x_cols or y in x_cols or task == y:
        raise ValueError(f"task={task!r}, x={list(x_cols)!r}, y={y!r}; expected three different roles for the columns")
    if small_tasks not in ("error", "drop"):
        raise ValueError(f"small_tasks={small_tasks!r}; expected 'error' or 'drop'")
    if not isinstance(split, str):
        raise ValueError(f"split={split!r}; expected 'random', 'order' or the name of a boolean column")
    by_column = split not in SPLITS
    if by_column:
        if split not in df.columns:
            raise ValueError(f"split={split!r} is neither 'random' nor 'order' nor a column of the table; "
                             f"its columns are {list(map(str, df.columns))}")
        flags = df[split]
        ok = flags.dtype == bool or (pd.api.types.is_numeric_dtype(flags) and flags.isin([0, 1]).all())
        if not ok:
            raise ValueError(f"column {split!r} (split) has values {sorted(map(str, set(flags)))[:5]}; "
                             "expected booleans or 0/1 (True/1 = support row)")
        flags = flags.to_numpy().astype(bool)
    else:
        if num_support is None or isinstance(num_support, bool) or int(num_support) != num_support or num_support < 1:
            raise ValueError(f"num_support={num_support!r}; expected a positive integer K for split={split!r}")
        num_support = int(num_support)
    if num_query is not None and (isinstance(num_query, bool) or int(num_query) != num_query or num_query < 1):
        raise ValueError(f"num_query={num_query!r}; expected a positive integer or None (all other rows)")
    if order_by is not None:
        _require(df, order_by, "order_by")
    if df[task].isna().any():
        row = int(np.flatnonzero(df[task].isna().to_numpy())[0])
        raise ValueError(f"column {task!r} (task) has a missing value in row {row}; expected a group in every row")
    if len(df) == 0:
        raise ValueError("the table has no rows; expected at least one task")

    if scaler is None:
        scaler = Standardization.fit(df, x=x_cols, y=y, categorical=categorical, standardize=standardize, task=task)
    elif not isinstance(scaler, Standardization):
        raise ValueError(f"scaler is a {type(scaler).__name__}; expected hbmeta.Standardization or None")
    elif scaler.x_columns != x_cols or scaler.y_column != y:
        raise ValueError(f"scaler was fitted for x={list(scaler.x_columns)}, y={scaler.y_column!r}; "
                         f"expected the same columns as x={list(x_cols)}, y={y!r}")
    features = scaler.encode(df, task=task)
    targets = scaler.encode_y(df, task=task)

    try:
        codes, groups = pd.factorize(df[task], sort=True)
    except TypeError:  # values that cannot be ordered: keep the order of appearance
        codes, groups = pd.factorize(df[task], sort=False)
    groups = np.asarray(groups)
    order = np.arange(len(df))
    if order_by is not None:
        order = np.argsort(_numeric(df, order_by, task), kind="stable")
    rng = np.random.default_rng(seed)
    supports, queries, kept, dropped = [], [], [], []
    for j, name in enumerate(groups):
        rows = order[codes[order] == j]
        if by_column:
            sup, qry = rows[flags[rows]], rows[~flags[rows]]
            if len(sup) == 0 or len(qry) == 0:
                what = "support" if len(sup) == 0 else "query"
                raise ValueError(f"task {name!r} (column {task!r}) has no {what} rows in column {split!r}; "
                                 "expected at least one support and one query row per task")
        else:
            if len(rows) < num_support + 1:
                if small_tasks == "drop":
                    dropped.append(name)
                    continue
                raise ValueError(f"task {name!r} (column {task!r}) has {len(rows)} rows; expected at least "
                                 f"num_support + 1 = {num_support + 1} (K support rows and one query row), "
                                 "or small_tasks='drop'")
            if split == "random":
                rows = rows[rng.permutation(len(rows))]
            sup, qry = rows[:num_support], rows[num_support:]
        if num_query is not None:
            qry = qry[:num_query]
        supports.append(sup)
        queries.append(qry)
        kept.append(j)
    if not kept:
        raise ValueError(f"every task has fewer than num_support + 1 = {num_support + 1} rows; expected at least one "
                         "task with enough rows")
    support_rows = _pad(supports, max(len(s) for s in supports))
    query_rows = _pad(queries, max(len(q) for q in queries))
    tasks = make_tasks(
        _gather(features, support_rows), _gather(targets, support_rows)[..., None],
        _gather(features, query_rows), _gather(targets, query_rows)[..., None],
        support_mask=support_rows >= 0, query_mask=query_rows >= 0,
    )
    return TableTasks(tasks, groups[np.asarray(kept)], scaler, support_rows, query_rows, tuple(dropped))


def split_groups(table, *, task: str, num_test: int, seed: int = 0):
    """``(train_table, test_table)``: a seeded random split of the groups (whole groups go to one side).

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"g": [1, 1, 2, 2, 3, 3], "v": range(6)})
        >>> train, test = split_groups(df, task="g", num_test=1, seed=0)
        >>> sorted(set(train.g) | set(test.g)), len(set(test.g))
        ([1, 2, 3], 1)
    """
    df = read_table(table)
    _require(df, task, "task")
    groups = np.asarray(sorted(set(df[task].tolist()), key=str))
    if isinstance(num_test, bool) or int(num_test) != num_test or not 1 <= num_test < len(groups):
        raise ValueError(f"num_test={num_test!r}; expected an integer in [1, {len(groups) - 1}] "
                         f"(the table has {len(groups)} groups in column {task!r})")
    test = set(groups[np.random.default_rng(seed).permutation(len(groups))[: int(num_test)]].tolist())
    is_test = df[task].isin(test).to_numpy()
    return df[~is_test].reset_index(drop=True), df[is_test].reset_index(drop=True)


def tasks_info(data: TableTasks) -> dict[str, Any]:
    """Counts of a :class:`TableTasks` for reports: tasks, support and query rows, dropped groups."""
    t = data.tasks
    return {
        "num_tasks": int(t.num_tasks),
        "support_rows": int(np.asarray(t.support_mask).sum()),
        "query_rows": int(np.asarray(t.query_mask).sum()),
        "dropped": [str(g) for g in data.dropped],
    }
