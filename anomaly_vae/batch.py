"""Batch scoring of files and folders, streaming: read a chunk, score it, write it, and the next.

``score_file`` is the one score job: the command line (``anomaly-vae score``), the service's
``/score_csv`` and Python callers all run it. ``open_for_model`` opens a file or folder the way a
model reads it; ``iter_scored`` scores a reader's chunks, for callers that write elsewhere.

Every input row (or image file) gives exactly one output row, in input order. A row that cannot
be scored keeps its place with empty scores and its ``error``; the rest of the job goes on.
Problems of the whole input (a missing column, a model without a usable threshold) stop the job
before anything is written.
"""

from __future__ import annotations

import os

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .calibration import conformal_p_values
from .exceptions import InputError
from .io import ARRAY_FORMATS, TABLE_FORMATS, Chunk, ChunkData, ChunkReader, ResultWriter, data_kind, open_data

if TYPE_CHECKING:
    from .detector import VAEAnomalyDetector

__all__ = ["ScoredChunk", "BatchSummary", "open_for_model", "check_reader", "iter_scored", "score_chunk", "explain_columns",
           "result_frame", "empty_result_frame", "score_to_file", "score_file", "RESULT_COLUMNS", "image_regions"]

RESULT_COLUMNS = ("score", "p_value", "is_anomaly", "threshold", "error")


@dataclass
class ScoredChunk:
    chunk: Chunk
    scores: np.ndarray  # (n,) NaN where not scored
    errors: list[str | None]
    explain: pd.DataFrame | None = None


@dataclass
class BatchSummary:
    rows: int = 0
    scored: int = 0
    anomalies: int = 0
    errors: int = 0
    alpha: float | None = None
    threshold: float = float("nan")
    seconds: float = 0.0
    output: Path | None = None
    skipped_files: int = 0
    id_name: str = "row"  # the output's id column: "row", "path" (image folders) or the input's id column
    first_errors: list[tuple[Any, str]] = field(default_factory=list)

    @property
    def anomaly_rate(self) -> float:
        return self.anomalies / self.scored if self.scored else float("nan")

    def add(self, ids: list[Any], errors: list[str | None], flagged: np.ndarray) -> None:
        self.rows += len(ids)
        bad = [(i, e) for i, e in zip(ids, errors) if e is not None]
        self.errors += len(bad)
        self.scored += len(ids) - len(bad)
        self.anomalies += int(flagged.sum())
        self.first_errors.extend(bad[: max(0, 5 - len(self.first_errors))])


def image_regions(height: int, width: int, grid: int = 4) -> list[tuple[str, slice, slice]]:
    """A grid x grid partition of an image: (name "y0-6,x7-13", rows, cols), inclusive bounds."""
    ys = np.linspace(0, height, min(grid, height) + 1).round().astype(int)
    xs = np.linspace(0, width, min(grid, width) + 1).round().astype(int)
    return [(f"y{y0}-{y1 - 1},x{x0}-{x1 - 1}", slice(y0, y1), slice(x0, x1))
            for y0, y1 in zip(ys[:-1], ys[1:]) for x0, x1 in zip(xs[:-1], xs[1:])]


def _top_k(contrib: np.ndarray, names: list[str], k: int) -> pd.DataFrame:
    """Columns top1_feature, top1_nats, ..., topK_*: the largest contributions, largest first."""
    k = min(k, contrib.shape[1])
    order = np.argsort(-contrib, axis=1, kind="stable")[:, :k]
    out: dict[str, np.ndarray] = {}
    names_arr = np.asarray(names, dtype=object)
    for j in range(k):
        out[f"top{j + 1}_feature"] = names_arr[order[:, j]]
        out[f"top{j + 1}_nats"] = np.take_along_axis(contrib, order[:, j : j + 1], axis=1)[:, 0]
    return pd.DataFrame(out)


def _explain(det: VAEAnomalyDetector, data: ChunkData, k: int) -> pd.DataFrame:
    per = det.feature_scores(data)
    if det.input_kind_ == "image":
        per = np.asarray(per).sum(axis=1)  # (n, H, W): channels summed
        regions = image_regions(per.shape[1], per.shape[2])
        contrib = np.stack([per[:, ys, xs].sum(axis=(1, 2)) for _, ys, xs in regions], axis=1)
        return _top_k(contrib, [name for name, _, _ in regions], k)
    per = pd.DataFrame(per) if not isinstance(per, pd.DataFrame) else per
    return _top_k(per.to_numpy(), [str(c) for c in per.columns], k)


def _prefetch(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """Read the next chunk in a thread while the current one is scored (torch releases the GIL)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="anomaly-vae-read") as pool:
        pending = pool.submit(next, chunks, None)
        while True:
            chunk = pending.result()
            if chunk is None:
                return
            pending = pool.submit(next, chunks, None)
            yield chunk


def open_for_model(det: VAEAnomalyDetector, data: str | Path, *, sep: str | None = None, id_column: str | None = None,
                   batch_size: int = 16384, labels: bool = False, label_column: str | None = None) -> ChunkReader:
    """A chunk reader for ``data`` set up for ``det``: its categorical columns read as text (so that
    "007" stays "007"), its image size and channels. ``labels`` reads an image folder's first-level
    subfolders as labels; ``label_column`` names a table's (or an .npz's) label column."""
    fmt = data_kind(data)
    if det.input_kind_ == "image":
        pre = det.preprocessor_
        return open_data(data, batch_size=batch_size, image_size=(pre.height, pre.width), channels=pre.channels,
                         labels_from_folders=labels and fmt == "images",
                         label_column=label_column if fmt in ARRAY_FORMATS else None)
    if fmt == "images":
        raise InputError(f"{data} is a folder of images, but this model scores tables")
    dtypes: dict[str, type | str] = {c["name"]: str for c in det.preprocessor_.columns if c["type"] == "categorical"}
    return open_data(data, batch_size=batch_size, sep=sep, id_column=id_column, dtypes=dtypes,
                     label_column=label_column)


def check_reader(det: VAEAnomalyDetector, reader: ChunkReader) -> None:
    """Raise ``InputError`` when ``det`` cannot score what ``reader`` reads: images for a table model
    or the reverse, a table without one of the model's columns, an array of the wrong width."""
    if det.input_kind_ == "table":
        if reader.kind == "image":
            raise InputError(f"{reader.path}: this model scores tables, not images")
        if reader.columns is not None and getattr(det, "feature_names_in_", None) is not None:
            det.preprocessor_.select(pd.DataFrame(columns=reader.columns))  # a missing column stops the job here
        elif (reader.columns is not None and len(reader.columns) != det.n_features_in_
              and reader.format in ARRAY_FORMATS):
            raise InputError(f"{reader.path}: the array has {len(reader.columns)} columns, the model expects "
                             f"{det.n_features_in_}")
    elif reader.kind != "image":
        raise InputError(f"{reader.path}: this model scores images: give a folder of images or an "
                         ".npy / .npz array of images")


def iter_scored(det: VAEAnomalyDetector, reader: ChunkReader, explain: int = 0,
                score: str | None = None) -> Iterator[ScoredChunk]:
    """Score ``reader``'s chunks with ``det``; see the module docstring for the rules."""
    check_reader(det, reader)
    # the detector scores dense models on one thread (the other core is the reader's and writer's)
    # and conv models on torch's threads, block by block: see VAEAnomalyDetector.n_threads
    yield from _score_chunks(det, reader, explain, score)


def _score_chunks(det: VAEAnomalyDetector, reader: ChunkReader, explain: int,
                  score: str | None) -> Iterator[ScoredChunk]:
    for chunk in _prefetch(iter(reader)):
        yield score_chunk(det, chunk, explain, score)


def score_chunk(det: VAEAnomalyDetector, chunk: Chunk, explain: int = 0, score: str | None = None) -> ScoredChunk:
    """Score one chunk: its readable rows through ``det.anomaly_score_rows``; a row that was not read,
    or that the model refuses, keeps its place with NaN and its error."""
    n = len(chunk)
    scores = np.full(n, np.nan)
    errors = list(chunk.errors)
    good = np.array([e is None for e in errors], dtype=bool)
    explained = None
    data = chunk.readable()
    if data is not None:
        s, errs = det.anomaly_score_rows(data, score=score)
        scores[good] = s
        idx = np.flatnonzero(good)
        for j, e in zip(idx, errs):
            if e is not None:
                errors[j] = e
        if explain:
            ok = np.array([e is None for e in errs], dtype=bool)
            explained = pd.DataFrame(index=range(n))
            if ok.any():
                sub = data if ok.all() else data[ok]
                top = _explain(det, sub, explain)
                top.index = idx[ok]
                explained = explained.join(top)
    elif explain:
        explained = pd.DataFrame(index=range(n))
    return ScoredChunk(chunk, scores, errors, explained)


def explain_columns(det: VAEAnomalyDetector, explain: int) -> list[str]:
    """The ``--explain`` output columns: top1_feature, top1_nats, ... (at most one per feature or region)."""
    if not explain:
        return []
    if det.input_kind_ == "image":
        width = len(image_regions(det.preprocessor_.height, det.preprocessor_.width))
    else:
        width = len(det.preprocessor_.columns)
    return [f"top{j}_{kind}" for j in range(1, min(explain, width) + 1) for kind in ("feature", "nats")]


def result_frame(det: VAEAnomalyDetector, sc: ScoredChunk, id_name: str, explain_names: list[str],
                 cal_scores: np.ndarray, numbered: bool | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """The output rows of a scored chunk, with the same columns and types for every chunk (see
    ``score_to_file``), and which rows are flagged. ``cal_scores``: the sorted calibration scores.
    ``numbered``: the ids are row numbers (int64), not an id column's values (strings); None means
    ``id_name == "row"``."""
    numbered = id_name == "row" if numbered is None else numbered
    scored = ~np.isnan(sc.scores)
    p = np.full(len(scored), np.nan)
    p[scored] = conformal_p_values(sc.scores[scored], cal_scores)
    flagged = scored & (np.nan_to_num(sc.scores, nan=-np.inf) > det.threshold_)
    df = pd.DataFrame({
        id_name: np.asarray(sc.chunk.ids, dtype=np.int64) if numbered else pd.array(sc.chunk.ids),
        "score": sc.scores,
        "p_value": p,
        "is_anomaly": pd.array(np.where(scored, flagged, False), dtype="boolean"),
        "threshold": np.full(len(scored), det.threshold_),
        "error": pd.array(sc.errors, dtype="string"),  # empty (null) when scored
    })
    df.loc[~scored, "is_anomaly"] = pd.NA
    if not numbered:
        df[id_name] = df[id_name].astype("string")  # one schema for every chunk
    if explain_names:
        ex = sc.explain.reindex(columns=explain_names)  # same columns in every chunk
        for c in explain_names:
            df[c] = ex[c].astype("string" if c.endswith("_feature") else np.float64).to_numpy()
    return df, flagged


def empty_result_frame(id_name: str, explain_names: list[str], numbered: bool | None = None) -> pd.DataFrame:
    """A result frame with no rows: the columns and types of ``result_frame``."""
    numbered = id_name == "row" if numbered is None else numbered
    empty = {c: pd.Series(dtype="float64") for c in (id_name, *RESULT_COLUMNS, *explain_names)}
    empty.update({id_name: pd.Series(dtype="int64" if numbered else "string"),
                  "is_anomaly": pd.Series(dtype="boolean"), "error": pd.Series(dtype="string")})
    empty.update({c: pd.Series(dtype="string") for c in explain_names if c.endswith("_feature")})
    return pd.DataFrame(empty)


def score_to_file(det: VAEAnomalyDetector, reader: ChunkReader, out: str | Path, *, id_name: str = "row", explain: int = 0,
                  score: str | None = None, progress: Callable[[int], None] | None = None,
                  observe: Callable[[np.ndarray, np.ndarray], None] | None = None,
                  numbered: bool | None = None) -> BatchSummary:
    """Stream ``reader`` through ``det`` into ``out`` (.csv or .parquet), atomically.

    Output columns: ``id_name``, score, p_value, is_anomaly, threshold, error, and with ``explain``
    the top-K features or image regions (``top1_feature``, ``top1_nats``, ...). The threshold is
    the detector's current one; it must be finite. ``observe(scores, flagged)`` is called per chunk
    with the scores of the rows that were scored (for metrics)."""
    det.check_threshold()  # no usable threshold: CalibrationError before anything is read
    start = time.perf_counter()
    summary = BatchSummary(alpha=det.alpha_, threshold=float(det.threshold_), skipped_files=reader.skipped,
                           id_name=id_name)
    cal_scores = np.sort(det.calibration_scores_)
    explain_names = explain_columns(det, explain)
    with ResultWriter(Path(out)) as writer, ThreadPoolExecutor(1, thread_name_prefix="anomaly-vae-write") as pool:
        pending = None  # the previous chunk's write, overlapping this chunk's scoring
        for sc in iter_scored(det, reader, explain=explain, score=score):
            df, flagged = result_frame(det, sc, id_name, explain_names, cal_scores, numbered)
            scored = ~np.isnan(sc.scores)
            if pending is not None:
                pending.result()
            pending = pool.submit(writer.write, df)
            summary.add(sc.chunk.ids, sc.errors, flagged)
            if observe is not None:
                observe(sc.scores[scored], flagged[scored])
            if progress is not None:
                progress(len(sc.chunk))
        if pending is not None:
            pending.result()
        if summary.rows == 0:  # a header-only input still gives a well-formed (empty) output
            writer.write(empty_result_frame(id_name, explain_names, numbered))
        summary.output = writer.commit()
    summary.seconds = time.perf_counter() - start
    return summary


def score_file(det: VAEAnomalyDetector, data: str | Path, out: str | Path, *, id_column: str | None = None, sep: str | None = None,
               explain: int = 0, score: str | None = None, batch_size: int = 16384,
               progress: Callable[[int, int | None], None] | None = None,
               observe: Callable[[np.ndarray, np.ndarray], None] | None = None) -> BatchSummary:
    """Score every row of ``data`` (CSV / TSV, Parquet, .npy / .npz, or a folder of images) with ``det``
    into ``out`` (.csv or .parquet), streaming and atomically: the job of ``anomaly-vae score``.

    Parameters
    ----------
    det : a fitted detector with a usable threshold (else ``CalibrationError`` before anything is read).
    data, out : input path and output path.
    id_column : table column copied to the output as the id (CSV and Parquet only); without it the id
        column is ``row`` (0-based row number), or ``path`` for an image folder.
    sep : CSV delimiter; None sniffs it.
    explain : add the ``explain`` features or image regions that contribute most to each score.
    score : score kind; None is the model's.
    batch_size : rows read and scored at a time.
    progress : called as ``progress(rows_done_in_this_chunk, total_rows_or_None)`` after each chunk.
    observe : called as ``observe(scores, flagged)`` with the scored rows of each chunk (metrics).

    Returns
    -------
    BatchSummary : rows, scored, anomalies, errors (and the first five), threshold, seconds, output.
    """
    fmt = data_kind(data)
    if id_column and fmt not in TABLE_FORMATS:
        raise InputError(f"{data}: an id column is for CSV and Parquet tables, not {fmt} data")
    if Path(out).exists() and Path(data).exists() and os.path.samefile(out, data):
        raise InputError(f"{out}: the output is the input file ({data}): it would replace the data it is "
                         "reading; give another --out")
    det.check_threshold()  # before reading anything: no usable threshold is a fatal error
    reader = open_for_model(det, data, sep=sep, id_column=id_column, batch_size=batch_size)
    total = reader.n_rows
    try:
        return score_to_file(det, reader, out, id_name=id_column or ("path" if fmt == "images" else "row"),
                             numbered=id_column is None and fmt != "images",
                             explain=explain, score=score, observe=observe,
                             progress=None if progress is None else (lambda n: progress(n, total)))
    finally:
        reader.close()
