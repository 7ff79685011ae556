"""Reading a user's own data for the command line: support sets, query inputs and task files.

- A support file (``.csv`` or ``.npz``) holds one task's support set: ``d``
  input columns then one target column (a real value for regression, an
  integer class label for classification). A ``.csv`` may start with a header
  line; an ``.npz`` has arrays ``x`` ``(K, d)`` and ``y`` ``(K,)``.
- A query file holds inputs only: ``d`` columns (``.csv``) or ``x`` (``.npz``).
- A tasks file (``.npz``, for ``hbmeta fit --tasks``) has the four arrays of
  :func:`~hbmeta.make_tasks` (``x_support``, ``y_support``, ``x_query``,
  ``y_query``) and optionally ``support_mask`` and ``query_mask``.

Every problem is a ``ValueError`` naming the file and what was expected.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from hbmeta.base.files import BadFileError, atomic_write, check_numeric, check_readable, read_npz
from hbmeta.tasks.batch import make_tasks


def _read_csv(path) -> np.ndarray:
    path = check_readable(path, "CSV file")
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            _csv_rows(path, fh, rows)
    except UnicodeDecodeError as e:
        raise BadFileError(path, f"is not UTF-8 text (byte {e.start}): a binary or damaged file; expected "
                                 "comma-separated numbers") from None
    except csv.Error as e:
        raise BadFileError(path, f"is not a readable CSV file ({e}); expected comma-separated numbers") from None
    if not rows:
        raise BadFileError(path, "has no rows of numbers; expected one point per line, comma-separated")
    width = len(rows[0][1])
    for line_no, values in rows:
        if len(values) != width:
            raise BadFileError(path, f"line {line_no} has {len(values)} columns; expected {width} like the first "
                                     "row (a cut-off or damaged line?)")
    return np.asarray([v for _, v in rows], dtype=np.float64)


def _csv_rows(path, fh, rows) -> None:
    for line_no, row in enumerate(csv.reader(fh), start=1):
        cells = [c.strip() for c in row]
        if not cells or all(c == "" for c in cells) or cells[0].startswith("#"):
            continue
        try:
            rows.append((line_no, [float(c) for c in cells]))
        except ValueError:
            if rows:
                raise BadFileError(path, f"line {line_no} has a value that is not a number: "
                                         f"{', '.join(cells)[:80]!r}") from None
            continue  # a header line


def _read_npz(path, names) -> dict:
    data = read_npz(path, names=names)
    for name, array in data.items():
        check_numeric(path, name, array)
    return data


def _check_file(path, what):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{what} file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".csv", ".npz"):
        raise ValueError(f"{what} file {path!r} has extension {ext!r}; expected .csv or .npz")
    return path, ext


def read_support(path, *, input_dim: int, regression: bool, num_classes: int | None = None):
    """``(x (K, d), y)`` of one support set; ``y`` is ``(K, 1)`` floats or ``(K,)`` int labels."""
    path, ext = _check_file(path, "support")
    what = f"{input_dim} input column{'s' if input_dim != 1 else ''} then 1 {'target' if regression else 'label'} column"
    if ext == ".csv":
        table = _read_csv(path)
        if table.shape[1] != input_dim + 1:
            raise ValueError(f"support file {path} has {table.shape[1]} columns; expected {input_dim + 1}: {what}")
        x, y = table[:, :input_dim], table[:, input_dim]
    else:
        data = _read_npz(path, ("x", "y"))
        x, y = data["x"], data["y"]
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != input_dim:
            raise ValueError(f"support file {path}: x has shape {x.shape}; expected (points, {input_dim})")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.shape != (x.shape[0],):
            raise ValueError(f"support file {path}: y has shape {y.shape}; expected ({x.shape[0]},), one per point")
    if not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)):
        raise ValueError(f"support file {path} has NaN or infinite values; expected finite numbers")
    if regression:
        return x.astype(np.float32), y.astype(np.float32)[:, None]
    if not np.all(y == np.round(y)) or y.min() < 0 or (num_classes is not None and y.max() >= num_classes):
        raise ValueError(f"support file {path} has labels {sorted(set(y.tolist()))[:8]}; "
                         f"expected integer class labels 0..{(num_classes or 1) - 1}")
    return x.astype(np.float32), y.astype(np.int32)


def read_query(path, *, input_dim: int) -> np.ndarray:
    """Query inputs ``(M, d)`` from a ``.csv`` (``d`` columns) or an ``.npz`` (array ``x``)."""
    path, ext = _check_file(path, "query")
    x = _read_csv(path) if ext == ".csv" else _read_npz(path, ("x",))["x"]
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] != input_dim:
        raise ValueError(f"query file {path}: inputs of shape {x.shape}; expected (points, {input_dim}), "
                         f"{input_dim} input column(s)")
    return x.astype(np.float32)


def read_tasks(path, *, input_dim: int):
    """A :class:`~hbmeta.TaskBatch` from an ``.npz`` with the arrays of :func:`~hbmeta.make_tasks`."""
    path, ext = _check_file(path, "tasks")
    if ext != ".npz":
        raise ValueError(f"tasks file {path!r}; expected an .npz with x_support, y_support, x_query, y_query")
    data = _read_npz(path, ("x_support", "y_support", "x_query", "y_query"))
    unknown = sorted(set(data) - {"x_support", "y_support", "x_query", "y_query", "support_mask", "query_mask"})
    if unknown:
        raise ValueError(f"tasks file {path} has unknown arrays {unknown}; expected x_support, y_support, "
                         "x_query, y_query and optionally support_mask, query_mask")
    try:
        tasks = make_tasks(data["x_support"], data["y_support"], data["x_query"], data["y_query"],
                           support_mask=data.get("support_mask"), query_mask=data.get("query_mask"))
    except ValueError as e:
        raise ValueError(f"tasks file {path}: {e}") from None
    if tasks.x_support.shape[-1] != input_dim:
        raise ValueError(f"tasks file {path}: x_support has {tasks.x_support.shape[-1]} input features; "
                         f"expected {input_dim}, the model's input size")
    return tasks


def write_csv(path_or_stream, header, rows) -> None:
    """Write a header and rows of numbers as CSV to a path (atomically) or an open stream."""
    def emit(fh):
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        for row in rows:
            w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])

    if hasattr(path_or_stream, "write"):
        emit(path_or_stream)
        return

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            emit(fh)

    atomic_write(path_or_stream, write)
