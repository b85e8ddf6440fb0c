"""What is at a path, and opening it safely: the data formats by suffix, and regular files only.

Only regular files are read (symbolic links are followed to what they point at). A named pipe, socket
or device file is refused by its type, before it is opened: reading a FIFO waits for a writer that may
never come, and opening a device can have effects of its own. The input file given by name is refused
with an ``InputError``; such an entry in an image folder becomes that file's error row.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO, Literal

from ..exceptions import InputError

__all__ = ["DataFormat", "TABLE_FORMATS", "ARRAY_FORMATS", "IMAGE_SUFFIXES", "TABLE_SUFFIXES", "data_kind",
           "open_regular"]

DataFormat = Literal["csv", "parquet", "npy", "npz", "images"]
"""What ``data_kind`` finds at a path: a CSV / TSV file, a Parquet file, an array, or a folder of images."""

TABLE_FORMATS: tuple[DataFormat, ...] = ("csv", "parquet")  # a header row: id and label columns by name
ARRAY_FORMATS: tuple[DataFormat, ...] = ("npy", "npz")  # a table (2-D) or images (3-D / 4-D), by shape
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".npy", ".npz")


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "another kind of file"


def _not_regular(path: Path, mode: int) -> InputError:
    return InputError(f"{path}: not a regular file but {_file_type(mode)}; not opened")


def open_regular(path: Path) -> BinaryIO:
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


def data_kind(path: str | os.PathLike[str]) -> DataFormat:
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
        return "npy" if suffix == ".npy" else "npz"
    raise InputError(f"{p}: unknown file type {suffix or '(none)'!r}: expected a folder of images or a file "
                     f"ending in {', '.join(TABLE_SUFFIXES)}")
