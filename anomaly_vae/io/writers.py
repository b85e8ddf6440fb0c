"""Result files: ``ResultWriter`` (CSV or Parquet, chunk by chunk) and ``atomic_output`` (any file),
both written to a hidden temporary file beside the target and renamed over it when complete, so a
file at the target is always whole; ``remove_partial_outputs`` removes the temporary files of a
process that must exit at once, and runs the clean-ups other writers registered for it
(``on_forced_exit``: a Spark job's output directories)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..exceptions import InputError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.csv as pc
    import pyarrow.parquet as pq

__all__ = ["ResultWriter", "atomic_output", "remove_partial_outputs", "on_forced_exit"]


# The hidden temporary files being written now, so that a process told to stop at once (a second
# SIGTERM or Ctrl-C while the first one's cleanup runs) can still remove them before it exits.
_PARTIAL: set[Path] = set()
_FORCED_EXIT: dict[int, Callable[[], None]] = {}  # other outputs' clean-ups, by registration


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
    for clean_up in list(_FORCED_EXIT.values()):
        try:
            clean_up()
        except Exception:  # noqa: BLE001 - best effort: the process is exiting
            pass


@contextmanager
def on_forced_exit(clean_up: Callable[[], None]) -> Iterator[None]:
    """``clean_up`` run by ``remove_partial_outputs`` while the block runs (best effort, errors ignored):
    for an output written by other means than this module's (a Spark job's directories)."""
    key = id(clean_up)
    _FORCED_EXIT[key] = clean_up
    try:
        yield
    finally:
        _FORCED_EXIT.pop(key, None)


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
    _pq_writer: pc.CSVWriter | pq.ParquetWriter | None = field(default=None, init=False)
    _schema: pa.Schema | None = field(default=None, init=False)

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

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None or self._tmp is not None:
            self.abort()
