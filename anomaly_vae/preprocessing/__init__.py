"""The input rulebook: what every face (Python, CLI, HTTP, batch files) accepts, and how it becomes
the float32 matrix or image tensor the network sees. The faces only reshape their input (a
DataFrame, a CSV chunk, a JSON array) into what this package takes; they add no rules of their own.

Tables (``tables.TablePreprocessor``)

* Columns are matched by name (DataFrames, CSV / Parquet headers, JSON objects); a list of values
  (a 2-D array, a JSON list) is in the model's column order and must have its width. A missing
  column is an error (reason ``missing_column``). **Extra columns are ignored, on every face**: real
  rows carry ids, labels and timestamps that are not features, and a client that adds a field must
  not break; a misspelled feature cannot slip through, because it is then also a missing column.
  (Up to 0.1.0 the HTTP face refused extra keys while Python and the CLI ignored extra columns:
  two rulebooks.)
* Numeric columns are standardised with the training mean and standard deviation; a constant
  column (standard deviation below 1e-9 of its largest absolute value: float rounding) gets a
  standard deviation of 1 (no division by zero, nor by rounding noise).
* Missing numeric values (NaN / None / null / an empty CSV cell) are replaced by the training
  median, after scaling. A column that had missing values in training also gets a 0/1 "missing"
  indicator feature, so the model learns how often values are absent. Missing values at scoring
  time in a column that never had any in training are imputed the same way and logged as a
  warning. Infinity is always an error, and so is NaN sent as a value in a JSON record (null is
  the missing value there) and an integer beyond float64.
* A numeric column takes numbers; a JSON boolean or a string that is not a number is an error.
* String / categorical columns are one-hot encoded over the categories seen in training (the
  ``max_categories`` most frequent) plus an ``<other>`` slot shared by rarer categories and by any
  category never seen in training. A missing value is its own category. An unseen category is
  scored, not an error, and scores high: ``<other>`` was (almost) always 0 in training. A number in
  a categorical column is its text.
* A finite value too far out for float32 arithmetic (more than ``Z_MAX`` = 1e6 training standard
  deviations from the training mean; no training set of fewer than 1e12 rows has one) is scored as
  ``Z_MAX``, with a warning naming the column: it is far beyond anything the model saw, and its score
  is huge and flagged, never NaN (1e300 used to overflow to infinity and give a NaN score).

Images (``images.ImagePreprocessor``)

* Layout (N, H, W), (N, H, W, C) or (N, C, H, W), 1 or 3 channels first or last; exactly the
  model's height and width (the file readers resize image files, arrays are never resized).
* Integer pixels (any integer type, JSON integers) are 0-255 levels; floats lie in [0, 1]. NaN,
  infinity and values out of range are errors for that image. A grey model converts colour images
  to grey (ITU-R BT.601 luma); a colour model repeats a grey image's channel.

JSON records (``records``): the same rules for values as a JSON decoder gives them.

Every problem is an ``InputError`` that names the row (or image) and the column (or pixel), with a
``reason`` from ``REASONS``.
"""

from __future__ import annotations

from .images import ImagePreprocessor, image_layout
from .records import image_record, table_records
from .tables import MISSING, OTHER, Z_MAX, TablePreprocessor, as_table, is_image_input

__all__ = ["TablePreprocessor", "ImagePreprocessor", "as_table", "is_image_input", "image_layout", "table_records",
           "image_record", "REASONS", "OTHER", "MISSING", "Z_MAX"]

# every ``InputError.reason`` the rulebook (and the JSON shape checks of ``instances``) gives
REASONS = ("empty", "shape", "width", "missing_column", "non_numeric", "not_finite", "invalid_value",
           "invalid_input")
