"""JSON-style instances (what an HTTP client posts) into the model's input, and their scores.

An instance is one of:

* a list of values in the model's column order (tables), numbers for numeric columns and strings or
  numbers for categorical ones;
* an object keyed by column name (tables), every column of the model and no other;
* a nested list of pixels (images): (H, W), (H, W, C) or (C, H, W), integers 0-255 or floats in
  [0, 1], of exactly the model's height and width.

``null`` is a missing value (imputed, as an empty CSV cell is); NaN, infinity (which is also what a
JSON number beyond +-1.8e308 decodes to) and an integer too large for float64 are errors; a finite
extreme value such as 1e300 is scored as what it is, a huge finite score that is flagged. Any
problem raises ``InputError`` naming the instance (and column, or pixel position), with a
``reason`` from ``REASONS``.
The scores are exactly those of ``VAEAnomalyDetector.anomaly_score`` for the same rows: the same
preprocessing formula and the same fixed-block forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .exceptions import InputError

__all__ = ["REASONS", "instances_to_input", "score_input"]

# every reason an InputError from here (or from the preprocessing it calls) can carry
REASONS = ("empty", "shape", "width", "missing_column", "unknown_column", "non_numeric", "not_finite",
           "invalid_value")



def instances_to_input(det: Any, instances: Sequence[Any]) -> np.ndarray:
    """The network's input for ``instances``: (N, n_features_out) or (N, C, H, W) float32."""
    if not isinstance(instances, (list, tuple)) or len(instances) == 0:
        raise InputError("'instances' is empty: send at least one instance", reason="empty")
    if det.input_kind_ == "image":
        return _images(det, instances)
    return _table(det, instances)


def score_input(det: Any, x: np.ndarray) -> np.ndarray:
    """Scores (N,) float64 of a prepared input (``instances_to_input``) with the model's score."""
    return det.score_prepared(x)


# -- tables -----------------------------------------------------------------------------------
def _rows(pre: Any, instances: Sequence[Any]) -> list[Sequence[Any]]:
    """Every instance as a list of values in the model's column order."""
    names = pre.names
    index = {n: k for k, n in enumerate(names)}
    rows: list[Sequence[Any]] = []
    for i, inst in enumerate(instances):
        if isinstance(inst, dict):
            unknown = [k for k in inst if k not in index]
            if unknown:
                raise InputError(f"instance {i}: unknown column(s) {unknown}; the model's columns are {names}",
                                 reason="unknown_column")
            if len(inst) != len(names):
                missing = [n for n in names if n not in inst]
                raise InputError(f"instance {i}: missing column(s) {missing}; the model's columns are {names}",
                                 reason="missing_column")
            rows.append([inst[n] for n in names])
        elif isinstance(inst, (list, tuple)):
            if len(inst) != len(names):
                raise InputError(f"instance {i} has {len(inst)} values, the model expects {len(names)} "
                                 f"(columns {names})", reason="width")
            rows.append(inst)
        else:
            raise InputError(f"instance {i}: expected a list of {len(names)} values or an object keyed by column "
                             f"name, got {_kind(inst)}", reason="shape")
    return rows


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), type(v).__name__)


def _short(v: int) -> str:
    digits = str(abs(v))
    return f"{'-' if v < 0 else ''}{digits[:6]}... ({len(digits)} digits)"


def _fits_float(v: int) -> bool:
    try:
        float(v)
    except OverflowError:
        return False
    return True


def _bad_value(i: int, name: str, v: Any, numeric: bool) -> InputError:
    if isinstance(v, float) and np.isnan(v):
        return InputError(f"instance {i}, column {name!r}: {v} is not allowed (send null for a missing value)",
                          reason="not_finite")
    if isinstance(v, float) and not np.isfinite(v):
        return InputError(f"instance {i}, column {name!r}: {v} is not allowed (a number beyond +-1.8e308 reads as "
                          "infinity; send null for a missing value)", reason="not_finite")
    if type(v) is int and numeric:  # only an integer that float64 cannot hold gets here
        return InputError(f"instance {i}, column {name!r}: the integer {_short(v)} is beyond the range of a 64-bit "
                          "float (+-1.8e308)", reason="not_finite")
    if numeric:
        return InputError(f"instance {i}, column {name!r}: expected a number or null, got {_kind(v)} {v!r}"[:300],
                          reason="non_numeric")
    return InputError(f"instance {i}, column {name!r}: expected a string, a number or null, got {_kind(v)}",
                      reason="invalid_value")


def _check_values(pre: Any, rows: list[Sequence[Any]]) -> np.ndarray | None:
    """JSON types per column: numbers (not booleans) or null for numeric columns; strings, numbers
    or null for categorical ones; never NaN or infinity. Returns the float64 matrix (null -> NaN)
    when every value is a number or null (the usual case, checked without a Python loop over
    the values), else None."""
    kinds = {type(v) for row in rows for v in row}
    if kinds <= {int, float, type(None)}:  # numbers fit every column type
        try:
            values = np.array(rows, dtype=np.float64)  # null -> NaN
        except OverflowError:  # an integer beyond float64: the loop below names it
            values = None
        if values is not None:
            bad = ~np.isfinite(values)
            if bad.any():
                for i, k in np.argwhere(bad):
                    v = rows[i][k]
                    if v is not None:  # a NaN or infinity sent as such, not a null
                        raise _bad_value(int(i), pre.columns[k]["name"], v, True)
            return values
    for i, row in enumerate(rows):
        for col, v in zip(pre.columns, row):
            t, numeric = type(v), col["type"] == "numeric"
            # an integer in a categorical column is its text, of any size
            finite_number = (t is int and (not numeric or _fits_float(v))) or (t is float and math.isfinite(v))
            ok = v is None or finite_number or (t is str and not numeric)
            if not ok:
                raise _bad_value(i, col["name"], v, numeric)
    return None


def _table(det: Any, instances: Sequence[Any]) -> np.ndarray:
    pre = det.preprocessor_
    rows = _rows(pre, instances)
    values = _check_values(pre, rows)
    if pre.all_numeric:
        return pre.transform_numeric(values)
    df = pd.DataFrame(np.array(rows, dtype=object).reshape(len(rows), len(pre.columns)), columns=pre.names)
    for col in pre.columns:
        if col["type"] == "numeric":
            df[col["name"]] = df[col["name"]].astype(np.float64)
    return pre.transform(df)


# -- images -----------------------------------------------------------------------------------
def _images(det: Any, instances: Sequence[Any]) -> np.ndarray:
    pre = det.preprocessor_
    prepared = []
    for i, inst in enumerate(instances):
        # one image at a time, so that images of one request may differ in layout and pixel type
        x, errors = pre.transform_rows(_image_array(i, inst, pre)[None])
        if errors[0] is not None:
            raise InputError(f"instance {i}: {errors[0]}", reason="invalid_value")
        prepared.append(x)
    return np.concatenate(prepared)


def _image_array(i: int, inst: Any, pre: Any) -> np.ndarray:
    """One image instance as a uint8 or float array, (H, W), (H, W, C) or (C, H, W) of the model's
    size; its values checked."""
    expected = (f"an image as a nested list of numbers, (H, W), (H, W, C) or (C, H, W) with H x W = "
                f"{pre.height}x{pre.width}")
    if not isinstance(inst, (list, tuple)):
        raise InputError(f"instance {i}: expected {expected}, got {_kind(inst)}", reason="shape")
    try:
        a = np.asarray(inst)
    except ValueError:  # rows of different lengths
        a = None
    if a is None or a.dtype.kind not in "iuf":
        raise _image_problem(i, inst, expected)
    if a.ndim not in (2, 3):
        raise InputError(f"instance {i}: expected {expected}, got shape {a.shape}", reason="shape")
    if a.ndim == 2 or (a.shape[-1] in (1, 3) and a.shape[0] not in (1, 3)):
        hw = a.shape[:2]  # (H, W) or (H, W, C)
    elif a.shape[0] in (1, 3):
        hw = a.shape[1:]  # (C, H, W)
    else:
        raise InputError(f"instance {i}: cannot tell the channel axis of shape {a.shape}: expected 1 or 3 "
                         "channels first or last", reason="shape")
    if tuple(hw) != (pre.height, pre.width):
        raise InputError(f"instance {i}: images must be {pre.height}x{pre.width} pixels, got shape {a.shape}",
                         reason="shape")
    if a.dtype.kind in "iu":
        if a.size and (a.min() < 0 or a.max() > 255):
            raise InputError(f"instance {i}: integer pixel values must lie in 0..255, found {a.min()}..{a.max()}",
                             reason="invalid_value")
        return a.astype(np.uint8)
    if a.size and not np.isfinite(a).all():
        raise InputError(f"instance {i}: pixel values must be finite, found NaN or infinity", reason="not_finite")
    if a.size and (a.min() < 0 or a.max() > 1):  # checked here in float64: 1e308 is out of range, not infinite
        raise InputError(f"instance {i}: float pixel values must lie in [0, 1] (or send integers 0-255), found "
                         f"{a.min():g}..{a.max():g}", reason="invalid_value")
    return a


def _image_problem(i: int, inst: Any, expected: str) -> InputError:
    """What makes ``inst`` no array of numbers: the first value that is not a pixel (by its
    position, e.g. ``[3][5]``), or else rows of different lengths."""
    stack: list[tuple[tuple[int, ...], Any]] = [((), inst)]
    while stack:
        pos, v = stack.pop()
        if isinstance(v, (list, tuple)):
            stack.extend(((*pos, k), w) for k, w in reversed(list(enumerate(v))))
            continue
        where = "".join(f"[{k}]" for k in pos)
        if type(v) is int and not -2**63 <= v < 2**63:  # smaller integers are checked against 0..255 later
            return InputError(f"instance {i}: integer pixel values must lie in 0..255, found {_short(v)} at {where}",
                              reason="invalid_value")
        if type(v) not in (int, float):
            hint = " (an image has no missing pixels)" if v is None else ""
            return InputError(f"instance {i}: the value at {where} is {_kind(v)}; pixels must be numbers{hint}"[:300],
                              reason="non_numeric")
    return InputError(f"instance {i}: expected {expected}, got rows of different lengths (a ragged list)",
                      reason="shape")
