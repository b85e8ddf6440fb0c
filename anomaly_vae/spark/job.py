"""The file job of ``anomaly-vae spark-score``: read CSV / Parquet (or a directory of part files)
or an image folder with Spark, score it (``frames``), write it atomically, summarise it; and the
SparkSession it runs in."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..batch import BatchSummary
from ..exceptions import InputError
from .frames import BATCH_BYTES, DriverModel, driver_model, score_dataframe, score_images
from .output import OutputStaging
from .worker import CORRUPT_COLUMN, CsvLayout, glob_escaped, local_path, on_another_file_system

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from ..detector import VAEAnomalyDetector

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

    fmt = _format_of(path, spark)
    if fmt == "parquet":
        df = spark.read.parquet(glob_escaped(path))
        _check_names(path, df.columns)
        return df, None
    delimiter = sep if sep is not None else _sniff(path)
    if len(delimiter) != 1:
        raise InputError(f"the separator must be one character, got {delimiter!r}")
    # enforceSchema off: every part file's header is checked against the first one (by name and
    # place), so a part with its columns in another order is refused instead of read by position
    reader = (spark.read.option("header", "true").option("enforceSchema", "false").option("mode", "PERMISSIVE")
              .option("multiLine", multiline)
              .option("sep", delimiter).option("encoding", "UTF-8").option("nanValue", "NaN")
              .option("positiveInf", "Inf").option("negativeInf", "-Inf"))
    header = _local_header(path, delimiter)
    if header is None:  # not a local file: Spark reads the first line (every column a string)
        header = reader.csv(glob_escaped(path)).schema.fieldNames()
    _check_names(path, header)
    dup = sorted({n for n in header if header.count(n) > 1})
    if dup:
        raise InputError(f"{path}, line 1: duplicate column name(s) {dup} in the header")
    fields = [StructField(n, DoubleType() if n in numeric else StringType(), True) for n in header]
    schema = StructType([*fields, StructField(CORRUPT_COLUMN, StringType(), True)])
    df = reader.schema(schema).option("columnNameOfCorruptRecord", CORRUPT_COLUMN).csv(glob_escaped(path))
    return df, CsvLayout(delimiter, tuple(header))


def _check_names(path: str, names: list[str]) -> None:
    reserved = [n for n in names if n.startswith("_anomaly_vae_")]
    if reserved:
        raise InputError(f"{path}: column name(s) {reserved} start with '_anomaly_vae_', which the Spark job keeps for "
                         "its own columns; rename them")


def _check_paths(data: str, out: str) -> None:
    """Refuse an output that is, holds or sits inside the input, and local paths Spark would misread."""
    for what, p in (("input", data), ("output", out)):
        if not p.strip():
            raise InputError(f"the {what} path is empty")
        scheme = p.split(":", 1)[0] if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", p) else ""
        if scheme.lower() == "file" and scheme != "file":  # FILE:/x would be another file system to the checks
            raise InputError(f"{p}: write the scheme of a local path as 'file:' (lower case), or give a plain path")
        if on_another_file_system(p):
            continue
        if not local_path(p).strip():
            raise InputError(f"{p}: the {what} path is empty")
        if p.startswith("file://") and not p.startswith("file:///"):
            host = p[len("file://"):].split("/", 1)[0]
            raise InputError(f"{p}: a file: URI with a host ({host!r}) is not a local path Spark reads; give the "
                             f"{what} as file:///PATH or a plain path")
        name = Path(local_path(p)).name
        if ":" in local_path(p):
            raise InputError(f"{p}: Spark's file system cannot read a local path with ':' in it ({name}); "
                             f"rename the {what} or link to it under another name")
    if on_another_file_system(data) or on_another_file_system(out):
        if data.rstrip("/") == out.rstrip("/"):
            raise InputError(f"{out}: the output is the input; give another --out")
        return
    src, dst = Path(local_path(data)).resolve(), Path(local_path(out.rstrip("/"))).resolve()
    if src == dst or src.is_relative_to(dst) or dst.is_relative_to(src):
        raise InputError(f"{out}: the output is, holds or sits inside the input ({data}): writing it would "
                         "replace or mix with the data being read; give another --out")


def _first_part(path: str) -> Path | None:
    """The local file a path names, or the first part file (by name) of a local directory."""
    if on_another_file_system(path):
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
    with open(first, "rb") as f:
        line = f.readline(1 << 20)
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{first}, line 1: cannot read the header row ({err}); the header must be UTF-8") from None
    row = next(csv.reader([text.rstrip("\r\n")], delimiter=sep), None)
    if not row:
        raise InputError(f"{first}: the file is empty (expected a header row and data rows)")
    return [h.strip() for h in row]


def _format_of(path: str, spark: SparkSession | None = None) -> str:
    """"csv" or "parquet", from the file's suffix or, for a directory, from its part files' (hidden
    and ``_`` files skipped, as Spark skips them); a directory that mixes them, or holds other
    files (images), is refused. A path on another file system (hdfs://, s3a://) without a suffix
    is listed through Hadoop's file system."""
    from ..io.files import IMAGE_SUFFIXES

    p = Path(local_path(path))
    names = [p.name]
    remote = on_another_file_system(path)
    if remote and spark is not None and not p.name.lower().endswith((".parquet", ".parq", ".pq", ".csv", ".tsv")):
        jvm = spark.sparkContext._jvm
        target = jvm.org.apache.hadoop.fs.Path(path)
        fs = target.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        if fs.getFileStatus(target).isDirectory():
            names = sorted(str(st.getPath().getName()) for st in fs.listStatus(target) if st.isFile()
                           and not str(st.getPath().getName()).startswith((".", "_")))
    elif p.is_dir():
        names = sorted(f.name for f in p.rglob("*") if f.is_file() and not any(
            part.startswith((".", "_")) for part in f.relative_to(p).parts))
        if any(n.lower().endswith(IMAGE_SUFFIXES) for n in names):
            raise InputError(f"{path} is a folder of images, but this model scores tables")
    found = set()
    for n in names:
        low = n.lower()
        if low.endswith((".parquet", ".parq", ".pq")):
            found.add("parquet")
        elif low.endswith((".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".csv.bz2")):
            found.add("csv")
        elif p.is_dir() or len(names) > 1:
            raise InputError(f"{path}: {n} is not a CSV or Parquet part file (by its suffix)")
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:
        raise InputError(f"{path}: the directory mixes CSV and Parquet part files")
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


class JobCheck(NamedTuple):
    """What ``check_job`` found: the output's format, and the model as the job will use it."""

    format: str
    model: DriverModel
    job: tuple[str, str, str, float | None]  # model_dir, data, out and alpha, as given


def check_job(model_dir: str, data: str, out: str, alpha: float | None = None, *,
              local: bool = False) -> JobCheck:
    """The checks of ``spark_score`` that need no Spark, so that a command line can make them
    before it starts one (seconds): the output's format, the input and output paths, and the
    model, loaded and checked, with a usable threshold at ``alpha`` (all returned; pass the result
    to ``spark_score`` as ``checked`` and the model is not loaded again). ``local``: the job runs on
    this machine (``local[...]`` master), so a local input path that does not exist is refused here
    too; on a cluster a path without a scheme may name the cluster's file system."""
    fmt_out = _output_format(out)
    _check_paths(data, out)
    model = driver_model(model_dir, alpha)
    det = model.detector
    det.check_threshold()  # an alpha the calibration cannot serve: before Spark starts, not after
    if local and not on_another_file_system(data):
        if not os.path.exists(local_path(data)):  # a dangling link too
            raise FileNotFoundError(f"{data}: no such file or directory")
        if det.input_kind_ == "table":
            _format_of(data)  # a folder of images, or of files that are not tables, for a table model
    return JobCheck(fmt_out, model, (str(model_dir), str(data), str(out), alpha))


def spark_score(spark: SparkSession, model_dir: str, data: str, out: str, *, id_column: str | None = None,
                explain: int = 0, score: str | None = None, alpha: float | None = None, sep: str | None = None,
                partitions: int | None = None, multiline: bool = False,
                batch_bytes: int = BATCH_BYTES, checked: JobCheck | None = None,
                on_stop: Callable[[], object] | None = None) -> BatchSummary:
    """The job of ``anomaly-vae spark-score``: score ``data`` (CSV / Parquet, a directory of part
    files, or a folder of images) into ``out`` (a directory of .csv or .parquet part files, written
    by Spark's committer to a temporary directory and renamed into place, replacing an old one), and
    summarise it as ``anomaly-vae score`` does. Checks that the output has one row per input row.
    ``checked``: ``check_job``'s result for this model, data, output and alpha (the model is then
    loaded once per job, not again here). ``on_stop``: called when a stop (``KeyboardInterrupt``)
    leaves the writing, before its Spark jobs are cancelled (``OutputStaging``)."""
    start = time.perf_counter()
    from pyspark.sql import functions as F

    job = (str(model_dir), str(data), str(out), alpha)
    if checked is None:
        checked = check_job(model_dir, data, out, alpha)
    elif checked.job != job:
        raise ValueError(f"checked is check_job's result for (model_dir, data, out, alpha) = {checked.job}, not {job}")
    fmt_out, model = checked.format, checked.model
    det = model.detector  # for the summary; the scorers use this load too, and the executors its card
    images = det.input_kind_ == "image"  # the model says what the data is
    skipped = 0
    if images:
        if id_column:
            raise InputError("an id column is for CSV and Parquet tables, not image folders")
        scored, skipped = score_images(spark, data, model_dir, explain=explain, score=score, alpha=alpha,
                                       batch_bytes=batch_bytes, _model=model)
        id_name = "path"
    else:
        df, layout = read_table(spark, data, sep=sep, multiline=multiline, numeric=tuple(
            c["name"] for c in det.preprocessor_.columns if c["type"] == "numeric"))
        if id_column is None:  # number rows by file name and place in the file, as the files were read
            df = (df.withColumn("_anomaly_vae_file", F.col("_metadata.file_path"))
                  .withColumn("_anomaly_vae_block", F.col("_metadata.file_block_start")))
        scored = score_dataframe(df, model_dir, id_column=id_column, explain=explain, score=score, alpha=alpha,
                                 partitions=partitions, batch_bytes=batch_bytes, _file_order=id_column is None,
                                 _csv=layout, _model=model)
        id_name = id_column or "row"
    # a CSV line with too few or too many fields is a malformed record only when the parser splits
    # every field (with column pruning it tokenizes the selected ones): off for the scoring pass
    # only (the counting pass needs no field), then restored
    pruning_key = "spark.sql.csv.parser.columnPruning.enabled"
    pruning = spark.conf.get(pruning_key, "true")
    with OutputStaging(spark, out, on_stop=on_stop) as staging:
        spark.conf.set(pruning_key, "false")
        try:
            staging.write(scored, fmt_out)
        finally:
            spark.conf.set(pruning_key, pruning)
        written = spark.read.schema(scored.schema).option("header", "true").option("escape", '"').format(
            fmt_out).load(staging.tmp_str)
        summary = _summarise(written, scored, det, skipped, id_name, out)  # checked before the rename
        staging.commit()
    summary.output = Path(out) if "://" not in out else None
    summary.seconds = time.perf_counter() - start
    return summary


def _summarise(written: DataFrame, scored: DataFrame, det: VAEAnomalyDetector, skipped: int, id_name: str,
               out: str) -> BatchSummary:
    from pyspark.sql import functions as F

    counted = getattr(scored, "_anomaly_vae_counted", None)  # rows the numbering counted (auto-numbered only)
    agg = written.agg(F.count(F.lit(1)).alias("rows"), F.count("score").alias("scored"),
                      F.sum(F.col("is_anomaly").cast("long")).alias("anomalies"), F.count("error").alias("errors"),
                      *([F.min("row").alias("lo"), F.max("row").alias("hi")] if counted is not None else [])
                      ).collect()[0]
    summary = BatchSummary(rows=int(agg["rows"]), scored=int(agg["scored"]), anomalies=int(agg["anomalies"] or 0),
                           errors=int(agg["errors"]), alpha=det.alpha_, threshold=float(det.threshold_),
                           skipped_files=skipped, id_name=id_name)
    if counted is not None and (int(counted) != summary.rows or (summary.rows and (
            agg["lo"] != 0 or agg["hi"] != summary.rows - 1))):
        raise InputError(f"{out}: {summary.rows} rows written, numbered {agg['lo']}..{agg['hi']}, where {counted} were "
                         "counted: the input changed while it was read; nothing was written")
    if summary.errors:
        first = written.filter(F.col("error").isNotNull()).orderBy(id_name).select(id_name, "error").limit(5).collect()
        summary.first_errors = [(r[id_name], r["error"]) for r in first]
    return summary


# --- the command ---------------------------------------------------------------------------------

def _default_master(master: str | None) -> str | None:
    """``master``, else ``local[*]`` when not under ``spark-submit`` (None: the one it set)."""
    if master is None and not os.environ.get("PYSPARK_GATEWAY_PORT"):
        return "local[*]"
    return master


def reads_local_files(master: str | None, conf: dict[str, str] | None = None) -> bool:
    """Whether ``session(master, conf)`` surely reads a path without a scheme from this machine's
    disk: a ``local[...]`` master, and nothing that could set another default file system or
    master (a ``fs.default*`` or ``spark.master`` setting in ``conf``, a Hadoop, YARN or Spark
    configuration directory, a ``spark-defaults.conf``). When unsure: False, and Spark decides."""
    conf = conf or {}
    master = _default_master(conf.get("spark.master", master))
    if master is None or not master.startswith("local"):
        return False
    if any("fs.default" in key for key in conf):
        return False
    if any(os.environ.get(v) for v in ("HADOOP_CONF_DIR", "YARN_CONF_DIR", "SPARK_CONF_DIR")):
        return False
    home = os.environ.get("SPARK_HOME")
    return not (home and Path(home, "conf", "spark-defaults.conf").exists())


def session(master: str | None = None, conf: dict[str, str] | None = None, app: str = "anomaly-vae spark-score") -> SparkSession:
    """A SparkSession for the job: ``master`` (None: the one ``spark-submit`` set, else ``local[*]``),
    Arrow on, the Python of this process on the executors when local, extra ``conf`` on top."""
    _pyspark()
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app)
    master = _default_master(master)
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
