"""Thresholds and p-values from held-out normal scores (split conformal).

With n calibration scores from normal data never trained on, a new normal sample's score exceeds
the ceil((n+1)(1-alpha))-th smallest calibration score with probability at most alpha (exchangeability;
Bates, Candes, Lei, Romano, Sesia, Annals of Statistics 2023). The conformal p-value
(1 + #{calibration >= s}) / (n + 1) is <= alpha exactly when s is above that threshold.
"""

from __future__ import annotations

import math

import numpy as np

from .exceptions import CalibrationError

__all__ = [
    "min_calibration_size",
    "conformal_threshold",
    "conformal_p_values",
    "contamination_threshold",
    "best_f1_threshold",
]


def _check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, (int, float, np.floating)) and 0.0 < float(alpha) < 1.0):
        raise ValueError(f"alpha must be a float in (0, 1), got {alpha!r}")
    return float(alpha)


def _check_contamination(contamination: float) -> float:
    if not (isinstance(contamination, (int, float, np.floating)) and 0.0 < float(contamination) <= 0.5):
        raise ValueError(f"contamination must be a float in (0, 0.5], got {contamination!r}")
    return float(contamination)


def _rank(n: int, alpha: float) -> int:
    # the small epsilon keeps (n+1)(1-alpha) that is an integer in exact arithmetic from rounding up
    return math.ceil((n + 1) * (1.0 - alpha) - 1e-9)


def min_calibration_size(alpha: float) -> int:
    """The fewest calibration scores for which the conformal threshold at ``alpha`` is finite."""
    alpha = _check_alpha(alpha)
    n = max(1, math.ceil((1.0 - alpha) / alpha - 1e-9))
    while _rank(n, alpha) > n:  # guard against float rounding in the closed form
        n += 1
    return n


def conformal_threshold(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n+1)(1-alpha))-th smallest of ``scores``; a sample is anomalous when its score is
    strictly greater. Raises ``CalibrationError`` when n is too small for ``alpha`` (the threshold
    would be infinite: nothing could ever be flagged)."""
    alpha = _check_alpha(alpha)
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = s.size
    k = _rank(n, alpha)
    if k > n:
        need = min_calibration_size(alpha)
        raise CalibrationError(
            f"alpha={alpha:g} needs at least {need} calibration samples, got {n}: "
            f"calibrate on more normal data, or choose alpha >= {1.0 / (n + 1):.4g}"
        )
    return float(s[k - 1])


def conformal_p_values(scores: np.ndarray, calibration_scores: np.ndarray) -> np.ndarray:
    """(1 + #{calibration >= s}) / (n + 1) for each score s: in (0, 1], small = anomalous."""
    cal = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    s = np.asarray(scores, dtype=np.float64)
    n_ge = cal.size - np.searchsorted(cal, s, side="left")
    p = (1.0 + n_ge) / (cal.size + 1.0)
    return np.where(np.isnan(s), np.nan, p)


def contamination_threshold(scores: np.ndarray, contamination: float) -> float:
    """The (1 - contamination) quantile of ``scores`` (the fit data's own scores, as in
    IsolationForest): flags about that fraction of the data it was computed on. No false-alarm
    guarantee: use it when the training data are known to hold that share of anomalies."""
    contamination = _check_contamination(contamination)
    return float(np.percentile(np.asarray(scores, dtype=np.float64), 100.0 * (1.0 - contamination)))


def best_f1_threshold(scores: np.ndarray, is_anomaly: np.ndarray) -> tuple[float, float]:
    """The threshold that maximises F1 for labelled data (``is_anomaly`` true for anomalies), as
    ``(threshold, f1)``; flag ``score > threshold``. Optimistic on the data it was chosen on."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_anomaly).astype(bool)
    if s.shape != y.shape or s.size == 0:
        raise ValueError(f"scores and labels must be non-empty and of the same length, got {s.shape} and {y.shape}")
    if y.all() or not y.any():
        raise ValueError("labels must contain both normal and anomalous samples to choose a best-F1 threshold")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    # only cut between distinct scores: flagging the top i means threshold = the next lower score
    last_of_run = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    f1 = 2 * tp / (tp + fp + y.sum())
    f1 = np.where(last_of_run, f1, -1.0)
    i = int(np.argmax(f1))
    threshold = float(s_sorted[i + 1]) if i + 1 < s.size else float(np.nextafter(s_sorted[i], -np.inf))
    return threshold, float(f1[i])
