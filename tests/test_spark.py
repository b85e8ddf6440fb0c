"""Spark scoring (``anomaly_vae.spark``, ``anomaly-vae spark-score``) against a real Spark in local
mode (``local[2]``, on 127.0.0.1): the same rows, ids and scores as the one-process job."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_vae.scoring import CROSS_CPU_ATOL, CROSS_CPU_RTOL
from anomaly_vae.io.tables import EXACT_FLOATS

from .conftest import SIGNAL_SHIM

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def spark():
    if shutil.which("java") is None:
        pytest.skip("no Java runtime on this machine (`.ci/run` installs a headless JRE from Debian)")
    pytest.importorskip("pyspark", reason="PySpark is not installed: pip install 'anomaly-vae[spark]'")
    from anomaly_vae.spark import session

    s = session("local[2]", {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4"})
    s.sparkContext.setLogLevel("ERROR")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def table(cardio: pd.DataFrame, tmp_path_factory):
    """A model with a string column and missing values in training, and 300 rows to score with an
    id, missing values, a bad number, an unseen category and an infinite value."""
    from anomaly_vae import VAEAnomalyDetector

    df = cardio.drop(columns=["label"]).iloc[:, :6].copy()
    rng = np.random.RandomState(0)
    df["site"] = rng.choice(["north", "south", "east"], len(df))
    df.loc[rng.rand(len(df)) < 0.05, "f01"] = np.nan
    det = VAEAnomalyDetector(epochs=3, random_state=0).fit(df.iloc[:1200])
    model = tmp_path_factory.mktemp("spark") / "model"
    det.save(model)
    rows = df.iloc[1200:1500].reset_index(drop=True).astype({"f02": object, "f04": object})
    rows.insert(0, "key", [f"k{i:03d}" for i in range(len(rows))])
    rows.loc[3, "f03"] = np.nan
    rows.loc[5, "f02"] = "abc"
    rows.loc[7, "site"] = "west"
    rows.loc[9, "f04"] = "1e999"
    return det, model, rows


def _collect(df) -> pd.DataFrame:
    """Rows of a small Spark DataFrame (not toPandas: PySpark 4.x's Arrow path warns under pandas 3)."""
    rows = df.collect()
    return pd.DataFrame([r.asDict() for r in rows], columns=df.columns)


def _read(path: Path) -> pd.DataFrame:
    parts = sorted(path.glob("part-*"))
    assert parts, f"no part files in {path}"
    if path.suffix == ".parquet":
        return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    return pd.concat([pd.read_csv(p, dtype={"error": str, "key": str}, **EXACT_FLOATS) for p in parts],
                     ignore_index=True)


def _same_scores(got: pd.DataFrame, want: pd.DataFrame, key: str) -> None:
    got = got.sort_values(key).reset_index(drop=True)
    want = want.sort_values(key).reset_index(drop=True)
    assert got[key].astype(str).tolist() == want[key].astype(str).tolist()  # no row lost or duplicated
    np.testing.assert_array_equal(got["score"].to_numpy(float), want["score"].to_numpy(float))  # bit-identical
    np.testing.assert_array_equal(got["p_value"].to_numpy(float), want["p_value"].to_numpy(float))
    assert got["error"].notna().tolist() == want["error"].notna().tolist()
    value_errors = want["error"].notna() & ~want["error"].astype(str).str.startswith("line ")
    assert value_errors.any()
    assert got["error"][value_errors].tolist() == want["error"][value_errors].tolist()  # the core's own words
    flagged = lambda d: d["is_anomaly"].map({True: 1, False: 0, "True": 1, "False": 0}).fillna(-1).tolist()  # noqa: E731
    assert flagged(got) == flagged(want)


@pytest.mark.parametrize("partitions", [1, 3, 7])
def test_score_dataframe_matches_the_python_api_on_shuffled_rows(spark, table, partitions):
    from anomaly_vae.spark import score_dataframe

    det, model, rows = table
    shuffled = rows.sample(frac=1.0, random_state=partitions)
    df = spark.createDataFrame(shuffled.astype(str).replace({"nan": None})).repartition(partitions)
    got = _collect(score_dataframe(df, model, id_column="key"))
    want_scores, want_errors = det.anomaly_score_rows(rows.drop(columns="key"))
    assert len(got) == len(rows)
    got = got.set_index("key").loc[rows["key"]]
    np.testing.assert_array_equal(got["score"].to_numpy(float), want_scores)
    assert [e is not None for e in want_errors] == got["error"].notna().tolist()
    assert got["error"].notna().sum() == 2  # the bad number and the infinite value; the rest scored
    assert "expected a number, got 'abc'" in got.loc["k005", "error"]
    assert got["score"].drop(["k005", "k009"]).notna().all()


def test_row_numbers_follow_the_dataframe_order_whatever_the_partitioning(spark, table):
    from anomaly_vae.spark import score_dataframe

    det, model, rows = table
    df = spark.createDataFrame(rows.drop(columns="key").astype(str).replace({"nan": None}), samplingRatio=None)
    got = _collect(score_dataframe(df.coalesce(3), model, partitions=7)).sort_values("row")
    assert got["row"].tolist() == list(range(len(rows)))
    want, _ = det.anomaly_score_rows(rows.drop(columns="key"))
    np.testing.assert_array_equal(got["score"].to_numpy(float), want)


@pytest.mark.parametrize(("src", "dst", "partitions"), [(".csv", ".parquet", None), (".parquet", ".csv", 3),
                                                        (".csv", ".csv", 7)])
def test_spark_score_equals_anomaly_vae_score(spark, table, tmp_path, src, dst, partitions):
    from anomaly_vae.batch import score_file
    from anomaly_vae.spark import spark_score

    det, model, rows = table
    data = tmp_path / f"in{src}"
    if src == ".csv":
        rows.to_csv(data, index=False)
        with open(data, "a") as f:
            f.write("k999,1,2\n\n")  # a line with too few fields, then a blank line (not a row)
    else:
        rows.astype({"f02": str, "f04": str}).to_parquet(data)
    want_path = tmp_path / f"want{dst}"
    score_file(det, data, want_path)
    summary = spark_score(spark, str(model), str(data), str(tmp_path / f"out{dst}"), partitions=partitions, explain=2)
    got = _read(tmp_path / f"out{dst}")
    want = pd.read_parquet(want_path) if dst == ".parquet" else pd.read_csv(want_path, **EXACT_FLOATS)
    assert list(got.columns) == ["row", "score", "p_value", "is_anomaly", "threshold", "error",
                                 "top1_feature", "top1_nats", "top2_feature", "top2_nats"]
    _same_scores(got, want, "row")
    assert summary.rows == len(want) and summary.errors == int(want["error"].notna().sum())
    if src == ".csv":
        assert summary.rows == len(rows) + 1
        assert "malformed CSV record" in got.set_index("row").loc[len(rows), "error"]
    assert not list(tmp_path.glob("*.part-*")), "a temporary output was left behind"


def test_a_directory_of_part_files_is_numbered_in_file_name_order(spark, table, tmp_path):
    from anomaly_vae.spark import spark_score

    det, model, rows = table
    folder = tmp_path / "parts"
    folder.mkdir()
    pieces = [rows.iloc[:50], rows.iloc[50:230], rows.iloc[230:]]  # sizes differ: Spark reads the largest first
    for i, piece in enumerate(pieces):
        piece.to_csv(folder / f"part-{i:05d}.csv", index=False)
    (folder / "_SUCCESS").touch()
    spark_score(spark, str(model), str(folder), str(tmp_path / "out.parquet"))
    got = _read(tmp_path / "out.parquet").sort_values("row")
    assert got["row"].tolist() == list(range(len(rows)))
    want, _ = det.anomaly_score_rows(rows.drop(columns="key"))
    np.testing.assert_array_equal(got["score"].to_numpy(float), want)


def test_an_image_folder_through_binary_files_matches_the_cli(spark, fashion_sample, tmp_path):
    from PIL import Image

    from anomaly_vae import VAEAnomalyDetector
    from anomaly_vae.batch import score_file
    from anomaly_vae.spark import spark_score

    images, labels = fashion_sample
    det = VAEAnomalyDetector(epochs=1, alpha=0.05, random_state=0).fit(images[labels == 0].astype(np.float32) / 255.0)
    det.save(tmp_path / "model")
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(24):
        Image.fromarray(images[i]).save(folder / ("sub" if i % 3 == 0 else ".") / f"img{i:02d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")
    score_file(det, folder, tmp_path / "want.parquet")
    summary = spark_score(spark, str(tmp_path / "model"), str(folder), str(tmp_path / "out.parquet"), partitions=2)
    got = _read(tmp_path / "out.parquet").sort_values("path").reset_index(drop=True)
    want = pd.read_parquet(tmp_path / "want.parquet").sort_values("path").reset_index(drop=True)
    assert got["path"].tolist() == want["path"].tolist()
    assert "sub/img00.png" in got["path"].tolist()
    np.testing.assert_allclose(got["score"].to_numpy(float), want["score"].to_numpy(float),
                               rtol=CROSS_CPU_RTOL, atol=CROSS_CPU_ATOL)
    bad = got.set_index("path").loc["broken.png"]
    assert pd.isna(bad["score"]) and "broken.png" in bad["error"]
    assert summary.rows == 25 and summary.errors == 1 and summary.skipped_files == 1


def test_a_model_changed_after_shipping_is_refused_on_the_executor(spark, table, tmp_path):
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PythonException

    from anomaly_vae import load_detector
    from anomaly_vae.spark import score_dataframe

    det, model, rows = table
    load_detector(model).set_alpha(0.02).save(tmp_path / "model")  # a model not shipped before
    df = spark.createDataFrame(rows.drop(columns="key").astype(str).replace({"nan": None}))
    scored = score_dataframe(df, tmp_path / "model", id_column="f00")
    shipped = spark.sparkContext._anomaly_vae_models
    staged = next(path for name, path in shipped.items() if name.endswith(_digest(tmp_path / "model")[:24]))
    shutil.copyfile(staged / "model.json", tmp_path / "shipped.json")
    shutil.copyfile(model / "model.json", staged / "model.json")  # another valid card, swapped in before the executors fetch it
    try:
        with pytest.raises((PythonException, Py4JJavaError), match="changed in transit or in storage|does not match contents"):
            scored.collect()  # Spark's own fetch check (local mode) or ours on the executor, whichever sees it first
    finally:  # every later task of this Spark application fetches the shipped files again: put it back
        shutil.copyfile(tmp_path / "shipped.json", staged / "model.json")


def test_the_executor_checks_the_card_it_received_against_the_driver_s(table, tmp_path, monkeypatch):
    pyspark = pytest.importorskip("pyspark")
    from anomaly_vae import ArtifactError
    from anomaly_vae.spark.worker import executor_detector as _executor_detector

    det, model, rows = table
    other = tmp_path / "other"
    det.set_alpha(0.03)
    try:
        det.save(other)  # a valid model, but another card than the one the driver shipped
    finally:
        det.set_alpha(0.01)
    monkeypatch.setattr(pyspark.SparkFiles, "get", staticmethod(lambda name: str(other)))
    with pytest.raises(ArtifactError, match="changed in transit or in storage"):
        _executor_detector("anomaly-vae-model-x", _digest(model), None)
    assert _executor_detector("anomaly-vae-model-x", _digest(other), None).alpha_ == 0.03


def _digest(model: Path) -> str:
    import hashlib

    return hashlib.sha256((model / "model.json").read_bytes()).hexdigest()


def test_a_missing_model_column_stops_the_job_before_spark_runs(spark, table):
    from anomaly_vae import InputError
    from anomaly_vae.spark import score_dataframe

    _, model, rows = table
    df = spark.createDataFrame(rows.drop(columns=["key", "site"]).astype(str))
    with pytest.raises(InputError, match=r"missing column\(s\) \['site'\]"):
        score_dataframe(df, model)


def test_cli_spark_score_summary_and_exit_codes(table, tmp_path):
    if shutil.which("java") is None:
        pytest.skip("no Java runtime on this machine")
    pytest.importorskip("pyspark")
    det, model, rows = table
    rows.to_csv(tmp_path / "in.csv", index=False)

    def spark_cli(data, out, model_dir=model, master="local[2]", quiet=True):
        cmd = [sys.executable, "-m", "anomaly_vae.cli", "spark-score", str(model_dir), str(data), "--out", str(out),
               "--master", master, "--id-column", "key", "--partitions", "3", *(["--quiet"] if quiet else []),
               "--conf", "spark.ui.enabled=false"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    run = spark_cli(tmp_path / "in.csv", tmp_path / "out.parquet")
    assert run.returncode == 3, run.stderr[-2000:]  # two rows with errors, as `anomaly-vae score`
    assert f"scored 298 of 300 rows from {tmp_path / 'in.csv'}" in run.stdout
    assert "Warning" not in run.stderr, run.stderr[-2000:]  # PySpark's pandas 3 FutureWarning is not the user's
    for start_line in ("incubator modules", "log4j profile", "default log level", "setLogLevel", "NativeCodeLoader"):
        assert start_line not in run.stderr, run.stderr[-2000:]  # --quiet: the JVM's start lines too
    # a Spark that cannot start (here a master Spark does not know) is one line after the JVM's own message
    for quiet in (True, False):
        odd = spark_cli(tmp_path / "in.csv", tmp_path / "o.csv", master="nowhere://x", quiet=quiet)
        assert odd.returncode == 1 and "Traceback" not in odd.stderr, odd.stderr[-2000:]
        assert odd.stderr.rstrip().splitlines()[-1].startswith("anomaly-vae: error: Spark did not start: ")
        assert "Master must either be yarn or start with spark" in odd.stderr  # the JVM's reason, kept
        assert ("\tat org.apache" in odd.stderr) is not quiet  # its Java stack trace only without --quiet
    assert "key k005: column 'f02': expected a number, got 'abc'" in run.stdout
    got = _read(tmp_path / "out.parquet")
    assert sorted(got["key"]) == sorted(rows["key"])
    # a wrong output name, input path or model is said before Spark starts (no JVM log lines)
    bad = spark_cli(tmp_path / "in.csv", tmp_path / "out.json")
    assert bad.returncode == 1 and "must end in .csv or .parquet" in bad.stderr
    missing = spark_cli(tmp_path / "nope.csv", tmp_path / "o.csv")
    assert missing.returncode == 1
    assert f"anomaly-vae: error: {tmp_path / 'nope.csv'}: no such file or directory" in missing.stderr
    no_model = spark_cli(tmp_path / "in.csv", tmp_path / "o.csv", model_dir=tmp_path)
    assert no_model.returncode == 1 and "model.json" in no_model.stderr
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "gone.csv")
    dangling = spark_cli(tmp_path / "dangling.csv", tmp_path / "o.csv")
    assert dangling.returncode == 1 and "dangling.csv: no such file or directory" in dangling.stderr
    (tmp_path / "pictures").mkdir()
    (tmp_path / "pictures" / "a.png").write_bytes(b"")
    images = spark_cli(tmp_path / "pictures", tmp_path / "o.csv")
    assert images.returncode == 1 and "is a folder of images, but this model scores tables" in images.stderr
    for r in (bad, missing, no_model, dangling, images):
        assert "Traceback" not in r.stderr and "log4j" not in r.stderr and not (tmp_path / "o.csv").exists()


def test_quiet_passes_the_jvms_lines_on_but_its_start_lines_and_stack_frames(capfd, tmp_path):
    """``spark-score --quiet`` reads the JVM's standard error through a pipe: the lines every start
    prints and Java stack frames are dropped, everything else is passed on, and a JVM that writes more
    than a pipe holds is never stalled (the lines are read as they come)."""
    from anomaly_vae.cli.spark_command import _JvmStderr

    start = ["WARNING: Using incubator modules: jdk.incubator.vector",
             "Using Spark's default log4j profile: org/apache/spark/log4j2-defaults.properties",
             'Setting default log level to "WARN".',
             "To adjust logging level use sc.setLogLevel(newLevel). For SparkR, use setLogLevel(newLevel).",
             "26/11/24 01:47:03 WARN NativeCodeLoader: Unable to load native-hadoop library for your platform... "
             "using builtin-java classes where applicable",
             "\tat org.apache.spark.deploy.SparkSubmit.main(SparkSubmit.scala)", "\t... 12 more"]
    kept = ['Exception in thread "main" org.apache.spark.SparkException: Master must be local',
            "Caused by: java.io.IOException: disk full", "26/11/24 01:47:05 ERROR Executor: lost", "x" * 300]
    lines = [*start, *kept] * 300  # about 200 KB: three times a pipe's buffer
    (tmp_path / "jvm.txt").write_text("\n".join(lines) + "\n")
    code = f"import sys; sys.stderr.write(open({str(tmp_path / 'jvm.txt')!r}).read())"
    jvm = _JvmStderr()
    kwargs: dict = {}
    jvm.popen_kwargs(kwargs)
    jvm.started(subprocess.Popen([sys.executable, "-c", code], **kwargs))
    jvm.drain(timeout=60)
    assert capfd.readouterr().err.splitlines() == kept * 300
    mine = {"stderr": subprocess.DEVNULL}
    jvm.popen_kwargs(mine)  # a choice PySpark made stays
    assert mine == {"stderr": subprocess.DEVNULL}


def test_a_spark_error_is_said_in_the_line_that_explains_it():
    """py4j's first line names only the Java call that failed: the Java exception's message is the one
    the user needs; the core's own message from a worker wins; any other error keeps its first line."""
    from anomaly_vae.cli.spark_command import _spark_message

    java = ("An error occurred while calling o91.collectToPython.\n: org.apache.spark.SparkException: Job aborted "
            "due to stage failure: too big\n\tat org.apache.spark.scheduler.DAGScheduler.failJobAndIndependentStages")
    assert _spark_message(RuntimeError(java)) == "Job aborted due to stage failure: too big"
    worker = java + "\nanomaly_vae.exceptions.InputError: row 7: column 'f02': expected a number, got 'abc'"
    assert _spark_message(RuntimeError(worker)) == "row 7: column 'f02': expected a number, got 'abc'"
    other = "[PATH_NOT_FOUND] Path does not exist: file:/x.csv.\n: java.io.FileNotFoundException: x"
    assert _spark_message(RuntimeError(other)) == "[PATH_NOT_FOUND] Path does not exist: file:/x.csv."


@pytest.mark.parametrize("stderr", ["moved", "full", "closed"])
def test_quiet_writes_to_the_stderr_it_started_with_and_never_stalls_the_jvm(stderr, tmp_path):
    """The JVM's lines go to a copy of standard error taken before Spark starts: a command started with
    fd 2 closed gets the next socket there (py4j's, whose protocol a line would break), so it makes no
    pipe; where the copy cannot be written (a full disk), the pipe is still read to its end."""
    child = "import sys; sys.stderr.write('kept line\\n' + 'x' * 99 + '\\n' * 2000)"  # 200 KB
    script = f"""
import os, subprocess, sys
from anomaly_vae.cli.spark_command import _JvmStderr
jvm = _JvmStderr()
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 2)  # fd 2 is now another file, as py4j's socket can be
kwargs = {{}}
jvm.popen_kwargs(kwargs)
jvm.started(subprocess.Popen([sys.executable, "-c", {child!r}], **kwargs))
jvm.drain(timeout=60)
print(sorted(kwargs), jvm.proc.returncode if jvm.proc else None, jvm.fd)
"""
    out = open("/dev/full", "wb") if stderr == "full" else subprocess.PIPE if stderr == "moved" else None
    try:
        run = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=out, timeout=120,
                             preexec_fn=(lambda: os.close(2)) if stderr == "closed" else None)
    finally:
        if stderr == "full":
            out.close()
    assert run.returncode == 0
    if stderr == "closed":  # no pipe, nothing forwarded: the child's lines go where its stderr is (/dev/null)
        assert run.stdout.decode().split() == ["[]", "None", "None"]
    else:  # a pipe, read to its end, the copy closed after
        assert run.stdout.decode().split() == ["['stderr']", "0", "None"]
    if stderr == "moved":
        assert run.stderr.decode().splitlines()[0] == "kept line"


def test_only_a_local_master_reads_paths_without_a_scheme_from_this_disk(monkeypatch):
    from anomaly_vae.spark.job import reads_local_files

    for v in ("PYSPARK_GATEWAY_PORT", "HADOOP_CONF_DIR", "YARN_CONF_DIR", "SPARK_CONF_DIR", "SPARK_HOME"):
        monkeypatch.delenv(v, raising=False)
    assert reads_local_files(None) and reads_local_files("local[2]") and reads_local_files("local")
    assert not reads_local_files("spark://host:7077") and not reads_local_files("yarn")
    # anything that could name another default file system or master: Spark decides
    assert not reads_local_files("local[2]", {"spark.hadoop.fs.defaultFS": "hdfs://nn:8020"})
    assert not reads_local_files("local[2]", {"spark.hadoop.fs.default.name": "hdfs://nn:8020"})
    assert not reads_local_files(None, {"spark.master": "yarn"})
    monkeypatch.setenv("HADOOP_CONF_DIR", "/etc/hadoop/conf")
    assert not reads_local_files("local[2]")
    monkeypatch.delenv("HADOOP_CONF_DIR")
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "1234")  # under spark-submit: its master, unknown here
    assert not reads_local_files(None)


def test_paths_spark_would_misread_are_refused_before_it_starts(tmp_path):
    """No JVM: an empty path and a file: URI with a host (which was told it had a ':' in its name)."""
    from anomaly_vae import InputError
    from anomaly_vae.spark.job import _check_paths

    out = str(tmp_path / "o.csv")
    with pytest.raises(InputError, match="^the input path is empty$"):
        _check_paths("", out)
    with pytest.raises(InputError, match="the output path is empty"):
        _check_paths(str(tmp_path), " ")
    with pytest.raises(InputError, match=r"a file: URI with a host \('localhost'\).*give the input as file:///PATH"):
        _check_paths("file://localhost/tmp/in.csv", out)
    with pytest.raises(InputError, match=r"with ':' in it \(a:b.csv\)"):
        _check_paths(str(tmp_path / "a:b.csv"), out)
    for upper in ("FILE:///tmp/in.csv", "File:/tmp/in.csv", "FILE://localhost/tmp/in.csv"):
        with pytest.raises(InputError, match="write the scheme of a local path as 'file:'"):
            _check_paths(upper, out)
    with pytest.raises(InputError, match="the input path is empty"):
        _check_paths("file:", out)
    _check_paths("file:///tmp/in.csv", out)  # and a plain path: no error
    _check_paths("/tmp/in.csv", out)


def test_an_alpha_the_calibration_cannot_serve_stops_the_job_before_spark_starts(table, tmp_path):
    """It was a warning before Spark started (13 s) and the error after."""
    from anomaly_vae import CalibrationError
    from anomaly_vae.spark.job import check_job

    _, model, rows = table
    rows.to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(CalibrationError, match="alpha=1e-05 needs at least 99999 calibration samples"):
        check_job(str(model), str(tmp_path / "in.csv"), str(tmp_path / "o.csv"), 1e-5, local=True)
    assert check_job(str(model), str(tmp_path / "in.csv"), str(tmp_path / "o.csv"), 0.05, local=True)[0] == "csv"


def test_an_output_that_holds_or_is_not_a_spark_output_is_refused_and_nothing_is_lost(spark, table, tmp_path):
    from anomaly_vae import InputError
    from anomaly_vae.spark import spark_score

    _, model, rows = table
    parts = tmp_path / "in.parquet"
    parts.mkdir()
    rows.astype({"f02": str, "f04": str}).to_parquet(parts / "part-a.parquet")
    with pytest.raises(InputError, match="is, holds or sits inside the input"):
        spark_score(spark, str(model), str(parts / "part-a.parquet"), str(parts))
    assert (parts / "part-a.parquet").exists()
    mine = tmp_path / "mine.csv"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="is not the output of an earlier Spark job"):
        spark_score(spark, str(model), str(parts), str(mine))
    assert (mine / "notes.txt").read_text() == "keep me"
    first = spark_score(spark, str(model), str(parts), str(tmp_path / "out.parquet"))
    again = spark_score(spark, str(model), str(parts), str(tmp_path / "out.parquet"))  # replaces its own output
    assert first.rows == again.rows == len(rows) and len(_read(tmp_path / "out.parquet")) == len(rows)
    assert not [p for p in tmp_path.iterdir() if ".part-" in p.name]


def test_ids_with_nulls_and_an_id_column_named_row_are_kept(spark, table, tmp_path):
    from anomaly_vae.spark import spark_score

    _, model, rows = table
    data = rows.drop(columns="key").assign(row=[str(100 * i) for i in range(len(rows))])
    data.loc[4, "row"] = None
    data.to_csv(tmp_path / "in.csv", index=False)
    summary = spark_score(spark, str(model), str(tmp_path / "in.csv"), str(tmp_path / "out.parquet"),
                          id_column="row")
    got = _read(tmp_path / "out.parquet")
    assert summary.rows == len(rows) and got["row"].isna().sum() == 1
    assert sorted(got["row"].dropna().astype(int)) == [100 * i for i in range(len(rows)) if i != 4]


def test_part_files_whose_headers_differ_are_refused_not_read_by_position(spark, table, tmp_path):
    from anomaly_vae.spark import spark_score

    _, model, rows = table
    folder = tmp_path / "parts"
    folder.mkdir()
    rows.iloc[:100].to_csv(folder / "p1.csv", index=False)
    swapped = list(rows.columns)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    rows.iloc[100:][swapped].to_csv(folder / "p2.csv", index=False)
    with pytest.raises(Exception, match="(?i)header|schema"):
        spark_score(spark, str(model), str(folder), str(tmp_path / "out.parquet"))
    assert not (tmp_path / "out.parquet").exists()


def test_a_quoted_line_break_without_multiline_is_refused_and_read_with_it(spark, table, tmp_path):
    from anomaly_vae.batch import score_file
    from anomaly_vae.spark import spark_score

    det, model, rows = table
    data = rows.iloc[:20].copy()
    data.loc[3, "site"] = "multi\nline"
    data.to_csv(tmp_path / "in[1].csv", index=False)  # glob characters in the name: that very file is read
    with pytest.raises(Exception, match="multiline-csv"):
        spark_score(spark, str(model), str(tmp_path / "in[1].csv"), str(tmp_path / "out.parquet"))
    spark_score(spark, str(model), str(tmp_path / "in[1].csv"), str(tmp_path / "out.parquet"), multiline=True)
    score_file(det, tmp_path / "in[1].csv", tmp_path / "want.parquet")
    _same_scores(_read(tmp_path / "out.parquet"), pd.read_parquet(tmp_path / "want.parquet"), "row")


def test_image_names_with_url_characters_and_empty_files_match_the_cli(spark, fashion_sample, tmp_path):
    from PIL import Image

    from anomaly_vae import VAEAnomalyDetector
    from anomaly_vae.batch import score_file
    from anomaly_vae.spark import spark_score

    images, labels = fashion_sample
    det = VAEAnomalyDetector(epochs=1, alpha=0.05, random_state=0).fit(images[labels == 1].astype(np.float32) / 255.0)
    det.save(tmp_path / "model")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, name in enumerate(["%41.png", "k%20.png", "q?.png", "x#1.png", "x#2.png", "a b.png"]):
        Image.fromarray(images[i]).save(folder / name)
    (folder / "empty.png").write_bytes(b"")
    score_file(det, folder, tmp_path / "want.parquet")
    summary = spark_score(spark, str(tmp_path / "model"), str(folder), str(tmp_path / "out.parquet"))
    got = _read(tmp_path / "out.parquet").sort_values("path").reset_index(drop=True)
    want = pd.read_parquet(tmp_path / "want.parquet").sort_values("path").reset_index(drop=True)
    assert got["path"].tolist() == want["path"].tolist()
    assert got["error"].fillna("").tolist() == want["error"].fillna("").tolist()
    assert summary.rows == 7 and summary.errors == 1
    # the folder as a file: URI names the images the same (file:/x named them by absolute path)
    for k, uri in enumerate((f"file:{folder}", f"file://{folder}")):
        spark_score(spark, str(tmp_path / "model"), uri, str(tmp_path / f"uri{k}.parquet"))
        by_uri = _read(tmp_path / f"uri{k}.parquet").sort_values("path").reset_index(drop=True)
        assert by_uri["path"].tolist() == want["path"].tolist(), uri


def test_a_job_loads_its_model_once_and_scores_with_the_card_it_checked(spark, table, tmp_path, monkeypatch):
    """The command line checked the model before Spark started, the job loaded it again and the
    scorer a third time: three loads, and a model written over in between could be summarised from
    one card and scored from another. Now one load, and the card shipped must be the one loaded."""
    import json
    import re
    import tempfile

    import anomaly_vae.detector as detector_module
    from anomaly_vae import ArtifactError
    from anomaly_vae.spark import spark_score
    from anomaly_vae.spark.job import check_job

    _, model, rows = table
    mine = tmp_path / "model"
    shutil.copytree(model, mine)
    card = json.loads((mine / "model.json").read_text())
    (mine / "model.json").write_text(json.dumps(card, indent=3))  # same model, a card never shipped before
    rows.to_csv(tmp_path / "in.csv", index=False)
    loads = []
    real = detector_module.load_detector
    monkeypatch.setattr(detector_module, "load_detector", lambda path: loads.append(path) or real(path))

    checked = check_job(str(mine), str(tmp_path / "in.csv"), str(tmp_path / "out.csv"), 0.05, local=True)
    assert len(loads) == 1
    summary = spark_score(spark, str(mine), str(tmp_path / "in.csv"), str(tmp_path / "out.csv"), alpha=0.05,
                          checked=checked)
    assert len(loads) == 1 and summary.rows == len(rows)  # the executors load the shipped copy, not counted here
    with pytest.raises(ValueError, match="check_job's result for"):  # another job's check is refused
        spark_score(spark, str(mine), str(tmp_path / "in.csv"), str(tmp_path / "other.csv"), checked=checked)

    (mine / "model.json").write_text(json.dumps(card, indent=5))  # a fresh card, checked; then written over
    checked = check_job(str(mine), str(tmp_path / "in.csv"), str(tmp_path / "out2.csv"))
    (mine / "model.json").write_text(json.dumps(card, indent=6))
    with pytest.raises(ArtifactError, match="changed after it was loaded"):
        spark_score(spark, str(mine), str(tmp_path / "in.csv"), str(tmp_path / "out2.csv"), checked=checked)
    assert not (tmp_path / "out2.csv").exists()

    # the weights written over between the check and the shipping: refused on the driver, in one line
    # naming the user's file (it was found only on the executors, under Spark's copy, one trace a task)
    (mine / "model.json").write_text(json.dumps(card, indent=7))
    checked = check_job(str(mine), str(tmp_path / "in.csv"), str(tmp_path / "out3.csv"))
    weights = bytearray((mine / "model.safetensors").read_bytes())
    weights[-1] ^= 1  # a flipped bit in the last tensor: a well-formed file, another model
    (mine / "model.safetensors").write_bytes(bytes(weights))
    staged = set(Path(tempfile.gettempdir()).glob("anomaly-vae-spark-*"))
    with pytest.raises(ArtifactError, match=f"^{re.escape(str(mine / 'model.safetensors'))} changed after the model "
                                            "was loaded"):
        spark_score(spark, str(mine), str(tmp_path / "in.csv"), str(tmp_path / "out3.csv"), checked=checked)
    assert not (tmp_path / "out3.csv").exists()
    assert set(Path(tempfile.gettempdir()).glob("anomaly-vae-spark-*")) <= staged  # the refused copy is not left


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux's /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _assert_gone(jvm: int) -> None:
    """The JVM goes when its stdin closes or the context stops: within 30 s of the command's exit."""
    import time

    for _ in range(300):
        if not _alive(jvm):
            return
        time.sleep(0.1)
    raise AssertionError(f"the JVM {jvm} is still running 30 s after the command exited")


def _reap(proc, jvm, log) -> None:
    """Whatever a failed test left: the command and its JVM killed, the log closed."""
    import os
    import signal

    if proc.poll() is None:
        proc.kill()
    if jvm is not None and _alive(jvm):
        os.kill(jvm, signal.SIGKILL)
    proc.wait()
    log.close()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child processes from Linux's /proc")
@pytest.mark.parametrize("whom", ["process", "group"])
def test_sigterm_while_spark_starts_leaves_no_jvm_running_and_no_traceback(table, tmp_path, whom):
    """SIGTERM while PySpark waited for its JVM (the first seconds of the command) exited 143 and
    left the JVM running for good: PySpark removes the folder the JVM writes its port to and forgets
    it, the JVM's main thread fails and its gateway thread keeps it up. ``whom``: the command alone
    (Kubernetes signals the container's first process) or its process group (systemd, a shell)."""
    import os
    import signal
    import time

    if shutil.which("java") is None:
        pytest.skip("no Java runtime on this machine")
    pytest.importorskip("pyspark")
    _, model, rows = table
    rows.to_csv(tmp_path / "in.csv", index=False)
    cmd = [sys.executable, "-c", SIGNAL_SHIM, "", sys.executable,  # the stop signals at their defaults
           "-m", "anomaly_vae.cli", "spark-score", str(model), str(tmp_path / "in.csv"), "--out",
           str(tmp_path / "out.csv"), "--master", "local[1]", "--conf", "spark.ui.enabled=false"]
    log = open(tmp_path / "stderr.txt", "w")  # a file, not a pipe: a JVM left behind would hold a pipe open
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    jvm, deadline = None, time.monotonic() + 120
    try:
        while jvm is None and proc.poll() is None and time.monotonic() < deadline:
            jvm = next(iter(_children(proc.pid)), None)  # spark-submit execs java: the JVM is the child
            time.sleep(0.02)
        assert jvm is not None, "the command started no JVM"
        time.sleep(0.5)  # the JVM is starting; PySpark polls for its port
        os.killpg(proc.pid, signal.SIGTERM) if whom == "group" else proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        err = (tmp_path / "stderr.txt").read_text()
        assert proc.returncode == 143, err[-2000:]
        assert "anomaly-vae: interrupted by SIGTERM" in err
        assert "Traceback" not in err and "KeyboardInterrupt while sending command" not in err, err[-2000:]
        _assert_gone(jvm)
        assert not (tmp_path / "out.csv").exists()
    finally:
        _reap(proc, jvm, log)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child processes from Linux's /proc")
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_signal_to_the_process_group_mid_job_stops_it_in_one_line(table, tmp_path, signame):
    """SIGTERM or SIGHUP to the whole process group while the job ran (a closed terminal, systemd's
    stop) reached the JVM too, whose shutdown hook cancelled the job before the command could quiet
    Spark's log: dozens of lines of Java stack traces on stderr, even with ``--quiet``. The JVM now
    ignores them (as PySpark has it ignore SIGINT) and the command stops it."""
    import os
    import signal
    import time

    if shutil.which("java") is None:
        pytest.skip("no Java runtime on this machine")
    pytest.importorskip("pyspark")
    _, model, rows = table
    pd.concat([rows] * 400, ignore_index=True).to_csv(tmp_path / "in.csv", index=False)  # 120,000 rows
    staging = tmp_path / "tmp"
    staging.mkdir()
    cmd = [sys.executable, "-c", SIGNAL_SHIM, "", sys.executable,  # the stop signals at their defaults
           "-m", "anomaly_vae.cli", "spark-score", str(model), str(tmp_path / "in.csv"), "--out",
           str(tmp_path / "out.csv"), "--master", "local[1]", "--conf", "spark.ui.enabled=false", "--quiet"]
    log = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                            env={**os.environ, "TMPDIR": str(staging)})
    jvm = None
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".out.csv.part-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the output's temporary sibling: the rows are being written (the stage Spark
            # reported as an ERROR when cancelled)
        jvm = next(iter(_children(proc.pid)), None)
        assert jvm is not None and proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
        time.sleep(1)
        assert proc.poll() is None, "the job ended before the signal: give it more rows"
        os.killpg(proc.pid, getattr(signal, signame))
        proc.wait(timeout=120)
        err = (tmp_path / "stderr.txt").read_text()
        assert proc.returncode == 128 + getattr(signal, signame), err[-2000:]
        assert err.strip().endswith(f"anomaly-vae: interrupted by {signame}"), err[-2000:]
        assert "ERROR" not in err and "Exception" not in err and "Traceback" not in err, err[-2000:]
        _assert_gone(jvm)
        assert not (tmp_path / "out.csv").exists() and not list(staging.glob("anomaly-vae-spark-*"))
    finally:
        _reap(proc, jvm, log)


@pytest.mark.parametrize("signal_error", ["Stopped", "KeyboardInterrupt"])
def test_a_signal_that_lands_in_a_py4j_call_is_reported_as_the_signal_not_a_spark_error(signal_error):
    """A signal raised inside ``collect`` leaves PySpark's call-site bookkeeping on the way out to
    fail on the interrupted connection, and that py4j error replaced the signal: the command said
    "Spark: Answer from Java side is empty" and exited 1 instead of 128 + the signal (seen about
    one time in three under SIGTERM mid-job). The signal is in the py4j error's context."""
    import argparse
    import signal

    py4j = pytest.importorskip("py4j.protocol", reason="PySpark (and py4j) is not installed")
    from anomaly_vae.cli import Stopped
    from anomaly_vae.cli.spark_command import _spark_job
    from anomaly_vae.exceptions import InputError

    stops = []

    class Spark:
        def stop(self):
            stops.append(True)

    def job(*args, **kwargs):
        try:
            raise Stopped(signal.SIGTERM) if signal_error == "Stopped" else KeyboardInterrupt()
        finally:  # as SCCallSiteSync.__exit__: one more call to the JVM, whose answer never comes
            raise py4j.Py4JNetworkError("Answer from Java side is empty")

    args = argparse.Namespace(model_dir="m", data="d", out="o", id_column=None, explain=0, alpha=None, sep=None,
                              partitions=None, multiline_csv=False)
    expected = Stopped if signal_error == "Stopped" else KeyboardInterrupt
    with pytest.raises(expected) as caught:
        _spark_job(args, Spark(), job, None)
    assert type(caught.value) is expected and stops == [True]
    if signal_error == "Stopped":
        assert caught.value.signum == signal.SIGTERM

    def failed_stage(*args, **kwargs):  # a Spark error with no signal behind it is still one clear line
        raise py4j.Py4JNetworkError("Answer from Java side is empty")

    with pytest.raises(InputError, match="Spark: Answer from Java side is empty"):
        _spark_job(args, Spark(), failed_stage, None)


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_killed_jobs_model_copy_is_removed_by_the_next_job_and_a_running_ones_is_not(tmp_path, monkeypatch):
    """A driver killed by SIGKILL (the OOM killer) runs no exit handler: its copy of the model stayed
    in the temporary directory for good. The next job removes the copies whose process is gone
    (its lock released by the kernel), never a copy a live process holds, nor a folder without a lock."""
    import os
    import signal
    import tempfile

    from anomaly_vae.spark import staging

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    code = ("import os, signal, sys; from anomaly_vae.spark.staging import new_staging_dir; d = new_staging_dir(); "
            "(d / 'model').mkdir(); print(d, flush=True); sys.stdin.readline(); os.kill(os.getpid(), signal.SIGKILL)")
    killed = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=env)
    live = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        killed_dir, live_dir = Path(killed.stdout.readline().strip()), Path(live.stdout.readline().strip())
        assert killed_dir.parent == live_dir.parent == tmp_path and (killed_dir / ".lock").is_file()
        killed.communicate("\n", timeout=60)
        assert killed.returncode == -signal.SIGKILL and (killed_dir / "model").is_dir()  # no exit handler ran
        unlocked = tmp_path / "anomaly-vae-spark-old"  # made before the lock, or being made this instant
        unlocked.mkdir()
        other = tmp_path / "anomaly-vae-other"
        other.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        mine = staging.new_staging_dir()  # this process's own, made after a sweep
        assert not killed_dir.exists()
        assert live_dir.is_dir() and mine.is_dir() and unlocked.is_dir() and other.is_dir()
        assert staging.sweep_stale() == []  # held by their processes (this one's too)
        live.communicate("\n", timeout=60)
        # a folder that cannot be emptied (as a file this user may not remove) keeps its lock file, is
        # not reported removed, and goes at a later sweep; a lock that is not a file is not this package's
        (live_dir / "model" / "f").write_text("x")
        dir_lock = tmp_path / "anomaly-vae-spark-dirlock"
        (dir_lock / ".lock").mkdir(parents=True)
        with monkeypatch.context() as m:
            m.setattr(staging.shutil, "rmtree", lambda path, ignore_errors=False: None)
            assert staging.sweep_stale() == [] and (live_dir / ".lock").is_file()
        assert staging.sweep_stale() == [live_dir] and not live_dir.exists() and mine.is_dir() and dir_lock.is_dir()
    finally:
        for proc in (killed, live):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


class _InterruptedFs:
    """Hadoop's file system with its ``nth`` rename interrupted by a signal, before or ``after`` the
    rename ran; with ``gone``, every call after the signal fails as one through a dead gateway does;
    with ``forced``, a second signal's forced exit (``remove_partial_outputs``, then ``os._exit``) is
    done at the signal and what it left is noted in ``left``."""

    def __init__(self, fs, nth: int, after: bool, gone: bool, forced: Path | None = None) -> None:
        self.fs, self.nth, self.after, self.gone, self.renames, self.dead = fs, nth, after, gone, 0, False
        self.forced, self.left = forced, None

    def _check(self) -> None:
        if self.dead:
            raise RuntimeError("Answer from Java side is empty")

    def exists(self, path):
        self._check()
        return self.fs.exists(path)

    def getFileStatus(self, path):  # noqa: N802 - Hadoop's name
        self._check()
        return self.fs.getFileStatus(path)

    def delete(self, path, recursive):
        self._check()
        return self.fs.delete(path, recursive)

    def rename(self, src, dst):
        self._check()
        self.renames += 1
        if self.renames != self.nth:
            return self.fs.rename(src, dst)
        if self.after:
            self.fs.rename(src, dst)
        self.dead = self.gone
        if self.forced is not None:
            from anomaly_vae.io import remove_partial_outputs

            remove_partial_outputs()
            self.left = _outputs(self.forced)
        raise KeyboardInterrupt


def _old_output(folder: Path) -> Path:
    out = folder / "out.csv"
    out.mkdir()
    (out / "_SUCCESS").write_text("")
    (out / "part-00000-old.csv").write_text("row,score\n0,1.0\n")
    return out


def _outputs(folder: Path) -> list[tuple[str, int]]:
    """Each entry of ``folder``, with the rows of its CSV part files (-1: not a folder)."""
    return sorted((p.name, sum(len(pd.read_csv(f)) for f in p.glob("part-*.csv")) if p.is_dir() else -1)
                  for p in folder.iterdir())


@pytest.mark.parametrize("nth, after, gone, forced, kept", [
    (1, True, False, False, 1),  # the old output moved aside, the new one not yet in place: the old one kept
    (2, False, False, False, 1),
    (2, True, False, False, 2),  # the new output in place, the old one not yet removed: the new one kept
    (1, True, True, False, 1),  # ... and the gateway gone: put back through the local file system
    (2, False, True, False, 1),
    (1, True, False, True, 1),  # a second signal at once: the forced exit's clean-up alone puts it back
    (2, True, True, True, 2),
])
def test_a_signal_between_the_renames_that_replace_an_output_keeps_one_output_under_its_name(
        spark, tmp_path, nth, after, gone, forced, kept):
    """Replacing an output is two renames (the old one aside, the new one into place): a signal between
    them left no output under the name and the old one hidden beside it."""
    from anomaly_vae.spark.output import OutputStaging

    out = _old_output(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with OutputStaging(spark, str(out)) as staging:
            staging.write(spark.createDataFrame([(0, 2.0), (1, 3.0)], ["row", "score"]).coalesce(1), "csv")
            staging.fs = _InterruptedFs(staging.fs, nth, after, gone, tmp_path if forced else None)
            staging.commit()
    assert _outputs(tmp_path) == [("out.csv", kept)], "one whole output under its name, nothing beside it"
    if forced:
        assert staging.fs.left == [("out.csv", kept)], "the forced exit's clean-up alone"


def test_an_output_linked_or_replaced_while_the_job_ran_is_handled_without_loss(spark, tmp_path):
    """A symlinked output replaced with the gateway gone leaves no hidden link; an output that someone
    replaced with their own file while the job ran is refused at the commit and kept; a signal during
    the cleanup after a commit still stops the command."""
    from anomaly_vae import InputError
    from anomaly_vae.spark.output import OutputStaging

    real = _old_output(tmp_path)
    real.rename(tmp_path / "real.csv")
    (tmp_path / "out.csv").symlink_to(tmp_path / "real.csv")
    with pytest.raises(KeyboardInterrupt):
        with OutputStaging(spark, str(tmp_path / "out.csv")) as staging:
            staging.write(spark.createDataFrame([(0, 2.0), (1, 3.0)], ["row", "score"]).coalesce(1), "csv")
            staging.fs = _InterruptedFs(staging.fs, 2, True, True)
            staging.commit()
    assert _outputs(tmp_path) == [("out.csv", 2), ("real.csv", 1)]

    with pytest.raises(InputError, match="is not the output of an earlier Spark job"):
        with OutputStaging(spark, str(tmp_path / "out.csv")) as staging:
            staging.write(spark.createDataFrame([(0, 2.0)], ["row", "score"]).coalesce(1), "csv")
            shutil.rmtree(tmp_path / "out.csv")
            (tmp_path / "out.csv").write_text("mine")
            staging.commit()
    assert (tmp_path / "out.csv").read_text() == "mine" and _outputs(tmp_path) == [("out.csv", -1), ("real.csv", 1)]

    class _SignalInCleanup(_InterruptedFs):
        def exists(self, path):
            if self.renames:  # committed
                raise KeyboardInterrupt
            return self.fs.exists(path)

    (tmp_path / "out.csv").unlink()
    with pytest.raises(KeyboardInterrupt):
        with OutputStaging(spark, str(tmp_path / "out.csv")) as staging:
            staging.write(spark.createDataFrame([(0, 2.0)], ["row", "score"]).coalesce(1), "csv")
            staging.fs = _SignalInCleanup(staging.fs, 0, False, False)
            staging.commit()
    assert _outputs(tmp_path) == [("out.csv", 1), ("real.csv", 1)]


def test_a_stop_mid_write_cancels_the_job_and_waits_for_its_tasks_before_removing_its_output(spark, tmp_path):
    """A stop leaving the write ended only the driver's wait: the job ran on and its tasks went on
    writing into the temporary directory being removed, which Spark logged as "Mkdirs failed" ERRORs
    after ``spark-score --quiet`` had been told to stop (CI, once in a few runs), and which a task could
    make again, left behind. The job is now cancelled, its tasks waited for, then the directory goes;
    ``on_stop`` comes first."""
    import os
    import signal
    import threading
    import time

    from anomaly_vae.spark.output import OutputStaging

    def slow(batches):
        for batch in batches:
            time.sleep(0.2)
            yield batch

    df = spark.range(0, 400, numPartitions=40).mapInPandas(slow, "id long")  # 40 tasks, ~4 s on 2 cores
    tracker = spark.sparkContext.statusTracker()

    def signal_once_running():  # a real signal, as a stop is: it interrupts py4j's wait for the save
        deadline = time.monotonic() + 60
        while not tracker.getActiveJobsIds() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGALRM)

    calls, old = [], signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    sender = threading.Thread(target=signal_once_running)
    try:
        with pytest.raises(KeyboardInterrupt):
            with OutputStaging(spark, str(tmp_path / "out.csv"), on_stop=lambda: calls.append(
                    list(tracker.getActiveJobsIds()))) as staging:
                sender.start()
                staging.write(df, "csv")
    finally:
        if sender.ident is not None:
            sender.join()
        signal.signal(signal.SIGALRM, old)
    assert len(calls) == 1 and calls[0], "on_stop is called once, while the job still ran"
    assert not list(tracker.getActiveJobsIds()), "the job was cancelled"
    assert all(tracker.getStageInfo(s) is None or tracker.getStageInfo(s).numActiveTasks == 0
               for s in tracker.getActiveStageIds()), "and its tasks ended"
    time.sleep(1)  # a task still running would make its attempt directory again meanwhile
    assert not list(tmp_path.iterdir()), "nothing left beside the output's name"
    assert not set(spark.sparkContext.getJobTags()), "the block's job tag is not left on the thread"
    assert spark.range(5).count() == 5, "the session goes on"
