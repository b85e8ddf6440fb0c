"""Tables in chunks: CSV / TSV and Parquet, ``batch_size`` rows at a time.

CSV rules: UTF-8 (a byte-order mark is dropped), a header row, the delimiter sniffed from the start
of the file (one of ``, ; TAB |``; ``.tsv`` means TAB) unless given; blank lines are not rows; empty
fields and ``NA`` / ``null`` / ``NaN`` are missing values; quoted fields may hold delimiters and
newlines. A line with the wrong number of fields is a row of missing values with its error.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import pandas as pd

from ..exceptions import InputError
from ..preprocessing.tables import PROBE_DECIMALS
from .chunks import Chunk, ChunkReader, InputKind
from .files import data_kind, open_regular

__all__ = ["TableReader", "sniff_sep", "SNIFF_DELIMITERS", "NA_VALUES", "EXACT_FLOATS"]

SNIFF_DELIMITERS = ",;\t|"
NA_VALUES = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "#N/A"]
# read_csv's arguments that read every decimal as Python's float() does (the value a JSON request of it
# gives): before 3.1, pandas' default parser reads about one in five of the shortest float64 reprs a unit
# in the last place off unless asked for its round-trip parser; 3.1 reads them exactly and deprecates the
# option. Chosen by how this pandas reads the probe decimals, not by its version string.
EXACT_FLOATS: dict[str, str] = (
    {} if pd.read_csv(io.StringIO("\n".join(["a", *PROBE_DECIMALS])))["a"].tolist() == [float(p) for p in PROBE_DECIMALS]
    else {"float_precision": "round_trip"})
# a cell that is an integer of 300 digits or more: pandas 2.2 and 3.0 raise OverflowError on one beyond float64
_HUGE_INTEGER = r"\s*[+-]?\d{300,}\s*"


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


class TableReader(ChunkReader):
    """Chunks of a CSV / TSV or Parquet table, ``batch_size`` rows at a time (a ``ChunkReader``).

    ``dtypes`` maps column names to ``str`` for columns that must be read as text (the model's
    categorical columns), so that "007" stays "007"; other columns are inferred per chunk.
    ``id_column`` (optional) gives the ids, read as text (as written); otherwise the ids are the
    0-based row numbers.
    """

    kind: InputKind = "table"
    skipped = 0

    def __init__(self, path: str | os.PathLike[str], batch_size: int = 16384, sep: str | None = None,
                 id_column: str | None = None, dtypes: dict[str, type | str] | None = None,
                 label_column: str | None = None) -> None:
        self.path = Path(path)
        fmt = data_kind(self.path)
        if fmt not in ("csv", "parquet"):
            raise InputError(f"{self.path}: not a CSV or Parquet file")
        self.format: Literal["csv", "parquet"] = fmt
        self.columns: list[str] = []
        self.n_rows: int | None = None  # known before reading for Parquet, not for CSV
        self._file: BinaryIO | None = None
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.id_column, self.label_column = id_column, label_column
        self.dtypes = dict(dtypes or {})
        if id_column is not None and id_column != label_column:  # ids as written ("007") in every chunk
            self.dtypes.setdefault(id_column, str)
        try:
            if self.format == "csv":
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
        self._file = f = open_regular(self.path)
        head = f.read(1 << 16)
        if not head.strip():
            raise InputError(f"{self.path}: the file is empty (expected a header row and data rows)")
        if head.startswith(b"\xef\xbb\xbf"):
            head = head[3:]
            f.seek(3)
        else:
            f.seek(0)
        self.sep = sep if sep is not None else sniff_sep(self.path, head)
        if len(self.sep) != 1:
            raise InputError(f"the separator must be one character, got {self.sep!r}")
        header_line = f.readline()
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
        # an id is missing only when empty: "NA" (Namibia) or "None" is an id, as Spark's reader keeps it
        self._na: Any = NA_VALUES if self.id_column is None else {
            c: [""] if c == self.id_column and c != self.label_column else NA_VALUES for c in self.columns}

    def _open_parquet(self) -> None:
        import pyarrow.parquet as pq

        try:
            self._pq: pq.ParquetFile = pq.ParquetFile(self.path)
        except Exception as err:  # pyarrow raises ArrowInvalid / OSError for a file that is not Parquet
            raise InputError(f"{self.path}: not a readable Parquet file ({err})") from None
        self.columns = [str(c) for c in self._pq.schema_arrow.names]
        self.n_rows = self._pq.metadata.num_rows

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __iter__(self) -> Iterator[Chunk]:
        return self._csv_chunks() if self.format == "csv" else self._parquet_chunks()

    def _parquet_chunks(self) -> Iterator[Chunk]:
        start = 0
        for batch in self._pq.iter_batches(batch_size=self.batch_size):
            df = batch.to_pandas()
            df.columns = [str(c) for c in df.columns]
            # ids from Arrow as stored: pandas makes an integer column with a null float (7 -> 7.0,
            # 12345678901234567 -> 1.2345678901234568e+16)
            ids = (batch.column(batch.schema.get_field_index(self.id_column)).to_pylist()
                   if self.id_column else None)
            yield self._chunk(start, df, [None] * len(df), ids)
            start += len(df)

    def _chunk(self, start: int, df: pd.DataFrame, errors: list[str | None], ids: list[Any] | None = None) -> Chunk:
        n = len(df)
        if ids is None:
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
                try:
                    df = self._parse(lines, self.dtypes or None)
                except OverflowError:
                    # an integer beyond float64: pandas 2.2 and 3.0 raise while building the frame (3.1 keeps
                    # it as an object); only the columns that hold one are read as text, whose per-value
                    # conversion names it, so that the other columns and rows read as without it
                    text = self._parse(lines, str)
                    huge = {c: str for c in text.columns if text[c].str.fullmatch(_HUGE_INTEGER, na=False).any()}
                    df = self._parse(lines, {**self.dtypes, **huge})
            except (pd.errors.ParserError, ValueError, OverflowError) as err:
                raise InputError(f"{self.path}, near line {line_no}: cannot parse the CSV ({err})") from None
            if len(df) != n:  # the field check and the parser disagree: never lose rows silently
                raise InputError(f"{self.path}, near line {line_no}: read {len(df)} rows where {n} were expected "
                                 "(unbalanced quotes?)")
            yield self._chunk(start, df, errors)
            start += n

    def _empty_record(self, fields: Sequence[bytes | str]) -> str:
        """A record of missing values that keeps the id field of a malformed line, when it has one."""
        out = [""] * len(self.columns)
        if self.id_column is not None:
            k = self.columns.index(self.id_column)
            if k < len(fields):
                v = fields[k].decode("utf-8", errors="replace") if isinstance(fields[k], bytes) else fields[k]
                if self.sep not in v and '"' not in v and "\n" not in v:
                    out[k] = v
        return self.sep.join(out)

    def _parse(self, lines: bytes, dtype: Any) -> pd.DataFrame:
        return pd.read_csv(io.BytesIO(lines), sep=self.sep, header=None, names=self.columns, dtype=dtype, engine="c",
                           skip_blank_lines=True, na_values=self._na, keep_default_na=False, index_col=False,
                           encoding="utf-8", encoding_errors="replace", **EXACT_FLOATS)

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

