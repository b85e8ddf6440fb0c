"""Scoring Spark DataFrames: ``score_dataframe`` (a table) and ``score_images`` (``binaryFile`` rows),
lazy DataFrames whose rows ``mapInPandas`` scores on the executors (``worker``); the model shipped
by ``ship_model``; the output schema; row numbering."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..artifact import JSON_NAME, WEIGHTS_NAME, read_model_card
from ..batch import RESULT_COLUMNS, explain_columns
from ..exceptions import ArtifactError, InputError
from ..io.files import IMAGE_SUFFIXES
from .staging import new_staging_dir
from .worker import (CORRUPT_COLUMN, ROW_COLUMN, CsvLayout, card_digest, glob_escaped, image_scorer, local_path,
                     on_another_file_system, table_scorer)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

    from ..detector import VAEAnomalyDetector

__all__ = ["score_dataframe", "score_images", "ship_model", "driver_detector", "driver_model", "DriverModel",
           "result_schema", "BATCH_BYTES", "ROW_COLUMN"]

BATCH_BYTES = 16 << 20
"""Input bytes scored at once on an executor (Arrow batches are merged or split to about this)."""


# --- the model, shipped as its directory ---------------------------------------------------------

def ship_model(spark: SparkSession, model_dir: str | os.PathLike[str]) -> tuple[str, str]:
    """Check ``model_dir`` on the driver and ship a copy of it to the executors with
    ``SparkContext.addFile``. Returns (name under ``SparkFiles``, sha256 of its model.json); the
    card pins the weights' sha256, so the pair identifies the whole model."""
    model = driver_model(model_dir)  # a bad model stops the job here, before any executor starts
    return _ship(spark, Path(model_dir), model.digest)


def _ship(spark: SparkSession, src: Path, digest: str) -> tuple[str, str]:
    """``ship_model`` for a model directory the caller has already loaded (so checked) from the card
    whose sha256 is ``digest``: the copy shipped must be that card, so the executors score with the
    model the driver checked (and summarises with), not one written over it since."""
    name = f"anomaly-vae-model-{digest[:24]}"
    sc = spark.sparkContext
    shipped = getattr(sc, "_anomaly_vae_models", None)
    if shipped is None:
        shipped = sc._anomaly_vae_models = {}  # per SparkContext: addFile refuses a name twice
    if name not in shipped:
        parent = new_staging_dir()  # served to executors while the application runs, removed at exit
        staging = parent / name
        staging.mkdir()
        for f in (JSON_NAME, WEIGHTS_NAME):
            shutil.copyfile(src / f, staging / f)
        try:
            if card_digest(staging) != digest:
                raise ArtifactError(f"{src / JSON_NAME} changed after it was loaded; run the job again")
            try:  # the card pins the weights' sha256: the copy's weights must be the ones the driver loaded
                read_model_card(staging)
            except ArtifactError:
                raise ArtifactError(f"{src / WEIGHTS_NAME} changed after the model was loaded (it no longer "
                                    f"matches the sha256 in {src / JSON_NAME}); run the job again") from None
        except BaseException:
            shutil.rmtree(parent, ignore_errors=True)
            raise
        sc.addFile(str(staging), recursive=True)
        shipped[name] = staging
    return name, digest


class DriverModel(NamedTuple):
    """A model loaded on the driver, and the sha256 of the card it was loaded from."""

    detector: VAEAnomalyDetector
    digest: str


def driver_model(model_dir: str | os.PathLike[str], alpha: float | None = None) -> DriverModel:
    """``driver_detector`` with the sha256 of the card it loaded: the card read before and after
    the load must be the same bytes (a model being written over while the job starts is refused)."""
    path = Path(model_dir)
    try:
        digest = card_digest(path)
    except OSError:
        digest = ""  # load_detector says what is wrong with the directory
    det = driver_detector(path, alpha)
    if card_digest(path) != digest:
        raise ArtifactError(f"{path / JSON_NAME} changed while it was being loaded; run the job again")
    return DriverModel(det, digest)


def driver_detector(model_dir: str | os.PathLike[str], alpha: float | None = None) -> VAEAnomalyDetector:
    """The model loaded on the driver (checked in full), at ``alpha`` when one is given: an alpha
    its calibration cannot serve is a ``CalibrationError`` (a Spark job needs the threshold)."""
    from ..detector import load_detector

    det = load_detector(model_dir)
    if alpha is not None:
        det.set_alpha(alpha, strict=True)
    return det


# --- output schema -----------------------------------------------------------------------------

def result_schema(id_name: str, explain_names: list[str], numbered: bool | None = None) -> StructType:
    """The Spark schema of the output: the columns of ``anomaly-vae score`` (``row`` is a long, an
    id or ``path`` a string), then the explanation columns."""
    from pyspark.sql.types import BooleanType, DoubleType, LongType, StringType, StructField, StructType

    types = {"score": DoubleType(), "p_value": DoubleType(), "is_anomaly": BooleanType(),
             "threshold": DoubleType(), "error": StringType()}
    numbered = id_name == "row" if numbered is None else numbered
    fields = [StructField(id_name, LongType() if numbered else StringType(), not numbered)]  # an id may be missing
    fields += [StructField(c, types[c], True) for c in RESULT_COLUMNS]
    fields += [StructField(c, StringType() if c.endswith("_feature") else DoubleType(), True) for c in explain_names]
    return StructType(fields)


# --- driver side ---------------------------------------------------------------------------------

def _number_rows(df: DataFrame, keys: list[str]) -> tuple[int, DataFrame]:
    """(rows counted, ``df`` with a 0-based ``ROW_COLUMN`` column): rows ordered by the groups ``keys``
    (each group contiguous in one partition, the groups in the order of their keys), then by their
    place in the partition. One counting pass."""
    from pyspark.sql import functions as F

    tagged = df.withColumn("_anomaly_vae_pid", F.spark_partition_id()).withColumn(
        "_anomaly_vae_mid", F.monotonically_increasing_id())
    counts = (tagged.groupBy(*keys).agg(F.count(F.lit(1)).alias("n"), F.min("_anomaly_vae_mid").alias("first"))
              .orderBy(*keys).collect())
    bases, offset = [], 0
    for r in counts:
        bases.append((*[r[k] for k in keys], offset - int(r["first"])))
        offset += int(r["n"])
    spark = df.sparkSession
    base_df = spark.createDataFrame(bases, schema=tagged.select(*keys).schema.add("_anomaly_vae_base", "long"))
    joined = tagged.join(F.broadcast(base_df), on=keys, how="left")
    return offset, joined.withColumn(ROW_COLUMN, F.col("_anomaly_vae_base") + F.col("_anomaly_vae_mid")).drop(
        "_anomaly_vae_pid", "_anomaly_vae_mid", "_anomaly_vae_base")


def _table_columns(det: VAEAnomalyDetector, df: DataFrame) -> list[str]:
    if det.input_kind_ != "table":
        raise InputError("this model scores images: use score_images (a folder) instead of a table")
    names = [c["name"] for c in det.preprocessor_.columns]
    missing = [n for n in names if n not in df.columns]
    if missing:
        raise InputError(f"missing column(s) {missing}; the model expects columns {names}", reason="missing_column")
    return names


def score_dataframe(df: DataFrame, model_dir: str | os.PathLike[str], *, id_column: str | None = None,
                    explain: int = 0, score: str | None = None, alpha: float | None = None,
                    partitions: int | None = None, batch_bytes: int = BATCH_BYTES, _file_order: bool = False,
                    _csv: CsvLayout | None = None, _model: DriverModel | None = None) -> DataFrame:
    """Score every row of a Spark DataFrame with the model in ``model_dir``, as ``anomaly-vae score``.

    Parameters
    ----------
    df : rows with (at least) the model's columns, of any Spark type the core reads (numbers or
        strings; strings in a numeric column are parsed, and a bad one is that row's error).
    model_dir : the model directory (a local path on the driver; shipped to the executors).
    id_column : a column copied to the output as the id (as a string); without it the id column is
        ``row``, the 0-based position of the row in ``df`` (see the module docstring).
    explain : add the ``explain`` features that contribute most to each score.
    score : score kind; None is the model's.
    alpha : a target false-alarm rate other than the model's (as ``anomaly-vae score --alpha``).
    partitions : repartition the rows (after numbering them) into this many partitions to score.
    batch_bytes : input bytes scored at once on an executor.

    Returns
    -------
    DataFrame : lazy; one row per input row: the id or ``row``, score, p_value, is_anomaly, threshold,
        error, and with ``explain`` the ``top1_feature``, ``top1_nats``, ... columns.
    """
    det, digest = _model or driver_model(model_dir, alpha)  # _model: spark_score's, loaded once per job
    det.check_threshold()
    columns = _table_columns(det, df)
    if id_column is not None and id_column not in df.columns:
        raise InputError(f"the id column {id_column!r} is not in the DataFrame; columns are {df.columns}")
    if batch_bytes < 1:
        raise InputError(f"batch_bytes must be >= 1, got {batch_bytes}")
    name, digest = _ship(df.sparkSession, Path(model_dir), digest)
    keep = list(dict.fromkeys([*columns, *([id_column] if id_column else []),
                               *([CORRUPT_COLUMN] if _csv is not None else [])]))
    if id_column is None:
        # files: (file, block) pieces in name order, each in one partition; else the partitions in order
        keys = ["_anomaly_vae_file", "_anomaly_vae_block"] if _file_order else ["_anomaly_vae_pid"]
        counted, numbered = _number_rows(df, keys)
        src, id_source, id_name = numbered.select(*keep, ROW_COLUMN), ROW_COLUMN, "row"
    else:
        src, id_source, id_name = df.select(*keep), id_column, id_column
    if partitions is not None:
        if partitions < 1:
            raise InputError(f"partitions must be >= 1, got {partitions}")
        src = src.repartition(int(partitions))
    names = explain_columns(det, explain)
    fn = table_scorer(name, digest, alpha, columns, id_name, id_source, explain, score, _csv, batch_bytes)
    scored = src.mapInPandas(fn, result_schema(id_name, names, numbered=id_column is None))
    if id_column is None:
        scored._anomaly_vae_counted = counted  # rows the numbering counted: spark_score checks the output has them
    return scored


def score_images(spark: SparkSession, folder: str, model_dir: str | os.PathLike[str], *, explain: int = 0,
                 score: str | None = None, alpha: float | None = None, batch_bytes: int = BATCH_BYTES,
                 _model: DriverModel | None = None) -> tuple[DataFrame, int]:
    """Score every image file under ``folder`` (recursively) through Spark's ``binaryFile`` source,
    as ``anomaly-vae score`` scores a folder: one row per image file, ``path`` relative to the
    folder, a corrupt file kept with its error. Returns (lazy output DataFrame, files skipped:
    other extensions or hidden)."""
    from pyspark.sql import functions as F

    det, digest = _model or driver_model(model_dir, alpha)
    det.check_threshold()
    if det.input_kind_ != "image":
        raise InputError(f"{folder} is a folder of images, but this model scores tables")
    name, digest = _ship(spark, Path(model_dir), digest)
    files = (spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(glob_escaped(folder))
             .select("path", "content"))
    ext = F.lower(F.regexp_extract("path", r"(\.[^./]+)$", 1))
    hidden = F.regexp_extract("path", r"/([^/]*)$", 1).startswith(".")
    is_image = ext.isin(*IMAGE_SUFFIXES) & ~hidden
    names = explain_columns(det, explain)
    schema = result_schema("path", names)
    local = not on_another_file_system(folder)
    # the local path first: abspath of "file:/x" made it relative to the working directory, and the
    # output named every image by its absolute path instead of its path within the folder
    root = (os.path.abspath(local_path(folder)) if local else folder).rstrip("/") + "/"
    empty_rows: list[tuple[object, ...]] = []
    if local:  # listed as `score` lists it (skipped files too)
        from ..io.images import list_images

        paths, skipped = list_images(local_path(folder))
        n_images = len(paths)
        for p in paths:  # Spark's file source leaves out empty files: they get `score`'s error row here
            if p.is_file() and p.stat().st_size == 0:
                rel = p.relative_to(local_path(folder)).as_posix()
                empty_rows.append((rel, None, None, None, float(det.threshold_), _empty_image_error(p),
                                   *([None] * len(names))))
    else:
        counts = files.select(is_image.alias("img")).groupBy("img").count().collect()
        n_images = sum(int(r["count"]) for r in counts if r["img"])
        skipped = sum(int(r["count"]) for r in counts if not r["img"])
    if n_images == 0:
        raise InputError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder or below")
    fn = image_scorer(name, digest, alpha, root, folder, explain, score, batch_bytes)
    scored = files.filter(is_image).mapInPandas(fn, schema)
    if empty_rows:
        scored = scored.unionByName(spark.createDataFrame(empty_rows, schema))
    return scored, skipped


def _empty_image_error(path: Path) -> str:
    """What ``anomaly-vae score`` says of an empty image file (Pillow's own words)."""
    from ..io.images import load_image

    try:
        load_image(path, None, 1)
    except InputError as err:
        return str(err)
    return f"{path}: an empty file"


