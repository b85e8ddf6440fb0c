"""The executor side of Spark scoring: what ``mapInPandas`` runs in each Python worker. The model
is loaded once per worker from the directory the driver shipped, after checking its card is the
one the driver checked; input frames are regrouped by bytes and scored by ``batch.score_chunk``."""

from __future__ import annotations

import csv as _csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO, StringIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..artifact import JSON_NAME
from ..batch import explain_columns, result_frame, score_chunk
from ..exceptions import ArtifactError, InputError
from ..io import Chunk
from ..io.tables import NA_VALUES

if TYPE_CHECKING:
    from ..detector import VAEAnomalyDetector

__all__ = ["ROW_COLUMN", "CORRUPT_COLUMN", "CsvLayout", "card_digest", "executor_detector", "rebatch", "table_scorer", "image_scorer",
           "local_path", "relative", "glob_escaped"]

ROW_COLUMN = "_anomaly_vae_row"
"""The column of row numbers the driver adds when there is no id column."""
CORRUPT_COLUMN = "_anomaly_vae_corrupt_record"
"""Where the CSV reader puts a line it could not split into the header's fields."""


@dataclass(frozen=True)
class CsvLayout:
    """How a CSV input was read: its delimiter and header (to parse a corrupt record again)."""

    sep: str
    header: tuple[str, ...]


_LOADED: dict[str, VAEAnomalyDetector] = {}  # per Python worker: sha256 of the card -> detector


def card_digest(model_dir: Path) -> str:
    with open(model_dir / JSON_NAME, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def executor_detector(name: str, digest: str, alpha: float | None) -> VAEAnomalyDetector:
    """The shipped model, loaded once per Python worker, after checking it is the one the driver checked."""
    det = _LOADED.get(digest)
    if det is None:
        from pyspark import SparkFiles

        from ..detector import load_detector

        path = Path(SparkFiles.get(name))
        got = card_digest(path)
        if got != digest:
            raise ArtifactError(f"{path / JSON_NAME}: sha256 {got} on this executor, but the driver shipped "
                                f"{digest}: the model was changed in transit or in storage")
        det = _LOADED[digest] = load_detector(path)
    if alpha is not None and det.alpha_ != alpha:
        det.set_alpha(alpha)
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        cpus = int(ctx.cpus()) if ctx is not None else 1
    except Exception:  # an older PySpark without TaskContext.cpus
        cpus = 1
    det.n_threads = max(1, cpus)  # the task's cores, not the machine's: other tasks share it
    return det


def rebatch(frames: Iterator[pd.DataFrame], batch_bytes: int) -> Iterator[pd.DataFrame]:
    """Merge small frames and split large ones to about ``batch_bytes`` of memory each, in order."""
    held: list[pd.DataFrame] = []
    size = 0
    for frame in frames:
        if len(frame) == 0:
            continue
        per_row = max(1.0, frame.memory_usage(index=False, deep=False).sum() / len(frame))
        rows = max(1, int(batch_bytes / per_row))
        start = 0
        while start < len(frame):
            need = max(1, int((batch_bytes - size) / per_row))
            piece = frame.iloc[start : start + need]
            start += len(piece)
            held.append(piece)
            size += int(len(piece) * per_row)
            if size >= batch_bytes or len(piece) >= rows:
                yield pd.concat(held, ignore_index=True) if len(held) > 1 else held[0].reset_index(drop=True)
                held, size = [], 0
    if held:
        yield pd.concat(held, ignore_index=True) if len(held) > 1 else held[0].reset_index(drop=True)


def table_scorer(name: str, digest: str, alpha: float | None, columns: list[str], id_name: str, id_source: str,
                  explain: int, score: str | None, csv: CsvLayout | None, batch_bytes: int) -> Any:
    """The function ``mapInPandas`` runs: frames of input rows in, frames of output rows out. For
    CSV input (``csv``), the missing-value spellings of text columns are missing, and a row Spark
    could not parse (``CORRUPT_COLUMN``) is parsed again from its text, as ``anomaly-vae score``
    parses a line: the wrong number of fields is the row's error, and otherwise its fields go to
    the core as text, which parses them or says which is not a number."""

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        det = executor_detector(name, digest, alpha)
        names = explain_columns(det, explain)
        cal = np.sort(det.calibration_scores_)
        for pdf in rebatch(frames, batch_bytes):
            errors: list[str | None] = [None] * len(pdf)
            data = pdf[columns]
            if csv is not None:
                data, errors = _csv_rows(pdf, data, columns, csv)
            ids = pdf[id_source].tolist()
            sc = score_chunk(det, Chunk(0, ids, data, errors), explain, score)
            out, _ = result_frame(det, sc, id_name, names, cal, numbered=id_source == ROW_COLUMN)
            yield out

    return run


def _csv_rows(pdf: pd.DataFrame, data: pd.DataFrame, columns: list[str],
              csv: CsvLayout) -> tuple[pd.DataFrame, list[str | None]]:
    errors: list[str | None] = [None] * len(pdf)
    text = [c for c in columns if not pd.api.types.is_float_dtype(data[c])]
    if text:  # as the one-process reader: these spellings are missing values
        data = data.copy()
        data[text] = data[text].mask(data[text].isin(NA_VALUES))
    corrupt = np.flatnonzero(pdf[CORRUPT_COLUMN].notna().to_numpy())
    if len(corrupt) == 0:
        return data, errors
    data = data.astype(object)  # the re-parsed rows hold text until the core parses it
    where = {name: k for k, name in enumerate(csv.header)}
    for i in corrupt:
        record = str(pdf[CORRUPT_COLUMN].iat[i])
        if record.count('"') % 2:  # half of a quoted field cut at a line break: rows would shift
            raise InputError(f"a CSV record has an unbalanced quote ({_clip(record)}): a quoted field holds a line "
                             "break (read the input with --multiline-csv) or a quote is not closed")
        fields = next(_csv.reader(StringIO(record, newline=""), delimiter=csv.sep), [])
        if len(fields) != len(csv.header):
            errors[i] = (f"malformed CSV record: expected {len(csv.header)} fields, found {len(fields)} "
                         f"({_clip(record)})")
            data.iloc[i] = None
            continue
        data.iloc[i] = [None if fields[where[c]] in NA_VALUES else fields[where[c]] for c in columns]
    return data, errors


def _clip(text: Any, n: int = 80) -> str:
    s = str(text).rstrip("\r\n")
    return repr(s if len(s) <= n else s[:n] + "...")


def image_scorer(name: str, digest: str, alpha: float | None, root: str, shown_root: str, explain: int,
                 score: str | None, batch_bytes: int) -> Any:
    """``mapInPandas``'s function for ``binaryFile`` rows: each file decoded as ``anomaly-vae score``
    decodes it (its error names it as ``shown_root``/its relative path, as there)."""
    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from ..io.images import _decode_image, _pil

        det = executor_detector(name, digest, alpha)
        names = explain_columns(det, explain)
        cal = np.sort(det.calibration_scores_)
        pre = det.preprocessor_
        Image = _pil()
        for pdf in rebatch(frames, batch_bytes):
            ids = [relative(p, root) for p in pdf["path"]]
            images, errors = [], []
            for rel, content in zip(ids, pdf["content"]):
                try:
                    images.append(_decode_image(Image, BytesIO(content), Path(shown_root) / rel,
                                                (pre.height, pre.width), pre.channels))
                    errors.append(None)
                except InputError as err:
                    errors.append(str(err))
            data = np.stack(images) if images else None
            sc = score_chunk(det, Chunk(0, ids, data, errors), explain, score)
            out, _ = result_frame(det, sc, "path", names, cal)
            yield out

    return run


def local_path(uri: str) -> str:
    """The local path of a ``file:`` URI as Spark writes one (not percent-encoded: a name with
    ``%``, ``?`` or ``#`` is kept as it is); any other string unchanged."""
    if uri.startswith("file://"):
        return uri[len("file://"):] if uri[len("file://"):].startswith("/") else uri
    if uri.startswith("file:"):
        return uri[len("file:"):]
    return uri


def on_another_file_system(path: str) -> bool:
    """Whether ``path`` names a file system other than this machine's by its scheme (hdfs://,
    s3a://, ...); a ``file:`` URI and a path without a scheme are local."""
    return "://" in path and not path.startswith("file:")


def relative(uri: str, root: str) -> str:
    """A file's path relative to the scored folder (POSIX), as ``anomaly-vae score`` names it."""
    path = local_path(uri)
    return path[len(root):].lstrip("/") if path.startswith(root) else path


def glob_escaped(path: str) -> str:
    """A local path with Hadoop's glob characters escaped, so that Spark reads that very file."""
    if on_another_file_system(path):
        return path
    return "".join("\\" + ch if ch in "[]{}*?" else ch for ch in path)
