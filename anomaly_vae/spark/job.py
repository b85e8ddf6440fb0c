"""The file job of ``anomaly-vae spark-score``: read CSV / Parquet (or a directory of part files)
or an image folder with Spark, score it (``frames``), write it atomically, summarise it; and the
SparkSession it runs in."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from ..batch import BatchSummary
from ..exceptions import InputError
from .frames import BATCH_BYTES, score_dataframe, score_images
from .worker import CORRUPT_COLUMN, CsvLayout, local_path

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["read_table", "spark_score", "session"]


def _pyspark() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise InputError("Spark scoring needs PySpark: pip install 'anomaly-vae[spark]'") from None


def read_table(spark: SparkSession, path: str, *, sep: str | None = None, multiline: bool = False,
               numeric: tuple[str, ...] = ()) -> tuple[DataFrame, CsvLayout | None]:
    """A CSV / TSV or Parquet file, or a directory of part files, as ``spark_score`` reads it.
    Returns (DataFrame, the CSV's layout or None for Parquet).

    CSV: a header row; the ``numeric`` columns parsed as doubles by Spark's CSV reader (Java's
    decimal parser rounds correctly, as pandas' does, so the values are the same), the others read
    as text. A line that does not parse (a field that is not a number, a missing-value spelling
    other than an empty field, too few or too many fields) keeps its row, with its text in
    ``CORRUPT_COLUMN``: the executor parses it again as ``anomaly-vae score`` would, so that it gets
    the same values or the same error. ``multiline`` allows quoted fields with newlines (each file
    is then one partition)."""
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    fmt = _format_of(path)
    if fmt == "parquet":
        return spark.read.parquet(path), None
    delimiter = sep if sep is not None else _sniff(path)
    if len(delimiter) != 1:
        raise InputError(f"the separator must be one character, got {delimiter!r}")
    reader = (spark.read.option("header", "true").option("mode", "PERMISSIVE").option("multiLine", multiline)
              .option("sep", delimiter).option("encoding", "UTF-8").option("nanValue", "NaN")
              .option("positiveInf", "Inf").option("negativeInf", "-Inf"))
    header = _local_header(path, delimiter)
    if header is None:  # not a local file: Spark reads the first line (every column a string)
        header = reader.csv(path).schema.fieldNames()
    if CORRUPT_COLUMN in header:
        raise InputError(f"{path}: the column name {CORRUPT_COLUMN!r} is reserved")
    dup = sorted({n for n in header if header.count(n) > 1})
    if dup:
        raise InputError(f"{path}: duplicate column name(s) {dup} in the header")
    fields = [StructField(n, DoubleType() if n in numeric else StringType(), True) for n in header]
    schema = StructType([*fields, StructField(CORRUPT_COLUMN, StringType(), True)])
    df = reader.schema(schema).option("columnNameOfCorruptRecord", CORRUPT_COLUMN).csv(path)
    return df, CsvLayout(delimiter, tuple(header))


def _first_part(path: str) -> Path | None:
    """The local file a path names, or the first part file (by name) of a local directory."""
    if "://" in path and not path.startswith("file:"):
        return None
    p = Path(local_path(path))
    if p.is_dir():
        parts = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith((".", "_")))
        return parts[0] if parts else None
    return p if p.is_file() else None


def _local_header(path: str, sep: str) -> list[str] | None:
    """The header row of a local, uncompressed CSV, read in Python (no Spark job for one line)."""
    import csv

    first = _first_part(path)
    if first is None or first.suffix.lower() in (".gz", ".bz2"):
        return None
    with open(first, encoding="utf-8-sig", newline="") as f:
        row = next(csv.reader(f, delimiter=sep), None)
    if not row:
        raise InputError(f"{first}: the file is empty (expected a header row and data rows)")
    return [h.strip() for h in row]


def _numeric_columns(model_dir: str) -> tuple[str, ...]:
    from ..artifact import read_model_card

    pre = read_model_card(model_dir)["input"]["preprocessing"]
    return tuple(c["name"] for c in pre.get("columns", []) if c.get("type") == "numeric")


def _format_of(path: str) -> str:
    """"csv" or "parquet", from the file's suffix or, for a directory, from its part files'."""
    p = Path(local_path(path))
    names = [p.name]
    if p.is_dir():
        names = sorted(f.name for f in p.iterdir() if not f.name.startswith((".", "_")))
    for n in names:
        low = n.lower()
        if low.endswith((".parquet", ".parq", ".pq")):
            return "parquet"
        if low.endswith((".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".csv.bz2")):
            return "csv"
    raise InputError(f"{path}: not a CSV or Parquet file, or a directory of them (by the suffix: .csv, .tsv or .parquet)")


def _sniff(path: str) -> str:
    from ..io.tables import sniff_sep

    p = _first_part(path)
    if p is None or p.suffix.lower() in (".gz", ".bz2"):
        return "\t" if path.lower().endswith((".tsv", ".tsv.gz")) else ","
    with open(p, "rb") as f:
        return sniff_sep(p, f.read(1 << 16))


def _output_format(out: str) -> str:
    low = out.rstrip("/").lower()
    if low.endswith(".parquet"):
        return "parquet"
    if low.endswith(".csv"):
        return "csv"
    raise InputError(f"{out}: the output's name must end in .csv or .parquet (a directory of part files)")


def spark_score(spark: SparkSession, model_dir: str, data: str, out: str, *, id_column: str | None = None,
                explain: int = 0, score: str | None = None, alpha: float | None = None, sep: str | None = None,
                partitions: int | None = None, multiline: bool = False,
                batch_bytes: int = BATCH_BYTES) -> BatchSummary:
    """The job of ``anomaly-vae spark-score``: score ``data`` (CSV / Parquet, a directory of part
    files, or a folder of images) into ``out`` (a directory of .csv or .parquet part files, written
    by Spark's committer to a temporary directory and renamed into place, replacing an old one), and
    summarise it as ``anomaly-vae score`` does. Checks that the output has one row per input row."""
    start = time.perf_counter()
    from pyspark.sql import functions as F

    fmt_out = _output_format(out)
    if Path(local_path(out)).resolve() == Path(local_path(data)).resolve():
        raise InputError(f"{out}: the output is the input ({data}); give another --out")
    from ..artifact import read_model_card

    images = read_model_card(model_dir)["input"]["kind"] == "image"  # the model says what the data is
    skipped = 0
    if images:
        if id_column:
            raise InputError("an id column is for CSV and Parquet tables, not image folders")
        scored, skipped = score_images(spark, data, model_dir, explain=explain, score=score, alpha=alpha,
                                       batch_bytes=batch_bytes)
        id_name = "path"
    else:
        df, layout = read_table(spark, data, sep=sep, multiline=multiline, numeric=_numeric_columns(model_dir))
        if id_column is None:  # number rows by file name and place in the file, as the files were read
            df = (df.withColumn("_anomaly_vae_file", F.col("_metadata.file_path"))
                  .withColumn("_anomaly_vae_block", F.col("_metadata.file_block_start")))
        scored = score_dataframe(df, model_dir, id_column=id_column, explain=explain, score=score, alpha=alpha,
                                 partitions=partitions, batch_bytes=batch_bytes, _file_order=id_column is None,
                                 _csv=layout)
        id_name = id_column or "row"
    # a CSV line with too few or too many fields is a malformed record only when the parser splits
    # every field (with column pruning it tokenizes the selected ones): off for the scoring pass
    # only (the counting pass needs no field), then restored
    pruning_key = "spark.sql.csv.parser.columnPruning.enabled"
    pruning = spark.conf.get(pruning_key, "true")
    spark.conf.set(pruning_key, "false")
    try:
        _write_atomically(spark, scored, out, fmt_out)
    finally:
        spark.conf.set(pruning_key, pruning)

    written = spark.read.schema(scored.schema).option("header", "true").format(fmt_out).load(out)
    agg = written.agg(F.count(F.lit(1)).alias("rows"), F.count("score").alias("scored"),
                      F.sum(F.col("is_anomaly").cast("long")).alias("anomalies"), F.count("error").alias("errors"),
                      *([F.min("row").alias("lo"), F.max("row").alias("hi")] if id_name == "row" else [])).collect()[0]
    from ..detector import load_detector

    det = load_detector(model_dir)
    if alpha is not None:
        det.set_alpha(alpha)
    summary = BatchSummary(rows=int(agg["rows"]), scored=int(agg["scored"]), anomalies=int(agg["anomalies"] or 0),
                           errors=int(agg["errors"]), alpha=det.alpha_, threshold=float(det.threshold_),
                           skipped_files=skipped, id_name=id_name)
    counted = getattr(scored, "_anomaly_vae_counted", None)
    if id_name == "row" and summary.rows and (agg["lo"] != 0 or agg["hi"] != summary.rows - 1
                                              or (counted is not None and int(counted) != summary.rows)):
        raise InputError(f"{out}: {summary.rows} rows written, numbered {agg['lo']}..{agg['hi']}, where {counted} were "
                         "counted: the input changed while it was read; the output is not complete")
    if summary.errors:
        first = written.filter(F.col("error").isNotNull()).orderBy(id_name).select(id_name, "error").limit(5).collect()
        summary.first_errors = [(r[id_name], r["error"]) for r in first]
    summary.output = Path(out) if "://" not in out else None
    summary.seconds = time.perf_counter() - start
    return summary


def _write_atomically(spark: SparkSession, df: DataFrame, out: str, fmt: str) -> None:
    """Write with Spark's committer into a sibling temporary directory, then rename it to ``out``
    (through Hadoop's file system, so HDFS and object stores work too); an old ``out`` is replaced
    only once the new one is complete."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    target = jvm.org.apache.hadoop.fs.Path(out.rstrip("/"))
    fs = target.getFileSystem(conf)
    tmp_name = f"{target.getName()}.part-{uuid.uuid4().hex[:12]}"
    tmp = jvm.org.apache.hadoop.fs.Path(target.getParent(), tmp_name)
    try:
        writer = df.write.mode("errorifexists").format(fmt)
        if fmt == "csv":
            writer = writer.option("header", "true")
        writer.save(tmp.toString())
        old = None
        if fs.exists(target):
            old = jvm.org.apache.hadoop.fs.Path(target.getParent(), f"{tmp_name}.old")
            if not fs.rename(target, old):
                raise InputError(f"{out}: cannot move the old output aside")
        if not fs.rename(tmp, target):
            raise InputError(f"{out}: cannot rename the finished output into place")
        if old is not None:
            fs.delete(old, True)
    finally:
        if fs.exists(tmp):
            fs.delete(tmp, True)


# --- the command ---------------------------------------------------------------------------------

def session(master: str | None = None, conf: dict[str, str] | None = None, app: str = "anomaly-vae spark-score") -> SparkSession:
    """A SparkSession for the job: ``master`` (None: the one ``spark-submit`` set, else ``local[*]``),
    Arrow on, the Python of this process on the executors when local, extra ``conf`` on top."""
    _pyspark()
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app)
    if master is None and not os.environ.get("PYSPARK_GATEWAY_PORT"):  # not under spark-submit
        master = "local[*]"
    if master is not None:
        builder = builder.master(master)
    if master is not None and master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # the workers' Python: this one, with torch
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # local mode listens on loopback only
        builder = (builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.pyspark.python", sys.executable).config("spark.ui.showConsoleProgress", "false"))
    builder = builder.config("spark.sql.execution.arrow.pyspark.enabled", "true")
    for k, v in (conf or {}).items():
        builder = builder.config(k, v)
    return builder.getOrCreate()
