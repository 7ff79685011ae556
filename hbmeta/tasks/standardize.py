"""Reading tables and standardising their columns: the record that maps a table to features and back.

:class:`Standardization` is fitted on the training rows of a long-format table
(numeric columns: ``z = (v − mean) / sd``; categorical columns: one 0/1 feature
per level seen in training; the target: ``(y − mean_y) / sd_y``) and applied
unchanged to held-out groups, new groups and predictions, which it maps back
to the original units. :func:`read_table` reads a DataFrame, a dict of columns,
a ``.csv`` or a ``.parquet`` file. pandas is an optional dependency
(``pip install "hbmeta[data]"``; Parquet also needs pyarrow).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


def _pandas():
    # pandas is an optional extra (hbmeta[data]); imported here so that `import hbmeta` does not need it.
    try:
        import pandas as pd  # optional extra: imported only when a table is read
    except ImportError:  # pragma: no cover - pandas is present wherever the tests run
        raise ImportError('reading tables needs pandas; install it with pip install "hbmeta[data]"') from None
    return pd


def read_table(source):
    """A pandas DataFrame from a DataFrame, a dict of columns, or a ``.csv``/``.parquet`` path.

    Raises:
        ValueError: for a missing file or an unknown extension.
    """
    pd = _pandas()
    if isinstance(source, pd.DataFrame):
        return source
    if isinstance(source, dict):
        return pd.DataFrame(source)
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"table is a {type(source).__name__}; expected a pandas DataFrame or a .csv/.parquet path")
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise ValueError(f"table file {path!r} does not exist; expected a .csv or .parquet file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        return pd.read_csv(path)
    if ext in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except ImportError as err:
            raise ImportError(f'reading {path} needs pyarrow; install it with pip install "hbmeta[data]" ({err})') \
                from None
    raise ValueError(f"table file {path!r} has extension {ext!r}; expected .csv or .parquet")


def _columns(name, value):
    cols = [value] if isinstance(value, str) else list(value)
    if not cols or not all(isinstance(c, str) for c in cols):
        raise ValueError(f"{name}={value!r}; expected a column name or a non-empty list of column names")
    return tuple(cols)


def _require(df, column, role):
    if column not in df.columns:
        raise ValueError(f"column {column!r} ({role}) is not in the table; "
                         f"its columns are {list(map(str, df.columns))}")


def _numeric(df, column, task=None, *, input_column=False):
    """The column as float64; ``ValueError`` naming the column (and task) for non-numbers or NaN."""
    pd = _pandas()
    s = df[column]
    if s.dtype == bool:
        s = s.astype(np.float64)
    if not pd.api.types.is_numeric_dtype(s):
        values = pd.to_numeric(s, errors="coerce")
        bad = values.isna() & s.notna()
        row = int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else int(np.flatnonzero(values.isna().to_numpy())[0])
        raise ValueError(
            f"column {column!r} has non-numeric values (e.g. {s.iloc[row]!r} in row {row}); expected numbers"
            + (", or list the column in categorical=[...]" if input_column else "")
        )
    v = s.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(v)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        where = "" if task is None else f" in task {df[task].iloc[row]!r}"
        raise ValueError(f"column {column!r} has NaN or infinite values{where} (row {row}); expected finite numbers")
    return v


@dataclass(frozen=True)
class Standardization:
    """How a table's columns become standardised features and targets, fitted on training rows.

    A numeric input column ``c`` becomes ``(c − mean_c) / sd_c``; a categorical
    column becomes one 0/1 feature per level seen in training (``"col=level"``);
    the target becomes ``(y − y_mean) / y_scale``. Standard deviations of
    zero (a constant column) are replaced by 1. ``standardize=False`` at
    fitting keeps means 0 and scales 1 (one-hot encoding still applies).

    Fields: ``x_columns`` (the table's input columns), ``features`` (encoded
    feature names), ``categories`` (``(column, levels)`` pairs),
    ``x_mean``/``x_scale`` (per feature), ``y_column``, ``y_mean``, ``y_scale``.
    It is plain data: :meth:`to_dict` and :meth:`from_dict` store it as JSON.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"g": [1, 1, 2, 2], "x": [0.0, 2.0, 4.0, 6.0], "y": [1.0, 3.0, 5.0, 7.0]})
        >>> s = Standardization.fit(df, x=["x"], y="y")
        >>> s.x_mean, s.y_scale
        ((3.0,), 2.23606797749979)
        >>> float(s.y_to_original(s.encode_y(df))[2])
        5.0
    """

    x_columns: tuple
    features: tuple
    categories: tuple
    x_mean: tuple
    x_scale: tuple
    y_column: str
    y_mean: float
    y_scale: float

    @classmethod
    def fit(cls, table, *, x, y: str, categorical=(), standardize: bool = True, task=None) -> Standardization:
        """Fit on ``table`` (the training rows): levels of categorical columns, means and standard deviations.

        ``task`` (a column name) only makes error messages name the task of a bad row.
        """
        pd = _pandas()
        df = read_table(table)
        x_cols = _columns("x", x)
        categorical = set(_columns("categorical", categorical)) if categorical else set()
        for c in categorical:
            if c not in x_cols:
                raise ValueError(f"categorical={sorted(categorical)!r}: {c!r} is not one of the x columns "
                                 f"{list(x_cols)}")
        for c in (*x_cols, y):
            _require(df, c, "target y" if c == y else "input x")
        features, means, scales, cats = [], [], [], []
        for c in x_cols:
            if c in categorical or isinstance(df[c].dtype, pd.CategoricalDtype):
                if df[c].isna().any():
                    row = int(np.flatnonzero(df[c].isna().to_numpy())[0])
                    raise ValueError(f"column {c!r} has missing values (row {row}); expected a level in every row")
                levels = tuple(sorted({str(v) for v in df[c]}))
                cats.append((c, levels))
                features += [f"{c}={lv}" for lv in levels]
                means += [0.0] * len(levels)
                scales += [1.0] * len(levels)
                continue
            v = _numeric(df, c, task, input_column=True)
            features.append(c)
            m, s = (float(v.mean()), float(v.std())) if standardize else (0.0, 1.0)
            means.append(m)
            scales.append(s if s > 0 else 1.0)
        yv = _numeric(df, y, task)
        ym, ys = (float(yv.mean()), float(yv.std())) if standardize else (0.0, 1.0)
        return cls(x_cols, tuple(features), tuple(cats), tuple(means), tuple(scales), y, ym, ys if ys > 0 else 1.0)

    @property
    def num_features(self) -> int:
        """d, the number of encoded input features."""
        return len(self.features)

    def encode(self, table, *, task=None) -> np.ndarray:
        """Standardised, one-hot-encoded inputs ``(rows, d)`` (float32) of ``table``.

        A categorical level not seen in training raises ``ValueError`` naming the column and the level.
        """
        df = read_table(table)
        cats = dict(self.categories)
        parts = []
        for c in self.x_columns:
            _require(df, c, "input x")
            if c in cats:
                values = df[c].astype(str).to_numpy()
                unknown = sorted(set(values) - set(cats[c]))
                if unknown:
                    raise ValueError(f"column {c!r} has level(s) {unknown[:5]} not seen in the training table; "
                                     f"expected one of {list(cats[c])[:10]}")
                parts.append((values[:, None] == np.asarray(cats[c])[None, :]).astype(np.float64))
            else:
                parts.append(_numeric(df, c, task, input_column=True)[:, None])
        raw = np.concatenate(parts, axis=1)
        return ((raw - np.asarray(self.x_mean)) / np.asarray(self.x_scale)).astype(np.float32)

    def encode_y(self, table, *, task=None) -> np.ndarray:
        """The standardised target ``(rows,)`` (float32) of ``table``."""
        df = read_table(table)
        _require(df, self.y_column, "target y")
        return ((_numeric(df, self.y_column, task) - self.y_mean) / self.y_scale).astype(np.float32)

    def y_to_original(self, z):
        """Standardised targets (means, interval ends, draws) back in the original units: ``y_mean + y_scale · z``."""
        return self.y_mean + self.y_scale * np.asarray(z)

    def sd_to_original(self, sd):
        """A standard deviation in standardised units back in the original units: ``y_scale · sd``."""
        return self.y_scale * np.asarray(sd)

    def metrics_to_original(self, metrics: dict) -> dict:
        """Regression metrics of standardised targets in the original units.

        ``mse`` scales by ``y_scale²``; ``nll`` (a negative log density per
        point) gains ``log y_scale``; coverage and calibration are unchanged.
        """
        out = dict(metrics)
        if "mse" in out:
            out["mse"] = float(out["mse"]) * self.y_scale**2
        if "nll" in out:
            out["nll"] = float(out["nll"]) + float(np.log(self.y_scale))
        return out

    def to_dict(self) -> dict:
        """Plain JSON-able data (lists and numbers)."""
        return {
            "x_columns": list(self.x_columns),
            "features": list(self.features),
            "categories": [[c, list(levels)] for c, levels in self.categories],
            "x_mean": list(self.x_mean),
            "x_scale": list(self.x_scale),
            "y_column": self.y_column,
            "y_mean": self.y_mean,
            "y_scale": self.y_scale,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Standardization:
        """The record written by :meth:`to_dict`."""
        try:
            return cls(
                tuple(data["x_columns"]), tuple(data["features"]),
                tuple((c, tuple(levels)) for c, levels in data["categories"]),
                tuple(float(v) for v in data["x_mean"]), tuple(float(v) for v in data["x_scale"]),
                str(data["y_column"]), float(data["y_mean"]), float(data["y_scale"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"standardisation record is incomplete or malformed ({err!r}); expected the keys of "
                             "Standardization.to_dict()") from None
