"""Figures with matplotlib, headless (Agg). Needs the ``plots`` extra: pip install 'anomaly-vae[plots]'.

``draw(kind, ...)`` draws any of ``KINDS``; ``pyplot`` and ``show_image`` are for the examples' own
figures. It is a little longer than the package's few-hundred-line rule: one short function per
figure kind (eight) and their dispatch, which read best side by side.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .exceptions import AnomalyVAEError
from .io import ChunkData, atomic_output

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .detector import VAEAnomalyDetector

__all__ = ["score_histogram", "roc_figure", "save_evaluation_plots", "KINDS", "MODEL_ONLY_KINDS", "needs_data",
           "draw", "PlotOptionError", "latent_figure", "grid_figure", "morph_figure", "reconstructions_figure",
           "scores_figure", "history_figure", "features_figure", "tile_images", "pyplot", "show_image"]

KINDS = ("latent", "grid", "morph", "reconstructions", "scores", "roc", "history", "features")
MODEL_ONLY_KINDS = ("grid", "history")  # drawn from the model alone; the other kinds draw data too


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (an error saying how to install matplotlib
    when it is missing): what every figure here draws with, and the examples too."""
    try:
        import matplotlib
    except ImportError:
        raise AnomalyVAEError("plots need matplotlib: pip install 'anomaly-vae[plots]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _bins(finite: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """60 bins over the 0.5-99.5% range of the scores (widened to show the threshold), and the
    scores clipped to that range."""
    lo, hi = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
    if np.isfinite(threshold):
        lo, hi = min(lo, threshold), max(hi, threshold)
    return np.linspace(lo, hi + 1e-9, 60), np.clip(finite, lo, hi)


def score_histogram(scores: np.ndarray, is_anomaly: np.ndarray | None, threshold: float, alpha: float | None) -> Any:
    """Histogram of anomaly scores (normal and anomalous apart when labels are given) with the
    threshold marked. Returns the matplotlib Figure."""
    plt = pyplot()
    scores = np.asarray(scores, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    finite = scores[np.isfinite(scores)]
    bins, clipped = _bins(finite, threshold)
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

    plt = pyplot()
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
    plt = pyplot()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    y = np.asarray(is_anomaly, dtype=bool)
    if 0 < y.sum() < len(y):
        fig = roc_figure(scores, y, threshold)
        with atomic_output(out / "roc.png") as tmp:  # a stopped run leaves no half figure
            fig.savefig(tmp, format="png")
        plt.close(fig)
        written.append(out / "roc.png")
    fig = score_histogram(scores, y, threshold, alpha)
    with atomic_output(out / "scores.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    written.append(out / "scores.png")
    return written


# -- the model's pictures --------------------------------------------------------------------
def _image_model(det: Any, kind: str) -> None:
    if det.input_kind_ != "image":
        raise AnomalyVAEError(f"'{kind}' draws images, and this model scores tables"
                              + ("; 'features' shows a table row's contributions" if kind == "reconstructions" else ""))


def _as_pixels(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N, H, W) grey or (N, H, W, 3) colour, for imshow."""
    x = np.asarray(x)
    return x[:, 0] if x.shape[1] == 1 else np.moveaxis(x, 1, -1)


def tile_images(x: np.ndarray, rows: int, cols: int, gap: int = 1) -> np.ndarray:
    """(rows * cols, C, H, W) images as one (rows * (H + gap) - gap, cols * (W + gap) - gap[, 3]) mosaic."""
    px = _as_pixels(x)
    h, w = px.shape[1:3]
    out = np.ones((rows * (h + gap) - gap, cols * (w + gap) - gap, *px.shape[3:]), dtype=np.float32)
    for i in range(min(len(px), rows * cols)):
        r, c = divmod(i, cols)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = px[i]
    return out


def show_image(ax: Any, img: np.ndarray, title: str | None = None) -> None:
    """Draw one image (H, W) or (H, W, 3) in [0, 1] on ``ax``, without ticks, with an optional title."""
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _class_order(labels: np.ndarray) -> list[str]:
    """Numbers in numeric order, other labels alphabetically."""
    values = sorted(set(labels))
    try:
        return sorted(values, key=float)
    except ValueError:
        return values


def _prepared(det: Any, X: Any) -> np.ndarray:
    return det.preprocess(X)


def latent_figure(det: Any, X: Any, labels: list[Any] | None = None, max_points: int = 5000, seed: int = 0,
                  ax: Any = None, title: str | None = None) -> Any:
    """The posterior means of ``X`` in the latent plane, coloured by ``labels`` when given. A
    latent space with more than two dimensions is shown on its first two principal components
    (the axes say so, with the share of variance each holds). Draws into ``ax`` when given (to put
    maps side by side); returns the Figure."""
    plt = pyplot()
    z = det.encode(X)
    lab = None if labels is None else np.asarray([str(v) for v in labels], dtype=object)
    if len(z) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(z), max_points, replace=False))
        z, lab = z[keep], (None if lab is None else lab[keep])
    if z.shape[1] > 2:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed).fit(z)
        z = pca.transform(z)
        names = [f"principal component {i + 1} of z ({v:.0%} of its variance)" for i, v in enumerate(pca.explained_variance_ratio_)]
        what = f"{det.model_.latent_dim}-D latent space, first two principal components"
    elif z.shape[1] == 2:
        names, what = ["z1", "z2"], "2-D latent space"
    else:
        z = np.column_stack([z[:, 0], np.zeros(len(z))])
        names, what = ["z1", ""], "1-D latent space"
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100) if ax is None else (ax.figure, ax)
    if lab is None:
        ax.scatter(z[:, 0], z[:, 1], s=4, alpha=0.6, color="tab:blue")
    else:
        classes = _class_order(lab)
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, c in enumerate(classes[:20]):
            m = lab == c
            ax.scatter(z[m, 0], z[m, 1], s=4, alpha=0.6, color=cmap(i % cmap.N), label=f"{c} ({int(m.sum())})")
        ax.legend(markerscale=4, fontsize=8, loc="best", title="label")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(title or f"Posterior means of {len(z)} samples, {what}")
    fig.tight_layout()
    return fig


def grid_figure(det: Any, n: int = 15, seed: int = 0, ax: Any = None, title: str | None = None) -> Any:
    """Decoded images: with a 2-D latent, over an n x n grid of latent coordinates at the standard
    normal's quantiles 5%..95% (so the grid covers where the prior puts its mass); otherwise n x n
    samples from the prior."""
    _image_model(det, "grid")
    plt = pyplot()
    k = det.model_.latent_dim
    if k == 2:
        from scipy.stats import norm

        q = norm.ppf(np.linspace(0.05, 0.95, n))
        zz = np.array([[x, y] for y in q[::-1] for x in q])  # rows from top (high z2) to bottom
        what = f"Decoded over a {n} x {n} grid of the 2-D latent plane (z1 left to right, z2 top to bottom)"
    else:
        zz = np.random.default_rng(seed).standard_normal((n * n, k))
        what = f"{n * n} samples from the prior N(0, I) of the {k}-D latent space, decoded"
    mosaic = tile_images(det.decode(zz), n, n)
    size = min(9.0, max(4.0, n * 0.5))
    fig, ax = plt.subplots(figsize=(size, size), dpi=100) if ax is None else (ax.figure, ax)
    show_image(ax, mosaic)
    ax.set_title(title or what, fontsize=9)
    if k == 2:
        ax.set_xlabel(f"z1 from {q[0]:.2f} to {q[-1]:.2f}")
        ax.set_ylabel(f"z2 from {q[-1]:.2f} (top) to {q[0]:.2f}")
    fig.tight_layout()
    return fig


def morph_figure(det: Any, a: Any, b: Any, steps: int = 10) -> Any:
    """Decoded images along the straight line between the latent codes (posterior means) of two
    inputs ``a`` and ``b`` (one image each), with the inputs themselves at both ends."""
    _image_model(det, "morph")
    plt = pyplot()
    pair = np.concatenate([np.asarray(a)[None], np.asarray(b)[None]])
    za, zb = det.encode(pair)
    t = np.linspace(0.0, 1.0, steps)
    decoded = det.decode((1 - t)[:, None] * za + t[:, None] * zb)
    inputs = _prepared(det, pair)
    fig, axes = plt.subplots(1, steps + 2, figsize=(1.1 * (steps + 2), 1.8), dpi=100)
    px, dec = _as_pixels(inputs), _as_pixels(decoded)
    show_image(axes[0], px[0], "input A")
    for i in range(steps):
        show_image(axes[i + 1], dec[i], f"t={t[i]:.2f}")
    show_image(axes[-1], px[1], "input B")
    fig.suptitle("Interpolation in latent space: decode((1 - t) z_A + t z_B)", fontsize=9)
    fig.tight_layout()
    return fig


def reconstructions_figure(det: Any, X: Any, n: int = 6) -> Any:
    """The ``n`` most anomalous and the ``n`` most normal samples of ``X``: each input above its
    reconstruction (decoded posterior mean) and its per-pixel error map (-log p(x | z), nats)."""
    _image_model(det, "reconstructions")
    plt = pyplot()
    scores = det.anomaly_score(X)
    order = np.argsort(scores, kind="stable")
    n = min(n, len(order) // 2) or 1
    pick = np.concatenate([order[::-1][:n], order[:n]])
    sub = np.asarray(X)[pick]
    x = _prepared(det, sub)
    recon = det.decode(det.encode(sub))
    err = np.asarray(det.feature_scores(sub)).sum(axis=1)  # (m, H, W): channels summed
    fig, axes = plt.subplots(3, len(pick), figsize=(1.25 * len(pick), 4.4), dpi=100, squeeze=False)
    px, rc = _as_pixels(x), _as_pixels(recon)
    vmax = float(np.percentile(err, 99)) or 1.0
    for j, i in enumerate(pick):
        show_image(axes[0, j], px[j], f"{'anomalous' if j < n else 'normal'}\n{scores[i]:.1f} nats")
        show_image(axes[1, j], rc[j])
        axes[2, j].imshow(err[j], cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest")
        axes[2, j].set_xticks([])
        axes[2, j].set_yticks([])
    for row, name in enumerate(("input", "reconstruction", "error (nats, one scale)")):
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(f"The {n} highest and {n} lowest anomaly scores of {len(scores)} samples", fontsize=9)
    fig.tight_layout()
    return fig


def scores_figure(det: Any, X: Any, labels: list[Any] | None = None) -> Any:
    """Histogram of the anomaly scores of ``X``, one per class when ``labels`` are given, with
    the threshold and its alpha marked."""
    plt = pyplot()
    scores = det.anomaly_score(X)
    threshold, alpha = float(det.threshold_), det.alpha_
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    bins, clipped = _bins(scores, threshold)
    if labels is None:
        ax.hist(clipped, bins=bins, color="tab:blue", alpha=0.8, label=f"all ({len(scores)})")
        ax.set_ylabel("samples")
    else:
        lab = np.asarray([str(v) for v in labels], dtype=object)
        classes = _class_order(lab)[:20]
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, c in enumerate(classes):
            m = lab == c
            flagged = float((scores[m] > threshold).mean())
            ax.hist(clipped[m], bins=bins, histtype="step", linewidth=1.5, density=True, color=cmap(i % cmap.N),
                    label=f"{c} ({int(m.sum())}, {flagged:.0%} flagged)")
        ax.set_ylabel("density (each class)")
    if np.isfinite(threshold):
        ax.axvline(threshold, color="black", linestyle="--",
                   label=f"threshold {threshold:.4g}" + (f" (alpha {alpha:g})" if alpha is not None else ""))
    ax.set_xlabel(f"anomaly score ({det.score_kind_}, nats, higher = more anomalous; clipped to the 0.5-99.5% range)")
    ax.set_title("Anomaly scores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def history_figure(det: Any) -> Any:
    """The loss terms per epoch: the objective (and its validation value), then the three
    log-terms of the ELBO, log p(x|z), log p(z) and log q(z|x), averaged over the training data."""
    plt = pyplot()
    hist = det.history_
    if not hist:
        raise AnomalyVAEError("the model has no training history")
    ep = [h["epoch"] for h in hist]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for key, label in (("loss", "training loss"), ("val_loss", "validation loss"), ("recon", "-log p(x|z)"),
                       ("kl", "KL(q(z|x) || p(z))"), ("mmd", "MMD")):
        if key in hist[0]:
            a1.plot(ep, [h[key] for h in hist], label=label)
    a1.set_xlabel("epoch")
    a1.set_ylabel("nats per sample")
    a1.set_title("Objective and its terms")
    a1.legend(fontsize=8)
    for key, label in (("log_px", "log p(x|z)"), ("log_pz", "log p(z)"), ("log_qz", "log q(z|x)")):
        if key in hist[0]:
            a2.plot(ep, [h[key] for h in hist], label=label)
    a2.set_xlabel("epoch")
    a2.set_ylabel("nats per sample (mean)")
    a2.set_title("The ELBO's log-terms at z ~ q(z|x)")
    a2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def features_figure(det: Any, row: Any, top: int = 20) -> Any:
    """One table row's anomaly explained: each column's share of its reconstruction score
    (-log p(x | z = posterior mean), nats), largest first."""
    if det.input_kind_ != "table":
        raise AnomalyVAEError("'features' explains a table row; for images use 'reconstructions'")
    plt = pyplot()
    import pandas as pd

    frame = row if isinstance(row, pd.DataFrame) else pd.DataFrame([row])
    contrib = det.feature_scores(frame)
    values = np.asarray(contrib)[0]
    names = list(contrib.columns) if isinstance(contrib, pd.DataFrame) else det.preprocessor_.names
    order = np.argsort(-values, kind="stable")[:top]
    score = float(det.anomaly_score(frame)[0])
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.3 * len(order) + 1.2)), dpi=100)
    ax.barh([str(names[i]) for i in order][::-1], values[order][::-1], color="tab:red")
    ax.set_xlabel("contribution to -log p(x | z), nats")
    ax.set_title(f"Per-column contributions (reconstruction {values.sum():.1f} nats; {det.score_kind_} score "
                 f"{score:.1f}, threshold {det.threshold_:.1f})", fontsize=9)
    fig.tight_layout()
    return fig


# -- one figure by its name ----------------------------------------------------------------
class PlotOptionError(AnomalyVAEError, ValueError):
    """Options that do not fit the figure asked for: data missing, a sample index out of range,
    labels missing (the command line's usage errors)."""


def needs_data(kind: str) -> bool:
    """Whether the figure ``kind`` draws data (all but ``MODEL_ONLY_KINDS``)."""
    return kind not in MODEL_ONLY_KINDS


def draw(kind: str, det: VAEAnomalyDetector, X: ChunkData | None = None, labels: list[Any] | None = None, *,
         n: int | None = None, pair: tuple[int, int] = (0, 1), row: int | None = None, normal_label: Any = None,
         seed: int = 0) -> Figure:
    """The figure ``kind`` (one of ``KINDS``) of ``det`` and data ``X``, as ``anomaly-vae plot`` draws it.

    Parameters
    ----------
    X, labels : the data (a DataFrame, or (N, C, H, W) images) and its labels, for every kind but
        ``MODEL_ONLY_KINDS``; "roc" needs the labels, "latent" and "scores" use them when given.
    n : grid side (default 15), morph steps (10), reconstructions per side (6).
    pair, row, normal_label : the two samples "morph" goes between; the row "features" explains
        (default: the most anomalous); "roc"'s normal label (default "normal" if present, else 0).

    Raises ``PlotOptionError`` when the options do not fit (no data, an index out of range, no labels).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if X is None and needs_data(kind):
        raise PlotOptionError(f"plot {kind} needs DATA (a table or an image folder)")
    if kind == "latent":
        return latent_figure(det, X, labels, seed=seed)
    if kind == "grid":
        return grid_figure(det, n=n or 15, seed=seed)
    if kind == "morph":
        i, j = pair
        for v in (i, j):
            if not 0 <= v < len(X):
                raise PlotOptionError(f"--pair {i} {j}: DATA has {len(X)} samples (0..{len(X) - 1})")
        return morph_figure(det, X[i], X[j], steps=n or 10)
    if kind == "reconstructions":
        return reconstructions_figure(det, X, n=n or 6)
    if kind == "scores":
        return scores_figure(det, X, labels)
    if kind == "roc":
        from .evaluation import anomaly_labels, default_normal_label

        if labels is None:
            raise PlotOptionError("plot roc needs labels: --label-column for a table, subfolders for an image folder")
        y = anomaly_labels(labels, normal_label if normal_label is not None else default_normal_label(labels))
        return roc_figure(det.anomaly_score(X), y, det.threshold_)
    if kind == "history":
        return history_figure(det)
    row = row if row is not None else int(det.anomaly_score(X).argmax())  # features
    if not 0 <= row < len(X):
        raise PlotOptionError(f"--row {row}: DATA has {len(X)} rows (0..{len(X) - 1})")
    return features_figure(det, X.iloc[[row]] if hasattr(X, "iloc") else X[row : row + 1])
