"""Records: rows and images as a JSON decoder gives them (lists, numbers, strings, None), checked
by the package's rules and handed to the table or image preprocessor.

A table record is a sequence of values in the model's column order; an image record a nested list
of pixels. Which JSON shape a client may send (a list or an object keyed by column name, an
``instances`` array) is the HTTP face's business (``anomaly_vae.instances``); what the values may be
is decided here, once, in the same terms as for a DataFrame or an array:

* numeric columns take numbers (not booleans) or None (missing); categorical columns strings,
  numbers (their text) or None;
* NaN and infinity are errors (None is the missing value), and so is an integer beyond float64;
* pixels are integers 0-255 or floats in [0, 1], as for an array (``ImagePreprocessor``).

Every problem is an ``InputError`` naming the record (``"instance 3"``), the column or the pixel
position, with a ``reason`` from ``REASONS``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..exceptions import InputError
from .images import ImagePreprocessor
from .tables import TablePreprocessor

__all__ = ["table_records", "image_record", "describe_value", "short_int"]


def describe_value(v: Any) -> str:
    """"an object", "a list", "a string", "a boolean", "null", or the type's name."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), type(v).__name__)


def short_int(v: int) -> str:
    """A huge integer, shortened: "123456... (401 digits)"."""
    digits = str(abs(v))
    return f"{'-' if v < 0 else ''}{digits[:6]}... ({len(digits)} digits)"


def _fits_float(v: int) -> bool:
    try:
        float(v)
    except OverflowError:
        return False
    return True


def _bad_value(where: str, name: str, v: Any, numeric: bool) -> InputError:
    if isinstance(v, float) and np.isnan(v):
        return InputError(f"{where}, column {name!r}: {v} is not allowed (send null for a missing value)",
                          reason="not_finite")
    if isinstance(v, float) and not np.isfinite(v):
        return InputError(f"{where}, column {name!r}: {v} is not allowed (a number beyond +-1.8e308 reads as "
                          "infinity; send null for a missing value)", reason="not_finite")
    if type(v) is int and numeric:  # only an integer that float64 cannot hold gets here
        return InputError(f"{where}, column {name!r}: the integer {short_int(v)} is beyond the range of a 64-bit "
                          "float (+-1.8e308)", reason="not_finite")
    if numeric:
        return InputError(f"{where}, column {name!r}: expected a number or null, got {describe_value(v)} {v!r}"[:300],
                          reason="non_numeric")
    return InputError(f"{where}, column {name!r}: expected a string, a number or null, got {describe_value(v)}",
                      reason="invalid_value")


def _check_values(pre: TablePreprocessor, rows: Sequence[Sequence[Any]], label: str) -> np.ndarray | None:
    """The value rules per column. Returns the float64 matrix (None -> NaN) when every value is a
    number or None (the usual case, checked without a Python loop over the values), else None."""
    kinds = {type(v) for row in rows for v in row}
    if kinds <= {int, float, type(None)}:  # numbers fit every column type
        try:
            values = np.array(rows, dtype=np.float64)  # None -> NaN
        except OverflowError:  # an integer beyond float64: the loop below names it
            values = None
        if values is not None:
            bad = ~np.isfinite(values)
            if bad.any():
                for i, k in np.argwhere(bad):
                    v = rows[i][k]
                    if v is not None:  # a NaN or infinity sent as such, not a None
                        raise _bad_value(f"{label} {int(i)}", pre.columns[k]["name"], v, True)
            return values
    for i, row in enumerate(rows):
        for col, v in zip(pre.columns, row):
            t, numeric = type(v), col["type"] == "numeric"
            # an integer in a categorical column is its text, of any size
            finite_number = (t is int and (not numeric or _fits_float(v))) or (t is float and math.isfinite(v))
            ok = v is None or finite_number or (t is str and not numeric)
            if not ok:
                raise _bad_value(f"{label} {i}", col["name"], v, numeric)
    return None


def table_records(pre: TablePreprocessor, rows: Sequence[Sequence[Any]], label: str = "instance") -> np.ndarray:
    """The network's input (N, n_features_out) float32 for ``rows``, each a sequence of values in the
    model's column order (its width already checked). Errors name ``f"{label} {i}"``."""
    values = _check_values(pre, rows, label)
    if pre.all_numeric:
        return pre.transform_numeric(values)
    # dtype=object: no type inference, which pandas 2.2 and 3.0 fail on a huge integer (a category's text here)
    values = np.array(rows, dtype=object).reshape(len(rows), len(pre.columns))
    df = pd.DataFrame(values, columns=pre.names, dtype=object)
    for col in pre.columns:
        if col["type"] == "numeric":
            df[col["name"]] = df[col["name"]].astype(np.float64)
    return pre.transform(df)


def image_record(pre: ImagePreprocessor, inst: Any, where: str = "instance 0") -> np.ndarray:
    """One image (a nested list of pixels, (H, W), (H, W, C) or (C, H, W)) as the network's input,
    (1, C, H, W) float32, by the rules of ``ImagePreprocessor``. Errors name ``where``."""
    expected = (f"an image as a nested list of numbers, (H, W), (H, W, C) or (C, H, W) with H x W = "
                f"{pre.height}x{pre.width}")
    if not isinstance(inst, (list, tuple)):
        raise InputError(f"{where}: expected {expected}, got {describe_value(inst)}", reason="shape")
    try:
        a = np.asarray(inst)
    except (ValueError, OverflowError):  # rows of different lengths
        a = None
    if a is None or a.dtype.kind not in "iuf":
        raise _image_problem(where, inst, expected)
    if a.ndim not in (2, 3):
        raise InputError(f"{where}: expected {expected}, got shape {a.shape}", reason="shape")
    try:
        x, errors = pre.transform_rows(a[None])
    except InputError as err:
        raise InputError(f"{where}: {err}", reason=err.reason) from None
    if errors[0] is not None:
        raise InputError(f"{where}: {errors[0]}", reason="not_finite" if "finite" in errors[0] else "invalid_value")
    return x


def _image_problem(where: str, inst: Any, expected: str) -> InputError:
    """What makes ``inst`` no array of numbers: the first value that is not a pixel (by its
    position, e.g. ``[3][5]``), or else rows of different lengths."""
    stack: list[tuple[tuple[int, ...], Any]] = [((), inst)]
    while stack:
        pos, v = stack.pop()
        if isinstance(v, (list, tuple)):
            stack.extend(((*pos, k), w) for k, w in reversed(list(enumerate(v))))
            continue
        at = "".join(f"[{k}]" for k in pos)
        if type(v) is int and not -2**63 <= v < 2**63:  # smaller integers are checked against 0..255 later
            return InputError(f"{where}: integer pixel values must lie in 0..255, found {short_int(v)} at {at}",
                              reason="invalid_value")
        if type(v) not in (int, float):
            hint = " (an image has no missing pixels)" if v is None else ""
            return InputError(f"{where}: the value at {at} is {describe_value(v)}; pixels must be numbers{hint}"[:300],
                              reason="non_numeric")
    return InputError(f"{where}: expected {expected}, got rows of different lengths (a ragged list)", reason="shape")
