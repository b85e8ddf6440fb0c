"""Figures with matplotlib, headless (Agg). Needs the ``plots`` extra: pip install 'anomaly-vae[plots]'."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .exceptions import AnomalyVAEError

__all__ = ["score_histogram", "roc_figure", "save_evaluation_plots"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise AnomalyVAEError("plots need matplotlib: pip install 'anomaly-vae[plots]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def score_histogram(scores: np.ndarray, is_anomaly: np.ndarray | None, threshold: float, alpha: float | None) -> Any:
    """Histogram of anomaly scores (normal and anomalous apart when labels are given) with the
    threshold marked. Returns the matplotlib Figure."""
    plt = _pyplot()
    scores = np.asarray(scores, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    finite = scores[np.isfinite(scores)]
    lo, hi = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
    if np.isfinite(threshold):
        lo, hi = min(lo, threshold), max(hi, threshold)
    bins = np.linspace(lo, hi + 1e-9, 60)
    clipped = np.clip(finite, lo, hi)
    if is_anomaly is None:
        ax.hist(clipped, bins=bins, color="tab:blue", alpha=0.8, label=f"all ({finite.size})")
    else:
        y = np.asarray(is_anomaly, dtype=bool)[np.isfinite(scores)]
        ax.hist(clipped[~y], bins=bins, color="tab:blue", alpha=0.6, density=True, label=f"normal ({int((~y).sum())})")
        ax.hist(clipped[y], bins=bins, color="tab:red", alpha=0.6, density=True, label=f"anomalous ({int(y.sum())})")
        ax.set_ylabel("density")
    if np.isfinite(threshold):
        label = f"threshold {threshold:.4g}" + (f" (alpha {alpha:g})" if alpha is not None else "")
        ax.axvline(threshold, color="black", linestyle="--", label=label)
    ax.set_xlabel("anomaly score (nats, higher = more anomalous; clipped to the 0.5-99.5% range)")
    if is_anomaly is None:
        ax.set_ylabel("samples")
    ax.set_title("Anomaly scores")
    ax.legend()
    fig.tight_layout()
    return fig


def roc_figure(scores: np.ndarray, is_anomaly: np.ndarray, threshold: float | None = None) -> Any:
    """ROC curve with its AUROC, and the operating point of ``threshold``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    y = np.asarray(is_anomaly, dtype=bool)
    fpr, tpr, _ = roc_curve(y, scores)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.plot(fpr, tpr, color="tab:blue", label=f"AUROC {roc_auc_score(y, scores):.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    if threshold is not None and np.isfinite(threshold):
        flagged = np.asarray(scores) > threshold
        ax.plot([flagged[~y].mean()], [flagged[y].mean()], "o", color="black", label="at the threshold")
    ax.set_xlabel("false-alarm rate (normal flagged)")
    ax.set_ylabel("detection rate (anomalies flagged)")
    ax.set_title("ROC curve")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def save_evaluation_plots(scores: np.ndarray, is_anomaly: np.ndarray, threshold: float, alpha: float | None,
                          folder: str | os.PathLike[str]) -> list[Path]:
    """Write ``roc.png`` (when both classes are present) and ``scores.png`` to ``folder``."""
    plt = _pyplot()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    y = np.asarray(is_anomaly, dtype=bool)
    if 0 < y.sum() < len(y):
        fig = roc_figure(scores, y, threshold)
        fig.savefig(out / "roc.png")
        plt.close(fig)
        written.append(out / "roc.png")
    fig = score_histogram(scores, y, threshold, alpha)
    fig.savefig(out / "scores.png")
    plt.close(fig)
    written.append(out / "scores.png")
    return written
