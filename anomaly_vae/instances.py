"""JSON instances (what an HTTP client posts) into the model's input, and their scores.

This module knows only the JSON shape of an instance; what its values may be is the input
rulebook's (``anomaly_vae.preprocessing``, its ``records`` module), the same for every face. An
instance is one of:

* a list of values in the model's column order (tables);
* an object keyed by column name (tables): every column of the model; other keys are ignored, as
  extra columns are on every face;
* a nested list of pixels (images): (H, W), (H, W, C) or (C, H, W), of exactly the model's size.

``null`` is a missing value (imputed, as an empty CSV cell is). Any problem raises ``InputError``
naming the instance (and column, or pixel position), with a ``reason`` from ``REASONS``.
The scores are exactly those of ``VAEAnomalyDetector.anomaly_score`` for the same rows: the same
preprocessing and the same fixed-block forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .exceptions import InputError
from .preprocessing import REASONS, image_record, table_records
from .preprocessing.records import describe_value

if TYPE_CHECKING:
    from .detector import VAEAnomalyDetector

__all__ = ["REASONS", "instances_to_input", "score_input"]


def instances_to_input(det: VAEAnomalyDetector, instances: Sequence[Any]) -> np.ndarray:
    """The network's input for ``instances``: (N, n_features_out) or (N, C, H, W) float32.

    Parameters
    ----------
    det : a fitted detector.
    instances : decoded JSON: a non-empty list of table rows (lists or objects) or images (nested lists).

    Returns
    -------
    numpy.ndarray : what ``det.score_prepared`` scores.
    """
    if not isinstance(instances, (list, tuple)) or len(instances) == 0:
        raise InputError("'instances' is empty: send at least one instance", reason="empty")
    pre = det.preprocessor_
    if det.input_kind_ == "image":
        # one image at a time, so that images of one request may differ in layout and pixel type
        return np.concatenate([image_record(pre, inst, f"instance {i}") for i, inst in enumerate(instances)])
    return table_records(pre, _rows(pre.names, instances))


def score_input(det: VAEAnomalyDetector, x: np.ndarray) -> np.ndarray:
    """Scores (N,) float64 of a prepared input (``instances_to_input``) with the model's score."""
    return det.score_prepared(x)


def _rows(names: list[str], instances: Sequence[Any]) -> list[Sequence[Any]]:
    """Every instance as a list of values in the model's column order."""
    rows: list[Sequence[Any]] = []
    for i, inst in enumerate(instances):
        if isinstance(inst, dict):
            try:
                rows.append([inst[n] for n in names])
            except KeyError:
                missing = [n for n in names if n not in inst]
                raise InputError(f"instance {i}: missing column(s) {missing}; the model's columns are {names}",
                                 reason="missing_column") from None
        elif isinstance(inst, (list, tuple)):
            if len(inst) != len(names):
                raise InputError(f"instance {i} has {len(inst)} values, the model expects {len(names)} "
                                 f"(columns {names})", reason="width")
            rows.append(inst)
        else:
            raise InputError(f"instance {i}: expected a list of {len(names)} values or an object keyed by column "
                             f"name, got {describe_value(inst)}", reason="shape")
    return rows
