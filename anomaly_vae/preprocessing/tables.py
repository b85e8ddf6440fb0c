"""Tables: the fitted schema of a table (numeric scaling, categorical one-hot, missing values).

The rules are listed in the package docstring (``anomaly_vae.preprocessing``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import pandas as pd

from ..exceptions import InputError
from . import marginals as _marginals

log = logging.getLogger(__name__)

__all__ = ["TablePreprocessor", "as_table", "is_image_input", "OTHER", "MISSING", "Z_MAX"]

OTHER = "<other>"
MISSING = "<missing>"
Z_MAX = 1e6  # largest |standardised value| the network is given; see the package docstring


def as_table(X: Any, columns: list[str] | None = None) -> pd.DataFrame:
    """A DataFrame view of a DataFrame or a 2-D array (columns ``x0, x1, ...`` or ``columns``)."""
    if isinstance(X, pd.DataFrame):
        return X
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise InputError(f"expected a 2-D table (rows x columns), got an array of shape {arr.shape}")
    if np.iscomplexobj(arr):
        raise InputError("Complex data not supported: the table holds complex numbers")
    names = columns if columns is not None else [f"x{i}" for i in range(arr.shape[1])]
    df = pd.DataFrame(arr, columns=names)
    return df.infer_objects() if arr.dtype == object else df


def is_image_input(X: Any) -> bool:
    if isinstance(X, pd.DataFrame):
        return False
    return (X.ndim if isinstance(X, np.ndarray) else np.asarray(X).ndim) >= 3


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)


# decimals that pandas before 3.1 parses a unit in the last place off (about one full-precision repr in
# five); its own numeric parsing is exact only where it reads these as Python's float() does. A probe of
# the behaviour, not of the version string (a build from source reports no usable version).
PROBE_DECIMALS = ("0.10490011715303971", "0.36159505490948474", "-1.2654214710460525", "-0.21879166393254573",
                  "-0.31630015636915454", "-0.12853466294403426")
TO_NUMERIC_EXACT = (pd.to_numeric(pd.Series(PROBE_DECIMALS, dtype=object)).tolist()
                    == [float(p) for p in PROBE_DECIMALS])
# a decimal number in ASCII (what pandas parses as one), to tell "1e999" (beyond float64) from "1_0e999"
_DECIMAL = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _to_float(x: Any) -> float:
    """float(x) for one value: NaN when it is not a number, infinity when beyond float64 (an error row)."""
    try:
        return float(x)
    except OverflowError:
        return float("inf") if not str(x).strip().startswith("-") else float("-inf")
    except (TypeError, ValueError):
        return float("nan")


class TablePreprocessor:
    """Fitted schema of a table; ``transform`` gives the float32 matrix the network sees."""

    def __init__(self, max_categories: int = 50, marginals: str = "standard") -> None:
        self.max_categories = max_categories
        self.marginals = marginals  # "kde": near-normal numeric columns mapped (``marginals``)

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, df: pd.DataFrame) -> "TablePreprocessor":
        if df.shape[1] == 0:
            raise InputError("the table has no columns")
        self.__dict__.pop("_layout_cache", None)
        self.__dict__.pop("_maps_cache", None)
        self.columns: list[dict[str, Any]] = []
        for name in df.columns:
            s = df[name]
            name = str(name)
            if _is_numeric(s) and not pd.api.types.is_complex_dtype(s):
                v = s.to_numpy(dtype=np.float64, na_value=np.nan)
                self._check_finite(v, name, allow_nan=True)
                finite = v[~np.isnan(v)]
                if finite.size == 0:
                    raise InputError(f"column {name!r} has no values in the training data (all missing)")
                with np.errstate(over="ignore", invalid="ignore"):
                    std = float(finite.std())
                if not (np.isfinite(std) and np.isfinite(finite.mean())):
                    raise InputError(f"column {name!r}: values up to {np.abs(finite).max():g} are too large to "
                                     "standardise in float64 (their variance overflows); rescale the column",
                                     reason="invalid_value")
                # a column constant in training can have a float std of 1e-17 instead of 0; dividing
                # by it sends any other value to 1e18 and its score to infinity
                constant = std <= 1e-9 * float(np.abs(finite).max())
                self.columns.append({
                    "name": name, "type": "numeric", "mean": float(finite.mean()),
                    "std": 1.0 if constant else std, "median": float(np.median(finite)),
                    "indicator": bool(np.isnan(v).any()),
                })
                if self.marginals == "kde" and not constant and (m := _marginals.fit_column_map(finite)) is not None:
                    self.columns[-1]["map"] = m
            else:
                values = self._as_strings(s, name)
                counts = pd.Series(values).value_counts(sort=True)
                # <other> takes the categories past max_categories and any category never seen in
                # training; when it is empty in training the model learns it is always 0
                cats = sorted(counts.index[: self.max_categories].tolist()) + [OTHER]
                self.columns.append({"name": name, "type": "categorical", "categories": cats})
        self.n_features_out = sum(self._width(c) for c in self.columns)
        return self

    @staticmethod
    def _width(col: dict[str, Any]) -> int:
        return 1 + int(col["indicator"]) if col["type"] == "numeric" else len(col["categories"])

    @staticmethod
    def _check_finite(v: np.ndarray, name: Any, allow_nan: bool) -> None:
        bad = np.isinf(v) if allow_nan else ~np.isfinite(v)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(f"column {name!r}, row {row}: value {v[row]} is not finite (infinity is not allowed)")

    @classmethod
    def _as_strings(cls, s: pd.Series, name: Any) -> np.ndarray:
        """``_strings_rows`` for fitting: a value that is neither a string nor a number is a TypeError."""
        errors: list[tuple[str, str] | None] = [None] * len(s)
        out = cls._strings_rows(s, name, errors)
        bad = next((i for i, e in enumerate(errors) if e is not None), None)
        if bad is not None:
            raise TypeError(f"column {name!r}, row {bad}: argument must be a string or a number, "
                            f"got {type(s.iloc[bad]).__name__}")
        return out

    # -- transforming -------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [c["name"] for c in self.columns]

    def select(self, df: pd.DataFrame) -> pd.DataFrame:
        """The fitted columns of ``df``, by name, in the fitted order."""
        by_name = {str(c): c for c in df.columns}  # names are kept as strings (JSON); 0 matches "0"
        missing = [n for n in self.names if n not in by_name]
        if missing:
            raise InputError(f"missing column(s) {missing}; the model expects columns {self.names}", reason="missing_column")
        out = df[[by_name[n] for n in self.names]]
        out.columns = self.names
        return out

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """(N, n_features_out) float32. ``df`` must already have the fitted columns (see ``select``).
        The first bad value raises ``InputError`` naming its column and row."""
        out, errors = self._transform(df)
        for i, err in enumerate(errors):
            if err is not None:
                raise InputError(f"column {err[0]!r}, row {i}: {err[1]}")
        return out

    def transform_rows(self, df: pd.DataFrame) -> tuple[np.ndarray, list[str | None]]:
        """Like ``transform``, but a row with a bad value does not fail the others: it comes back
        as zeros with its message (``"column 'x': expected a number, got 'abc'"``); rows without a
        problem have ``None``. Returns ``(matrix (N, n_features_out) float32, errors (N,))``."""
        out, errors = self._transform(df)
        return out, [None if e is None else f"column {e[0]!r}: {e[1]}" for e in errors]

    def _transform(self, df: pd.DataFrame) -> tuple[np.ndarray, list[tuple[str, str] | None]]:
        n = len(df)
        out = np.zeros((n, self.n_features_out), dtype=np.float32)
        errors: list[tuple[str, str] | None] = [None] * n
        numeric = [k for k, col in enumerate(self.columns) if col["type"] == "numeric"]
        values = np.empty((n, len(numeric)), dtype=np.float64)
        for m, k in enumerate(numeric):
            values[:, m] = self._numeric_rows(df[self.columns[k]["name"]], self.columns[k]["name"], errors)
        self._fill_numeric(out, values)
        j = 0
        for col in self.columns:
            name, s = col["name"], df[col["name"]]
            if col["type"] == "categorical":
                cats = col["categories"]
                if pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty"):
                    # fast path (text columns, as the CSV reader gives them): no per-value type checks
                    values = np.where(s.isna().to_numpy(), MISSING, s.to_numpy(dtype=object))
                else:
                    values = self._strings_rows(s, name, errors)
                codes = pd.Index(cats, dtype=object).get_indexer(values)  # -1 where not a training category
                pos = np.where(codes < 0, cats.index(OTHER), codes)  # unseen and missing -> <other>
                out[np.arange(n), j + pos] = 1.0
            j += self._width(col)
        bad = [i for i, e in enumerate(errors) if e is not None]
        out[bad] = 0.0
        return out, errors

    def _numeric_layout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """Per numeric column: output position, mean, std, median, has-indicator; and the names."""
        if not hasattr(self, "_layout_cache"):
            pos, mean, std, med, ind, names = [], [], [], [], [], []
            j = 0
            for col in self.columns:
                if col["type"] == "numeric":
                    pos.append(j)
                    mean.append(col["mean"])
                    std.append(col["std"])
                    med.append(col["median"])
                    ind.append(col["indicator"])
                    names.append(col["name"])
                j += self._width(col)
            self._layout_cache = (np.array(pos, dtype=np.intp), np.array(mean), np.array(std), np.array(med),
                                  np.array(ind, dtype=bool), names)
        return self._layout_cache

    def _fill_numeric(self, out: np.ndarray, values: np.ndarray) -> None:
        """Write the scaled numeric columns (and missing indicators) of ``values`` (N, n_numeric),
        float64 with NaN for missing, into ``out``. The one place of the scaling formula (the ONNX
        graph of an all-numeric table, ``anomaly_vae.onnx``, repeats it in torch; tests keep them equal)."""
        pos, mean, std, med, ind, names = self._numeric_layout()
        miss = np.isnan(values)
        if miss.any():
            for m in np.flatnonzero(miss.any(axis=0) & ~ind):
                log.warning("column %r: %d missing value(s) imputed with the training median %g "
                            "(the column had no missing values in training)", names[m], int(miss[:, m].sum()), med[m])
            values = np.where(miss, med, values)
        with np.errstate(over="ignore", invalid="ignore"):
            z = (values - mean) / std  # float64; 1e308 - (-1) / 0.5 overflows to inf, capped below
        far = ~(np.abs(z) <= Z_MAX)
        if far.any():
            for m in np.flatnonzero(far.any(axis=0)):
                log.warning("column %r: %d value(s) more than %g training standard deviations from the training "
                            "mean, scored as %g (far beyond anything the model saw)", names[m], int(far[:, m].sum()),
                            Z_MAX, Z_MAX)
            z = np.clip(np.nan_to_num(z, nan=0.0, posinf=Z_MAX, neginf=-Z_MAX), -Z_MAX, Z_MAX)
        for m, (x, zk, slopes) in self._maps().items():  # mapped columns: their map instead of the scaling
            z[:, m] = np.clip(_marginals.apply_map(values[:, m], x, zk, slopes), -Z_MAX, Z_MAX)
        out[:, pos] = z
        out[:, pos[ind] + 1] = miss[:, ind]

    def _maps(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The mapped numeric columns: their index among the numeric ones -> (x knots, z knots, slopes)."""
        if not hasattr(self, "_maps_cache"):
            numeric = [c for c in self.columns if c["type"] == "numeric"]
            self._maps_cache = {m: _marginals.arrays(c["map"]) for m, c in enumerate(numeric) if "map" in c}
        return self._maps_cache

    def log_jacobian(self, x: np.ndarray) -> np.ndarray:
        """Minus the log slope of each mapped column's map where it gave ``x`` (a prepared matrix),
        (N, n_columns) float64, zero for other columns and for a value missing (its indicator set):
        what the detector adds to a score, once per network, so that it stays -log p of the row as
        it came (``marginals``). All zeros for a model without maps."""
        out = np.zeros((x.shape[0], len(self.columns)))
        maps = self._maps()
        if maps:
            pos, _, _, _, ind, _ = self._numeric_layout()
            numeric = [k for k, c in enumerate(self.columns) if c["type"] == "numeric"]
            for m, (_, zk, slopes) in maps.items():
                term = -_marginals.log_slope_at(x[:, pos[m]], zk, slopes)
                out[:, numeric[m]] = np.where(x[:, pos[m] + 1] == 1, 0.0, term) if ind[m] else term
        return out

    @property
    def all_numeric(self) -> bool:
        return all(c["type"] == "numeric" for c in self.columns)

    def transform_numeric(self, values: np.ndarray) -> np.ndarray:
        """``transform`` for a model whose columns are all numeric, from a float64 matrix
        (N, n_columns) in the fitted column order, NaN for missing: no DataFrame on the way, so
        small requests are cheap. The same numbers as ``transform``. Infinity raises ``InputError``."""
        values = np.asarray(values, dtype=np.float64)
        if not self.all_numeric:
            raise InputError("transform_numeric needs a model whose columns are all numeric")
        if values.ndim != 2 or values.shape[1] != len(self.columns):
            raise InputError(f"expected a matrix with {len(self.columns)} columns, got shape {values.shape}", reason="width")
        inf = np.isinf(values)
        if inf.any():
            i, k = (int(v) for v in np.argwhere(inf)[0])
            raise InputError(f"column {self.columns[k]['name']!r}, row {i}: value {values[i, k]} is not finite "
                             "(infinity is not allowed)", reason="not_finite")
        out = np.zeros((values.shape[0], self.n_features_out), dtype=np.float32)
        self._fill_numeric(out, values)
        return out

    @staticmethod
    def _numeric_rows(s: pd.Series, name: str, errors: list[tuple[str, str] | None]) -> np.ndarray:
        """float64 values of a numeric column, NaN for missing; bad values noted in ``errors``."""
        if _is_numeric(s) and not pd.api.types.is_complex_dtype(s):
            v = s.to_numpy(dtype=np.float64, na_value=np.nan)
            bad_text = np.zeros(len(v), dtype=bool)
        else:
            raw = s.to_numpy(dtype=object)
            try:
                v = pd.to_numeric(pd.Series(raw, dtype=object), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            except OverflowError:  # an integer beyond float64 (310+ digits): value by value
                v = np.array([_to_float(x) for x in raw], dtype=np.float64)
            v = np.array(v, dtype=np.float64)  # writable: pandas 3.0 may hand back a read-only view
            if not TO_NUMERIC_EXACT:  # the text pandas parsed, again as float() parses it
                for i in np.flatnonzero(~np.isnan(v)):
                    if isinstance(raw[i], str) and not np.isnan(f := _to_float(raw[i])):
                        v[i] = f
            # "" (or spaces) is a missing value, as in a CSV; anything else that is not a number is an
            # error. Only the values that did not parse are looked at one by one.
            bad_text = np.isnan(v) & s.notna().to_numpy()
            for i in np.flatnonzero(bad_text):
                if isinstance(raw[i], str) and not raw[i].strip():
                    bad_text[i] = False
                elif isinstance(raw[i], str) and _DECIMAL.fullmatch(raw[i]) and np.isinf(f := _to_float(raw[i])):
                    # "1e999" or a 400-digit integer: beyond float64 (pandas 3.1 gives NaN, 2.2 infinity)
                    v[i], bad_text[i] = f, False
            for i in np.flatnonzero(bad_text):
                if errors[i] is None:
                    errors[i] = (name, f"expected a number, got {raw[i]!r}")
        inf = np.isinf(v)
        for i in np.flatnonzero(inf):
            if errors[i] is None:
                errors[i] = (name, f"value {v[i]} is not finite (infinity, or a number beyond float64's "
                                   "+-1.8e308, is not allowed)")
        bad = bad_text | inf
        if bad.any():
            v = np.where(bad, 0.0, v)
        return v

    @staticmethod
    def _strings_rows(s: pd.Series, name: str, errors: list[tuple[str, str] | None]) -> np.ndarray:
        out = np.empty(len(s), dtype=object)
        for i, v in enumerate(s.to_numpy(dtype=object)):
            if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
                out[i] = MISSING
            elif isinstance(v, (str, bool, int, float, np.integer, np.floating, np.bool_)):
                out[i] = str(v)
            else:
                out[i] = MISSING
                if errors[i] is None:
                    errors[i] = (name, f"expected a string or a number, got {type(v).__name__}")
        return out

    def categorical_groups(self) -> tuple[tuple[int, int], ...]:
        """(start, width) of each categorical column's one-hot features, in order."""
        groups, j = [], 0
        for col in self.columns:
            w = self._width(col)
            if col["type"] == "categorical":
                groups.append((j, w))
            j += w
        return tuple(groups)

    def feature_groups(self) -> list[tuple[str, slice]]:
        """(column name, slice of transformed features) for summing feature scores per column."""
        groups, j = [], 0
        for col in self.columns:
            w = self._width(col)
            groups.append((col["name"], slice(j, j + w)))
            j += w
        return groups

    # -- JSON ---------------------------------------------------------------------------------
    def check_transformed(self, x: np.ndarray) -> None:
        """An ``InputError`` naming the first sample and column of ``x`` (n_samples, n_features_out)
        that ``transform`` cannot have made: a value that is not finite, a scaled number beyond
        ``Z_MAX``, a missing indicator that is not 0 or 1, a one-hot group that is not one 1 and zeros
        (an ``<other>`` category is its own slot). Such a value gave a score, not an error: NaN became
        the 1e30-nat cap, two categories at once a finite but meaningless number."""
        bad = ~np.isfinite(x)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise InputError(f"sample {i}, column {self._feature_column(j)!r} (prepared feature {j}): {x[i, j]} is not "
                             "finite", reason="not_finite")
        pos, _, _, _, ind, _ = self._numeric_layout()
        flags, groups = pos[ind] + 1, self.categorical_groups()
        far = np.abs(x[:, pos]) > Z_MAX
        not_flag = (x[:, flags] != 0) & (x[:, flags] != 1)
        not_one_hot = np.zeros((x.shape[0], len(groups)), dtype=bool)
        if groups and x.shape[0]:  # every group at once (a model may have a thousand categorical columns)
            hot = np.concatenate([np.arange(st, st + w) for st, w in groups])
            g, offsets = x[:, hot], np.cumsum([0] + [w for _, w in groups[:-1]])
            off01 = np.add.reduceat(((g != 0) & (g != 1)).astype(np.int64), offsets, axis=1)
            not_one_hot = (off01 > 0) | (np.add.reduceat(g, offsets, axis=1, dtype=np.float64) != 1)
        rows = np.flatnonzero(far.any(axis=1) | not_flag.any(axis=1) | not_one_hot.any(axis=1))
        if rows.size:
            i = int(rows[0])
            found = [(int(j), f"beyond {Z_MAX:g} (preprocess caps a scaled number there), got {x[i, j]}")
                     for j in pos[far[i]]]
            found += [(int(j), f"a missing indicator is 0 or 1, got {x[i, j]}") for j in flags[not_flag[i]]]
            found += [(st, f"a one-hot group is one 1 and zeros, got {_values(x[i, st : st + w])}")
                      for (st, w), bad in zip(groups, not_one_hot[i]) if bad]
            j, rule = min(found)
            raise InputError(f"sample {i}, column {self._feature_column(j)!r} (prepared feature {j}): {rule}",
                             reason="invalid_value")

    def _feature_column(self, j: int) -> str:
        return next(name for name, sl in self.feature_groups() if sl.start <= j < sl.stop)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "table", "max_categories": self.max_categories, "columns": self.columns}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TablePreprocessor":
        columns = [dict(c) for c in d["columns"]]
        self = cls(max_categories=int(d["max_categories"]), marginals="kde" if any("map" in c for c in columns)
                   else "standard")
        self.columns = columns
        self.n_features_out = sum(self._width(c) for c in self.columns)
        return self


def _values(g: np.ndarray) -> str:
    """A one-hot group's values for a message: all of a short group, a count of a long one's."""
    if len(g) <= 10:
        return str(g.tolist())
    nonzero = np.flatnonzero(g)
    at = ", ".join(map(str, nonzero[:5].tolist())) + (", ..." if len(nonzero) > 5 else "")
    return f"{len(nonzero)} non-zero value(s) of {len(g)} (at [{at}])"
