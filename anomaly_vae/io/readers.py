"""The reader for a path: a table (CSV / TSV, Parquet), an array (.npy / .npz) or a folder of images."""

from __future__ import annotations

import os

from .arrays import ArrayReader
from .chunks import ChunkReader
from .files import ARRAY_FORMATS, data_kind
from .images import ImageFolderReader
from .tables import TableReader

__all__ = ["open_data"]


def open_data(path: str | os.PathLike[str], *, batch_size: int = 16384, sep: str | None = None,
              id_column: str | None = None, dtypes: dict[str, type | str] | None = None,
              label_column: str | None = None, image_size: tuple[int, int] | None = None, channels: int = 1,
              labels_from_folders: bool = False) -> ChunkReader:
    """The chunk reader for ``path``, by what ``data_kind`` finds there: ``ImageFolderReader`` for a
    folder (``image_size``, ``channels``, ``labels_from_folders``; at most 1024 files a chunk),
    ``ArrayReader`` for .npy / .npz (``label_column`` is the labels array's key), ``TableReader``
    for CSV / TSV and Parquet (``sep``, ``id_column``, ``dtypes``, ``label_column``)."""
    fmt = data_kind(path)
    if fmt == "images":
        return ImageFolderReader(path, image_size, channels, batch_size=min(batch_size, 1024),
                                 labels_from_folders=labels_from_folders)
    if fmt in ARRAY_FORMATS:
        return ArrayReader(path, batch_size=batch_size, labels_key=label_column)
    return TableReader(path, batch_size=batch_size, sep=sep, id_column=id_column, dtypes=dtypes,
                       label_column=label_column)
