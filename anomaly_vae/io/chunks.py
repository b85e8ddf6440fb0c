"""What every reader is and yields: the ``ChunkReader`` protocol and its ``Chunk``.

Every reader yields chunks that account for every input row (or file): a row that cannot be read
(a CSV line with the wrong number of fields, a corrupt image) is still there, with its error, so
the output has exactly one row per input row, in input order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
import pandas as pd

from ..exceptions import InputError
from .files import DataFormat

__all__ = ["InputKind", "ChunkData", "Chunk", "ChunkReader", "read_all"]

InputKind = Literal["table", "image"]
"""What a reader's rows are: table rows or images; the same words as ``VAEAnomalyDetector.input_kind_``."""

ChunkData = pd.DataFrame | np.ndarray
"""Rows as read: a DataFrame (CSV, Parquet), a 2-D array (.npy / .npz tables), or (n, C, H, W)
float32 images (image folders; 3-D / 4-D arrays as stored)."""

_Reader = TypeVar("_Reader", bound="ChunkReader")


@dataclass
class Chunk:
    """A run of consecutive input rows (or image files).

    ``data`` holds the rows that were read (a DataFrame for tables, a (n, C, H, W) float32 array
    for images), ``ids`` one identifier per row (row number, id-column value or file path), and
    ``errors`` one entry per row: None, or why the row could not be read (such a row is still in
    ``data``, as missing values, for tables; it is left out of ``data`` for images, so ``data``
    is None when no image of the chunk could be read).
    """

    start: int
    ids: list[Any]
    data: ChunkData | None
    errors: list[str | None]
    labels: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def readable(self) -> ChunkData | None:
        """The rows of ``data`` that were read without an error, in order (None if there are none)."""
        good = np.array([e is None for e in self.errors], dtype=bool)
        if not good.any():
            return None
        if good.all() or not isinstance(self.data, pd.DataFrame):
            return self.data  # images: an unreadable file is not in data
        return self.data[good]


@runtime_checkable
class ChunkReader(Protocol):
    """A reader of a file or folder, chunk by chunk: ``TableReader``, ``ArrayReader`` and
    ``ImageFolderReader`` are ones; ``open_data`` picks the one for a path.

    Attributes
    ----------
    path : the file or folder read.
    format : what ``data_kind`` found there: "csv", "parquet", "npy", "npz" or "images" (a folder).
    kind : what the rows are, "table" or "image" (an .npy / .npz holds either, by its shape).
    columns : the table's column names; None for images.
    n_rows : rows (or image files) in all, when known before reading; None for CSV.
    skipped : files of a folder that are not read (other extensions, hidden); 0 for a file.

    Iterating yields ``Chunk`` objects in input order; ``close()`` (or leaving a ``with`` block)
    releases the file.
    """

    path: Path
    format: DataFormat
    kind: InputKind
    columns: list[str] | None
    n_rows: int | None
    skipped: int

    def __iter__(self) -> Iterator[Chunk]: ...

    def close(self) -> None: ...

    def __enter__(self: _Reader) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_all(reader: ChunkReader) -> Chunk:
    """All chunks of ``reader`` as one chunk; any unreadable row is an ``InputError`` (for
    training and calibration, where a silently skipped row would change the model). Closes
    ``reader``."""
    try:
        chunks = list(reader)
    finally:
        reader.close()
    errors = [(c.ids[i], e) for c in chunks for i, e in enumerate(c.errors) if e is not None]
    if errors:
        shown = "; ".join(f"{i}: {e}" for i, e in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise InputError(f"{len(errors)} unreadable row(s): {shown}{more}")
    if not chunks:
        raise InputError("the data has no rows")
    ids = [i for c in chunks for i in c.ids]
    labels = [v for c in chunks for v in c.labels] if chunks[0].labels is not None else None
    data: ChunkData
    if isinstance(chunks[0].data, pd.DataFrame):
        data = pd.concat([c.data for c in chunks], ignore_index=True) if len(chunks) > 1 else chunks[0].data
    else:
        data = np.concatenate([c.data for c in chunks]) if len(chunks) > 1 else chunks[0].data
    return Chunk(0, ids, data, [None] * len(ids), labels)
