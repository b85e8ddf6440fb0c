"""Detection metrics on labelled data: the same numbers for the demo, ``train --label-column``
and ``evaluate``."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from .exceptions import InputError

__all__ = ["anomaly_labels", "evaluate_scores", "default_normal_label"]


def default_normal_label(labels: list[Any]) -> str:
    """The normal value when none is given: ``normal`` if present, else 0 for 0/1 labels."""
    values = {str(v) for v in labels}
    if "normal" in values:
        return "normal"
    if values <= {"0", "1", "0.0", "1.0", "False", "True"}:
        return "0" if values & {"0", "1"} else ("0.0" if values & {"0.0", "1.0"} else "False")
    shown = sorted(values)[:10]
    raise InputError(f"cannot tell which label is normal among {shown}: pass --normal-label")


def anomaly_labels(labels: list[Any], normal_label: Any) -> np.ndarray:
    """Boolean array: True where the label is not ``normal_label`` (compared as text, so 0 matches
    "0"). A missing label is an ``InputError`` naming the row."""
    out = np.empty(len(labels), dtype=bool)
    normal = str(normal_label)
    for i, v in enumerate(labels):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            raise InputError(f"row {i}: the label is missing")
        text = str(v)
        if text != normal and isinstance(v, (float, np.floating)) and float(v).is_integer():
            text = str(int(v))  # 0.0 read from a CSV matches --normal-label 0
        out[i] = text != normal
    return out


def evaluate_scores(scores: np.ndarray, is_anomaly: np.ndarray, threshold: float,
                    alpha: float | None) -> dict[str, Any]:
    """AUROC, average precision, realized false-alarm and detection rates at ``threshold``
    (flagged = score > threshold), and the confusion table. AUROC / AP are None with one class."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_anomaly, dtype=bool)
    flagged = scores > threshold
    both = 0 < y.sum() < len(y)
    n_norm, n_anom = int((~y).sum()), int(y.sum())
    tp, fp = int((flagged & y).sum()), int((flagged & ~y).sum())
    return {
        "n": int(len(y)), "n_normal": n_norm, "n_anomalous": n_anom,
        "auroc": float(roc_auc_score(y, scores)) if both else None,
        "average_precision": float(average_precision_score(y, scores)) if both else None,
        "alpha": alpha, "threshold": float(threshold),
        "false_alarm_rate": fp / n_norm if n_norm else None,
        "detection_rate": tp / n_anom if n_anom else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "confusion": {
            "normal": {"flagged": fp, "not_flagged": n_norm - fp},
            "anomalous": {"flagged": tp, "not_flagged": n_anom - tp},
        },
    }
