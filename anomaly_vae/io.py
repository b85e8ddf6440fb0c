"""Chunked readers and writers for the batch faces: CSV / TSV, Parquet, ``.npy`` / ``.npz`` and
image folders in; CSV or Parquet out, written to a temporary file and renamed when complete.

Every reader yields :class:`Chunk` objects that account for every input row (or file): a row that
cannot be read (a CSV line with the wrong number of fields, a corrupt image) is still there, with
its error, so the output has exactly one row per input row, in input order.

CSV rules: UTF-8 (a byte-order mark is dropped), a header row, the delimiter sniffed from the start
of the file (one of ``, ; TAB |``; ``.tsv`` means TAB) unless given; blank lines are not rows; empty
fields and ``NA`` / ``null`` / ``NaN`` are missing values; quoted fields may hold delimiters and
newlines.

Only regular files are read (symbolic links are followed to what they point at). A named pipe, socket
or device file is refused by its type, before it is opened: reading a FIFO waits for a writer that may
never come, and opening a device can have effects of its own. The input file given by name is refused
with an ``InputError``; such an entry in an image folder becomes that file's error row.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import stat
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from .exceptions import InputError

log = logging.getLogger(__name__)

__all__ = [
    "Chunk", "TableReader", "ImageFolderReader", "ArrayReader", "open_data", "read_all", "data_kind",
    "list_images", "load_image", "load_images", "ResultWriter", "IMAGE_SUFFIXES", "TABLE_SUFFIXES", "parse_size",
    "atomic_output", "remove_partial_outputs",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".npy", ".npz")
SNIFF_DELIMITERS = ",;\t|"
NA_VALUES = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "#N/A"]


@dataclass
class Chunk:
    """A run of consecutive input rows (or image files).

    ``data`` holds the rows that were read (a DataFrame for tables, a (n, C, H, W) float32 array
    for images), ``ids`` one identifier per row (row number, id-column value or file path), and
    ``errors`` one entry per row: None, or why the row could not be read (such a row is still in
    ``data``, as missing values, for tables; it is left out of ``data`` for images).
    """

    start: int
    ids: list[Any]
    data: Any
    errors: list[str | None]
    labels: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "another kind of file"


def _not_regular(path: Path, mode: int) -> InputError:
    return InputError(f"{path}: not a regular file but {_file_type(mode)}; not opened")


def _open_regular(path: Path) -> BinaryIO:
    """``path`` opened for binary reading, if it is a regular file (after symbolic links).

    The type is checked with ``stat`` before opening, so a FIFO, socket or device is never
    opened; and again on the open descriptor, which is opened non-blocking so that a FIFO put
    in its place in between cannot block either."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise InputError(f"{path}: cannot read the file ({err.strerror or err})") from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    nonblock = getattr(os, "O_NONBLOCK", 0)
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | nonblock | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise InputError(f"{path}: cannot read the file ({err.strerror or err})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def data_kind(path: str | os.PathLike[str]) -> str:
    """``"images"`` (a folder), ``"csv"``, ``"parquet"``, ``"npy"`` or ``"npz"``. Anything but a
    folder or a regular file (a FIFO, socket or device) is an ``InputError``: every reader
    seeks or maps its file, and a FIFO would make the job wait on a writer that SIGTERM cannot
    interrupt."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"{p}: no such file or directory") from None
    if stat.S_ISDIR(mode):
        return "images"
    if not stat.S_ISREG(mode):
        raise _not_regular(p, mode)
    suffix = p.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".npy", ".npz"):
        return suffix[1:]
    raise InputError(f"{p}: unknown file type {suffix or '(none)'!r}: expected a folder of images or a file "
                     f"ending in {', '.join(TABLE_SUFFIXES)}")


def parse_size(text: str) -> tuple[int, int]:
    """``"28x28"`` -> (28, 28): height x width."""
    parts = text.lower().split("x")
    try:
        h, w = (int(v) for v in parts)
    except ValueError:
        raise InputError(f"image size must look like HxW (for example 28x28), got {text!r}") from None
    if h < 8 or w < 8:
        raise InputError(f"image size must be at least 8x8, got {text!r}")
    return h, w


# -- CSV ---------------------------------------------------------------------------------------
def sniff_sep(path: Path, head: bytes) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    text = head.decode("utf-8", errors="replace")
    lines = text.splitlines()[:50]
    if len(lines) > 1 and len(text) >= len(head):
        lines = lines[:-1]  # the last line of a partial read may be cut short
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=SNIFF_DELIMITERS).delimiter
    except csv.Error:
        return ","


class TableReader:
    """Chunks of a CSV / TSV or Parquet table, ``batch_size`` rows at a time.

    ``dtypes`` maps column names to ``str`` for columns that must be read as text (the model's
    categorical columns), so that "007" stays "007"; other columns are inferred per chunk.
    ``id_column`` (optional) gives the ids; otherwise the ids are the 0-based row numbers.
    """

    def __init__(self, path: str | os.PathLike[str], batch_size: int = 16384, sep: str | None = None,
                 id_column: str | None = None, dtypes: dict[str, Any] | None = None,
                 label_column: str | None = None) -> None:
        self.path = Path(path)
        self.kind = data_kind(self.path)
        if self.kind not in ("csv", "parquet"):
            raise InputError(f"{self.path}: not a CSV or Parquet file")
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.id_column, self.label_column = id_column, label_column
        self.dtypes = dict(dtypes or {})
        try:
            if self.kind == "csv":
                self._open_csv(sep)
            else:
                self._open_parquet()
            for role, col in (("id", id_column), ("label", label_column)):
                if col is not None and col not in self.columns:
                    raise InputError(f"{self.path}: the {role} column {col!r} is not in the header; columns are {self.columns}")
        except BaseException:
            self.close()
            raise

    # CSV: raw lines are counted and checked here (fast, with numpy), then parsed by pandas' C parser
    def _open_csv(self, sep: str | None) -> None:
        self._file: BinaryIO = _open_regular(self.path)
        head = self._file.read(1 << 16)
        if not head.strip():
            raise InputError(f"{self.path}: the file is empty (expected a header row and data rows)")
        if head.startswith(b"\xef\xbb\xbf"):
            head = head[3:]
            self._file.seek(3)
        else:
            self._file.seek(0)
        self.sep = sep if sep is not None else sniff_sep(self.path, head)
        if len(self.sep) != 1:
            raise InputError(f"the separator must be one character, got {self.sep!r}")
        header_line = self._file.readline()
        self._line = 1  # physical lines consumed so far
        try:
            header = next(csv.reader([header_line.decode("utf-8").rstrip("\r\n")], delimiter=self.sep))
        except (UnicodeDecodeError, StopIteration, csv.Error) as err:
            raise InputError(f"{self.path}, line 1: cannot read the header row ({err}; lines must end in LF "
                             "or CRLF)") from None
        names = [h.strip() for h in header]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InputError(f"{self.path}, line 1: duplicate column name(s) {dup} in the header")
        if any(not n for n in names):
            raise InputError(f"{self.path}, line 1: the header has an empty column name (column "
                             f"{names.index('') + 1}); every column needs a name")
        self.columns = names
        self.total_bytes = os.path.getsize(self.path)
        self._rest = b""

    def _open_parquet(self) -> None:
        import pyarrow.parquet as pq

        try:
            self._pq = pq.ParquetFile(self.path)
        except Exception as err:  # pyarrow raises ArrowInvalid / OSError for a file that is not Parquet
            raise InputError(f"{self.path}: not a readable Parquet file ({err})") from None
        self.columns = [str(c) for c in self._pq.schema_arrow.names]
        self.n_rows = self._pq.metadata.num_rows

    def close(self) -> None:
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()

    def __enter__(self) -> "TableReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[Chunk]:
        return self._csv_chunks() if self.kind == "csv" else self._parquet_chunks()

    def _parquet_chunks(self) -> Iterator[Chunk]:
        start = 0
        for batch in self._pq.iter_batches(batch_size=self.batch_size):
            df = batch.to_pandas()
            df.columns = [str(c) for c in df.columns]
            yield self._chunk(start, df, [None] * len(df))
            start += len(df)

    def _chunk(self, start: int, df: pd.DataFrame, errors: list[str | None]) -> Chunk:
        n = len(df)
        ids = df[self.id_column].tolist() if self.id_column else list(range(start, start + n))
        labels = df[self.label_column].tolist() if self.label_column else None
        return Chunk(start, ids, df, errors, labels)

    def _raw_blocks(self) -> Iterator[bytes]:
        """Blocks of whole records (cut at a newline outside quotes), about batch_size rows each.
        Reads only when the buffer holds fewer records than that, so memory stays bounded."""
        buf, eof = b"", False
        read_size = 1 << 20
        while True:
            arr = np.frombuffer(buf, dtype=np.uint8)
            nl = np.flatnonzero(arr == 10)
            if len(nl) >= self.batch_size:
                cut = int(nl[self.batch_size - 1])
                if b'"' in buf[: cut + 1]:
                    # a newline inside quotes is not a record end: cut where the quote count is even
                    quotes = np.cumsum(arr == 34)
                    even = nl[(quotes[nl] % 2 == 0) & (nl >= cut)]
                    cut = int(even[0]) if len(even) else -1
                if cut >= 0:
                    yield buf[: cut + 1]
                    buf = buf[cut + 1 :]
                    continue
            if eof:
                if buf.strip():
                    yield buf if buf.endswith(b"\n") else buf + b"\n"
                return
            if len(nl):  # read about what the rest of the block needs, from the bytes per row so far
                read_size = int(min(max(1 << 20, (self.batch_size - len(nl) + 16) * (len(buf) / len(nl)) * 1.1), 1 << 28))
            part = self._file.read(read_size)
            if part:
                buf += part
            else:
                eof = True

    def _csv_chunks(self) -> Iterator[Chunk]:
        ncol = len(self.columns)
        start = 0
        for block in self._raw_blocks():
            lines, errors, line_no = self._check_fields(block, ncol)
            n = len(errors)
            if n == 0:
                continue
            try:
                df = pd.read_csv(io.BytesIO(lines), sep=self.sep, header=None, names=self.columns, dtype=self.dtypes or None,
                                 engine="c", skip_blank_lines=True, na_values=NA_VALUES, keep_default_na=False,
                                 index_col=False, encoding="utf-8", encoding_errors="replace")
            except (pd.errors.ParserError, ValueError) as err:
                raise InputError(f"{self.path}, near line {line_no}: cannot parse the CSV ({err})") from None
            if len(df) != n:  # the field check and the parser disagree: never lose rows silently
                raise InputError(f"{self.path}, near line {line_no}: read {len(df)} rows where {n} were expected "
                                 "(unbalanced quotes?)")
            yield self._chunk(start, df, errors)
            start += n

    def _empty_record(self, fields: list[Any]) -> str:
        """A record of missing values that keeps the id field of a malformed line, when it has one."""
        out = [""] * len(self.columns)
        if self.id_column is not None:
            k = self.columns.index(self.id_column)
            if k < len(fields):
                v = fields[k].decode("utf-8", errors="replace") if isinstance(fields[k], bytes) else fields[k]
                if self.sep not in v and '"' not in v and "\n" not in v:
                    out[k] = v
        return self.sep.join(out)

    def _check_fields(self, block: bytes, ncol: int) -> tuple[bytes, list[str | None], int]:
        """Count the fields of each record; records with the wrong count become empty records
        (all missing) with an error. Returns (block to parse, errors per record, first line)."""
        first_line = self._line + 1
        if b'"' in block:
            return self._check_fields_quoted(block, ncol, first_line)
        arr = np.frombuffer(block, dtype=np.uint8)
        ends = np.flatnonzero(arr == 10)
        starts = np.concatenate([[0], ends[:-1] + 1])
        self._line += len(ends)
        seps = np.concatenate([[0], np.cumsum(arr == ord(self.sep))])
        nfields = seps[ends] - seps[starts] + 1
        length = ends - starts - (arr[np.maximum(ends - 1, 0)] == 13)  # without \r
        blank = length <= 0
        bad = (nfields != ncol) & ~blank
        errors: list[str | None] = [None] * int((~blank).sum())
        if bad.any():
            row_of_line = np.cumsum(~blank) - 1
            pieces, last = [], 0
            for i in np.flatnonzero(bad):
                errors[row_of_line[i]] = (f"line {first_line + i}: expected {ncol} fields, found {nfields[i]} "
                                          f"(separator {self.sep!r})")
                fields = block[starts[i] : ends[i]].rstrip(b"\r").split(self.sep.encode())
                pieces += [block[last : starts[i]], self._empty_record(fields).encode()]
                last = ends[i]
            pieces.append(block[last:])
            block = b"".join(pieces)
        return block, errors, first_line

    def _check_fields_quoted(self, block: bytes, ncol: int, first_line: int) -> tuple[bytes, list[str | None], int]:
        text = block.decode("utf-8", errors="replace")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=self.sep)
        out = io.StringIO()
        writer = csv.writer(out, delimiter=self.sep, lineterminator="\n")
        errors: list[str | None] = []
        line_before = 0
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip()):
                line_before = reader.line_num
                continue  # a blank line is not a row
            if len(record) != ncol:
                errors.append(f"line {first_line + line_before}: expected {ncol} fields, found {len(record)} "
                              f"(separator {self.sep!r})")
                record = next(csv.reader([self._empty_record(record)], delimiter=self.sep))
            else:
                errors.append(None)
            writer.writerow(record)
            line_before = reader.line_num
        self._line += block.count(b"\n")
        return out.getvalue().encode("utf-8"), errors, first_line


# -- arrays ------------------------------------------------------------------------------------
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


class ArrayReader:
    """Chunks of a ``.npy`` (memory-mapped) or ``.npz`` array: 2-D = table, 3-D/4-D = images."""

    def __init__(self, path: str | os.PathLike[str], batch_size: int = 16384, labels_key: str | None = None) -> None:
        self.path = Path(path)
        self.array = _load_array(self.path)
        if self.array.ndim < 2:
            raise InputError(f"{self.path}: expected a 2-D table or 3-D / 4-D images, got an array of shape {self.array.shape}")
        self.labels = None
        if labels_key is not None:
            self.labels = _load_array(self.path, labels_key)
            if len(self.labels) != len(self.array):
                raise InputError(f"{self.path}: {len(self.labels)} labels for {len(self.array)} samples")
        self.is_images = self.array.ndim >= 3
        self.batch_size = int(batch_size)
        self.n_rows = len(self.array)
        self.columns = None if self.is_images else [f"x{i}" for i in range(self.array.shape[1])]

    def __iter__(self) -> Iterator[Chunk]:
        for start in range(0, self.n_rows, self.batch_size):
            part = np.asarray(self.array[start : start + self.batch_size])
            ids = list(range(start, start + len(part)))
            labels = self.labels[start : start + len(part)].tolist() if self.labels is not None else None
            yield Chunk(start, ids, part, [None] * len(part), labels)

    def close(self) -> None:
        pass


# -- images ------------------------------------------------------------------------------------
def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise InputError("reading images needs Pillow: pip install 'anomaly-vae[images]'") from None
    return Image


def list_images(folder: str | os.PathLike[str]) -> tuple[list[Path], int]:
    """Image files under ``folder``, recursively, sorted by relative path; and how many other
    files were skipped (other extensions, hidden files).

    Listed by name only, nothing is opened: an entry with an image suffix that is not a regular
    file (a FIFO, socket or device, or a link to one) is listed, and ``load_image`` refuses it, so
    it gets an error row. Links to folders are not followed (no loops, no leaving the folder)."""
    root = Path(folder)
    found, skipped = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            p = Path(dirpath) / name
            if not name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES:
                found.append(p)
            else:
                skipped += 1
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    return found, skipped


def load_image(path: Path, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    """One image file as float32 (C, H, W) in [0, 1], converted to ``channels`` (1 grey, 3 RGB)
    and resized (bilinear) to ``size`` = (H, W) when it differs. Pillow's decompression-bomb
    guard stays on, and its warning is an error here. Raises ``InputError`` naming the file;
    a path that is not a regular file is refused without being opened."""
    Image = _pil()
    with _open_regular(Path(path)) as f:
        return _decode_image(Image, f, path, size, channels)


def _decode_image(Image: Any, f: BinaryIO, path: Path, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as img:
                img.load()  # decode now: a truncated or corrupt file fails here, not later
                if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                    a = np.asarray(img, dtype=np.float64)
                    if not np.isfinite(a).all():
                        raise InputError(f"{path}: pixel values must be finite, found NaN or infinity")
                    top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
                    img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
                img = img.convert("L" if channels == 1 else "RGB")
                if size is not None and (img.height, img.width) != tuple(size):
                    img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                a = np.asarray(img, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(f"{path}: refused, too many pixels ({err})") from None
    except Image.UnidentifiedImageError:
        raise InputError(f"{path}: not an image Pillow can read (corrupt or not an image)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: cannot decode the image ({err})") from None
    a = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
    return a.astype(np.float32) / 255.0


def load_images(paths: list[Path], size: tuple[int, int], channels: int, names: list[str] | None = None) -> np.ndarray:
    """``load_image`` of every path, stacked: (N, C, H, W). The first file that cannot be read
    raises ``InputError`` naming it by its entry in ``names`` (e.g. an upload's own file name)
    instead of its path, with reason ``"bad_image"``."""
    names = names if names is not None else [str(p) for p in paths]
    images = []
    for path, name in zip(paths, names):
        try:
            images.append(load_image(path, size, channels))
        except InputError as err:
            raise InputError(str(err).replace(str(path), repr(name)), reason="bad_image") from None
    return np.stack(images)


def image_mode_info(path: Path) -> tuple[tuple[int, int], int]:
    """((H, W), channels) of an image file without decoding the pixels."""
    Image = _pil()
    try:
        with _open_regular(Path(path)) as f, Image.open(f) as img:
            grey = img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") or (
                img.mode == "P" and all(len(set(c)) == 1 for c in _palette_colours(img)))
            return (img.height, img.width), 1 if grey else 3
    except InputError:
        raise
    except Exception as err:  # Pillow raises many types for unreadable files
        raise InputError(f"{path}: not an image Pillow can read ({err})") from None


def _palette_colours(img: Any) -> list[tuple[int, ...]]:
    pal = img.getpalette() or []
    return [tuple(pal[i : i + 3]) for i in range(0, len(pal), 3)]


class ImageFolderReader:
    """Chunks of an image folder: ``batch_size`` files at a time, every file accounted for.

    Ids are the paths relative to the folder (POSIX). With ``labels_from_folders`` each file's
    label is its first-level subfolder (``root/normal/a.png`` -> ``"normal"``)."""

    def __init__(self, folder: str | os.PathLike[str], size: tuple[int, int] | None, channels: int,
                 batch_size: int = 256, labels_from_folders: bool = False) -> None:
        self.root = Path(folder)
        self.paths, self.skipped = list_images(self.root)
        if not self.paths:
            raise InputError(f"{self.root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder or below")
        self.size, self.channels = size, channels
        self.batch_size = int(batch_size)
        self.n_rows = len(self.paths)
        self.labels_from_folders = labels_from_folders
        self.columns = None
        self.is_images = True

    def label_of(self, p: Path) -> str:
        parts = p.relative_to(self.root).parts
        if len(parts) < 2:
            raise InputError(f"{p}: labels come from first-level subfolders (root/LABEL/file.png), "
                             "but this file is directly in the root folder")
        return parts[0]

    def __iter__(self) -> Iterator[Chunk]:
        for start in range(0, self.n_rows, self.batch_size):
            paths = self.paths[start : start + self.batch_size]
            images, errors = [], []
            for p in paths:
                try:
                    images.append(load_image(p, self.size, self.channels))
                    errors.append(None)
                except InputError as err:
                    errors.append(str(err))
            data = np.stack(images) if images else None
            labels = [self.label_of(p) for p in paths] if self.labels_from_folders else None
            ids = [p.relative_to(self.root).as_posix() for p in paths]
            yield Chunk(start, ids, data, errors, labels)

    def close(self) -> None:
        pass


def open_data(path: str | os.PathLike[str], *, batch_size: int = 16384, sep: str | None = None,
              id_column: str | None = None, dtypes: dict[str, Any] | None = None, label_column: str | None = None,
              image_size: tuple[int, int] | None = None, channels: int = 1,
              labels_from_folders: bool = False) -> Any:
    """The chunk reader for ``path``: ``TableReader``, ``ArrayReader`` or ``ImageFolderReader``."""
    kind = data_kind(path)
    if kind == "images":
        return ImageFolderReader(path, image_size, channels, batch_size=min(batch_size, 1024),
                                 labels_from_folders=labels_from_folders)
    if kind in ("npy", "npz"):
        return ArrayReader(path, batch_size=batch_size, labels_key=label_column)
    return TableReader(path, batch_size=batch_size, sep=sep, id_column=id_column, dtypes=dtypes,
                       label_column=label_column)


def read_all(reader: Any) -> Chunk:
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
    if isinstance(chunks[0].data, pd.DataFrame):
        data = pd.concat([c.data for c in chunks], ignore_index=True) if len(chunks) > 1 else chunks[0].data
    else:
        data = np.concatenate([c.data for c in chunks]) if len(chunks) > 1 else chunks[0].data
    return Chunk(0, ids, data, [None] * len(ids), labels)


# -- output ------------------------------------------------------------------------------------
# The hidden temporary files being written now, so that a process told to stop at once (a second
# SIGTERM or Ctrl-C while the first one's cleanup runs) can still remove them before it exits.
_PARTIAL: set[Path] = set()


def _partial_file(target: Path) -> Path:
    """A new, empty hidden file beside ``target`` (``.NAME.XXXXXXXX.part``), registered as partial."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    path = Path(tmp)
    _PARTIAL.add(path)
    return path


def _discard(tmp: Path) -> None:
    _PARTIAL.discard(tmp)
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass


def remove_partial_outputs() -> None:
    """Remove every temporary output file still being written by this process (for a forced
    exit that will not run the writers' own cleanup)."""
    for tmp in list(_PARTIAL):
        try:
            _discard(tmp)
        except OSError:  # best effort: the process is exiting
            pass


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block ends
    normally, removed when it raises (including ``KeyboardInterrupt`` and the CLI's SIGTERM), so
    a file at ``path`` is always whole."""
    target = Path(path)
    tmp = _partial_file(target)
    try:
        yield tmp
        os.replace(tmp, target)
        _PARTIAL.discard(tmp)
    except BaseException:
        _discard(tmp)
        raise


@dataclass
class ResultWriter:
    """Writes result chunks to CSV or Parquet (by the target's suffix) in a temporary file beside
    the target, renamed over it by ``commit()``; ``abort()`` (or an exception inside ``with``)
    removes the temporary file, so a crash never leaves a half file that looks whole."""

    path: Path
    _tmp: Path | None = field(default=None, init=False)
    _pq_writer: Any = field(default=None, init=False)
    _schema: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        suffix = self.path.suffix.lower()
        if suffix not in (".csv", ".parquet", ".pq"):
            raise InputError(f"{self.path}: the output must end in .csv or .parquet")
        self.format = "csv" if suffix == ".csv" else "parquet"
        if not self.path.parent.exists():
            raise FileNotFoundError(f"{self.path.parent}: the output folder does not exist")
        self._tmp = _partial_file(self.path)

    def write(self, df: pd.DataFrame) -> None:
        """Append ``df``; every chunk must have the columns and types of the first. Arrow's
        writers release the GIL, so writing overlaps scoring (CSV: floats in shortest round-trip
        form, booleans true/false, missing values empty)."""
        import pyarrow as pa
        import pyarrow.csv as pc
        import pyarrow.parquet as pq

        if self._pq_writer is None:
            self._schema = pa.Schema.from_pandas(df, preserve_index=False)
            if self.format == "csv":
                self._pq_writer = pc.CSVWriter(str(self._tmp), self._schema)
            else:
                self._pq_writer = pq.ParquetWriter(self._tmp, self._schema)
        self._pq_writer.write_table(pa.Table.from_pandas(df, schema=self._schema, preserve_index=False))

    def commit(self) -> Path:
        if self._pq_writer is not None:
            self._pq_writer.close()
        assert self._tmp is not None
        os.replace(self._tmp, self.path)
        _PARTIAL.discard(self._tmp)
        self._tmp = None
        return self.path

    def abort(self) -> None:
        if self._pq_writer is not None:
            try:
                self._pq_writer.close()
            except Exception:  # the file is removed anyway
                pass
        if self._tmp is not None:
            _discard(self._tmp)
        self._tmp = None

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None or self._tmp is not None:
            self.abort()

