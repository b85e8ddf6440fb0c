"""The batch jobs behind the command line (train, evaluate, calibrate), as plain functions: read a
file or folder, call the detector, return numbers. The CLI parses arguments and prints; this module
does the work, so it is usable from Python too."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .batch import iter_scored, open_for_model
from .detector import VAEAnomalyDetector, load_detector
from .evaluation import anomaly_labels, default_normal_label, evaluate_scores
from .exceptions import InputError
from .io import (ARRAY_FORMATS, TABLE_FORMATS, ChunkData, ChunkReader, data_kind, image_mode_info, list_images, open_data,
                 read_all)

__all__ = ["DataOptions", "TrainResult", "load_data", "train_job", "evaluate_job", "calibrate_job", "model_reader",
           "read_for_model"]


@dataclass
class DataOptions:
    """How to read a data set: separator, label / id / dropped columns, image size and channels."""

    sep: str | None = None
    label_column: str | None = None
    normal_label: str | None = None
    id_column: str | None = None
    drop_columns: list[str] = field(default_factory=list)
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    batch_size: int = 16384

    @property
    def labelled(self) -> bool:
        return self.label_column is not None or self.normal_label is not None


def _image_geometry(folder: Path, opts: DataOptions) -> tuple[tuple[int, int], int]:
    """Size and channels for training on a folder: as given, else read from the files' headers."""
    paths, _ = list_images(folder)
    if not paths:
        raise InputError(f"{folder}: no image files in this folder or below")
    size, channels = opts.image_size, opts.channels
    if size is None or channels is None:
        info = [(p, *image_mode_info(p)) for p in paths]
        if size is None:
            sizes = {s for _, s, _ in info}
            if len(sizes) > 1:
                (p1, s1, _), (p2, s2, _) = info[0], next(i for i in info if i[1] != info[0][1])
                raise InputError(f"{folder}: the images have different sizes ({s1[0]}x{s1[1]} in {p1.name}, "
                                 f"{s2[0]}x{s2[1]} in {p2.name}): pass --image-size HxW")
            size = sizes.pop()
        if channels is None:
            channels = 1 if all(c == 1 for _, _, c in info) else 3
    return size, channels


def load_data(path: str | Path, opts: DataOptions,
              det: VAEAnomalyDetector | None = None) -> tuple[ChunkData, list[Any] | None]:
    """The whole data set in memory (for training and calibration): (X, labels or None).

    Tables come back as a DataFrame without the label, id and dropped columns; images as a
    (N, C, H, W) float32 array. With ``det`` the data is read the way that model reads it (its
    categorical columns as text, so that "007" stays "007"; its image size and channels);
    without, the image size and channels are ``opts``' or the files' own. Any unreadable row or
    file is an error here: a model must not be trained or calibrated on data that silently lost
    rows."""
    path = Path(path)
    kind = data_kind(path)
    if kind == "images" and opts.label_column is not None:
        raise InputError("--label-column is for tables and arrays; for an image folder the labels are the "
                         "first-level subfolder names: give only --normal-label")
    if kind == "npy" and opts.label_column is not None:
        raise InputError(f"{path}: a .npy file holds one array; put the labels in a .npz (--label-column names its key)")
    if kind in TABLE_FORMATS and opts.normal_label is not None and opts.label_column is None:
        raise InputError("--normal-label needs --label-column for a table")
    labels_from_folders = opts.normal_label is not None
    if det is not None:
        reader = open_for_model(det, path, sep=opts.sep, id_column=opts.id_column, batch_size=sys.maxsize,
                                labels=labels_from_folders, label_column=opts.label_column)
    else:
        size, channels = _image_geometry(path, opts) if kind == "images" else (None, 1)
        reader = open_data(path, batch_size=sys.maxsize, sep=opts.sep, id_column=opts.id_column,
                           label_column=opts.label_column, image_size=size, channels=channels,
                           labels_from_folders=labels_from_folders)
    chunk = read_all(reader)
    if kind in ARRAY_FORMATS and opts.normal_label is not None and chunk.labels is None:
        raise InputError("--normal-label needs --label-column (the key of the labels array in the .npz)")
    if not isinstance(chunk.data, pd.DataFrame):  # images, or an array's table
        return chunk.data, chunk.labels
    drop = [c for c in (opts.label_column, opts.id_column) if c] + list(opts.drop_columns)
    unknown = [c for c in opts.drop_columns if c not in chunk.data.columns]
    if unknown:
        raise InputError(f"{path}: --drop-columns names {unknown}, which are not in the header {list(chunk.data.columns)}")
    X = chunk.data.drop(columns=drop)
    if X.shape[1] == 0:
        raise InputError(f"{path}: no feature columns left after dropping {drop}")
    return X, chunk.labels


@dataclass
class TrainResult:
    detector: VAEAnomalyDetector
    n_rows: int
    n_train_rows: int
    holdout: dict[str, Any] | None
    seconds: float
    normal_label: str | None = None


def _take(X: ChunkData, idx: np.ndarray) -> ChunkData:
    return X.iloc[idx] if isinstance(X, pd.DataFrame) else X[idx]


def train_job(data: str | Path, out: str | Path, opts: DataOptions, params: dict[str, Any],
              test_size: float = 0.2, seed: int = 0) -> TrainResult:
    """Fit a detector on ``data`` and save it to ``out``.

    Unlabelled data is all taken as normal. With labels, the detector is trained and calibrated
    on normal rows only; ``test_size`` of the normal rows and every anomalous row are held out and
    scored, and the metrics (AUROC, AP, realized false-alarm and detection rates) are returned
    and stored in the model card."""
    start = time.perf_counter()
    X, labels = load_data(data, opts)
    n = len(X)
    holdout_idx = None
    normal_label = None
    if labels is not None:
        normal_label = opts.normal_label if opts.normal_label is not None else default_normal_label(labels)
        y = anomaly_labels(labels, normal_label)
        if y.all():
            raise InputError(f"no row has the normal label {normal_label!r}; labels seen: {sorted({str(v) for v in labels})[:10]}")
        rng = np.random.RandomState(seed)
        normal = np.flatnonzero(~y)
        rng.shuffle(normal)
        n_test = int(round(test_size * len(normal)))
        train_idx = np.sort(normal[n_test:])
        holdout_idx = np.sort(np.concatenate([normal[:n_test], np.flatnonzero(y)]))
        X_train = _take(X, train_idx)
    else:
        X_train = X
    det = VAEAnomalyDetector(**{**params, "random_state": seed}).fit(X_train)
    holdout = None
    if holdout_idx is not None and len(holdout_idx):
        scores = det.anomaly_score(_take(X, holdout_idx))
        holdout = evaluate_scores(scores, y[holdout_idx], det.threshold_, det.alpha_)
        holdout["normal_label"] = normal_label
        det.fit_info_["holdout"] = holdout
    det.save(out)
    return TrainResult(det, n, len(X_train), holdout, time.perf_counter() - start, normal_label)


def model_reader(det: VAEAnomalyDetector, data: str | Path, opts: DataOptions, labels: bool = False) -> ChunkReader:
    """``batch.open_for_model`` with the options of ``opts``."""
    return open_for_model(det, data, sep=opts.sep, id_column=opts.id_column, batch_size=opts.batch_size,
                          labels=labels, label_column=opts.label_column)


def read_for_model(det: VAEAnomalyDetector, data: str | Path, opts: DataOptions) -> tuple[ChunkData, list[Any] | None]:
    """All of ``data`` in memory, read as the model reads it (its categorical columns as text, its
    image size and channels), with labels when there are any (``opts.label_column`` for a table,
    the first-level subfolders of an image folder). Returns (X, labels or None); images as
    (N, C, H, W) float32. Any unreadable row is an error."""
    reader = model_reader(det, data, opts, labels=True)
    chunk = read_all(reader)
    labels = chunk.labels
    if labels is not None and len({str(v) for v in labels}) < 2 and reader.format == "images":
        labels = None  # a flat folder: no classes to tell apart
    return chunk.data, labels


def evaluate_job(model_dir: str | Path, data: str | Path, opts: DataOptions,
                 alpha: float | None = None) -> tuple[dict[str, Any], np.ndarray, np.ndarray, list[tuple[Any, str]]]:
    """Score labelled ``data`` with the model and measure it. Rows that cannot be scored are left
    out of the metrics and returned as (id, error). Returns (metrics, scores, is_anomaly, errors)."""
    det = load_detector(model_dir)
    if alpha is not None:
        det.set_alpha(alpha)
    scores, labels, errors = [], [], []
    with model_reader(det, data, opts, labels=True) as reader:
        for sc in iter_scored(det, reader):
            if sc.chunk.labels is None:
                raise InputError(f"{data}: no labels: give --label-column (tables, .npz) or an image folder "
                                 "with one subfolder per label")
            for i, (s, e) in enumerate(zip(sc.scores, sc.errors)):
                if e is None:
                    scores.append(s)
                    labels.append(sc.chunk.labels[i])
                else:
                    errors.append((sc.chunk.ids[i], e))
    if not scores:
        raise InputError(f"{data}: no row could be scored" + (f"; first error: {errors[0][1]}" if errors else ""))
    normal_label = opts.normal_label if opts.normal_label is not None else default_normal_label(labels)
    y = anomaly_labels(labels, normal_label)
    metrics = evaluate_scores(np.asarray(scores), y, det.threshold_, det.alpha_)
    metrics.update(normal_label=normal_label, rows=len(scores) + len(errors), errors=len(errors),
                   model=str(model_dir), data=str(data), score=det.score_kind_)
    return metrics, np.asarray(scores), y, errors


def calibrate_job(model_dir: str | Path, data: str | Path, opts: DataOptions,
                  alpha: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Replace the model's calibration scores with those of new normal ``data`` (with labels: its
    normal rows only) and re-choose the threshold; the model directory is rewritten in place, unless
    the new threshold is unusable (too few rows for alpha: ``after["error"]`` says why), which leaves
    it as it was. Returns (before, after) summaries."""
    det = load_detector(model_dir)
    X, labels = load_data(data, opts, det)  # as the model reads it: its categories, its image size
    if labels is not None:
        normal_label = opts.normal_label if opts.normal_label is not None else default_normal_label(labels)
        X = _take(X, np.flatnonzero(~anomaly_labels(labels, normal_label)))
    before = {"n": int(det.calibration_scores_.size), "alpha": det.alpha_, "threshold": det.threshold_}
    det.calibrate(X, alpha=alpha)
    if det.calibration_error_ is None:
        det.save(model_dir)
    after = {"n": int(det.calibration_scores_.size), "alpha": det.alpha_, "threshold": det.threshold_,
             "error": det.calibration_error_, "saved": det.calibration_error_ is None}
    return before, after
