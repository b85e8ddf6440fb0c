"""Arrays in chunks: a ``.npy`` file (memory-mapped) or an array of a ``.npz`` archive, a table
when 2-D and images when 3-D / 4-D. Object arrays are refused: loading them would unpickle data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from ..exceptions import InputError
from .chunks import Chunk, ChunkReader, InputKind
from .files import data_kind

__all__ = ["ArrayReader"]


def _load_array(path: Path, key: str | None = None) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            if not keys:
                raise InputError(f"{path}: the .npz archive holds no arrays")
            name = key or next((k for k in ("X", "x", "data", "images") if k in keys), keys[0])
            if name not in keys:
                raise InputError(f"{path}: no array {name!r} in the archive; it holds {keys}")
            return z[name]
    except ValueError as err:
        # allow_pickle=False refuses object arrays: say so instead of numpy's wording
        raise InputError(f"{path}: cannot read the array ({err}); object arrays are refused because "
                         "loading them would unpickle data") from None



class ArrayReader(ChunkReader):
    """Chunks of a ``.npy`` (memory-mapped) or ``.npz`` array: 2-D = table, 3-D/4-D = images (a
    ``ChunkReader``). A table's columns are named ``x0, x1, ...``; ``labels_key`` names the
    labels array of an ``.npz``."""

    skipped = 0

    def __init__(self, path: str | os.PathLike[str], batch_size: int = 16384, labels_key: str | None = None) -> None:
        self.path = Path(path)
        fmt = data_kind(self.path)
        if fmt not in ("npy", "npz"):
            raise InputError(f"{self.path}: not a .npy or .npz file")
        self.format: Literal["npy", "npz"] = fmt
        self.array = _load_array(self.path)
        if self.array.ndim < 2:
            raise InputError(f"{self.path}: expected a 2-D table or 3-D / 4-D images, got an array of shape {self.array.shape}")
        self.labels: np.ndarray | None = None
        if labels_key is not None:
            self.labels = _load_array(self.path, labels_key)
            if len(self.labels) != len(self.array):
                raise InputError(f"{self.path}: {len(self.labels)} labels for {len(self.array)} samples")
        self.kind: InputKind = "image" if self.array.ndim >= 3 else "table"
        self.batch_size = int(batch_size)
        self.n_rows: int = len(self.array)
        self.columns = None if self.kind == "image" else [f"x{i}" for i in range(self.array.shape[1])]

    def __iter__(self) -> Iterator[Chunk]:
        for start in range(0, self.n_rows, self.batch_size):
            part = np.asarray(self.array[start : start + self.batch_size])
            ids = list(range(start, start + len(part)))
            labels = self.labels[start : start + len(part)].tolist() if self.labels is not None else None
            yield Chunk(start, ids, part, [None] * len(part), labels)

    def close(self) -> None:
        pass

