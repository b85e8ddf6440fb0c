"""Spark batch scoring beside `anomaly-vae score` and the raw forward, in one run.

    python benchmarks/spark_throughput.py                  # the 1M-row table of cli_throughput.py
    python benchmarks/spark_throughput.py --rows 200000    # a quick look

The table is the one of `cli_throughput.py` (ADBench cardio plus a string column, repeated to
--rows), written as one CSV and one Parquet file. Each job runs as a real subprocess:
`anomaly-vae score` (one process) and `anomaly-vae spark-score --master local[2]` (a Python driver,
Spark's JVM and one Python worker per task). Rates are the commands' own figures (read, score,
write; for Spark also the counting pass that numbers the rows and the read-back of the summary);
the wall-time lines add start-up (for Spark: the JVM and the session). Memory is the peak of the
summed RSS of the whole process tree, polled, split into the Python driver, the JVM (driver and
executors are one JVM in local mode) and the Python workers; a quarter of the rows is scored too,
to show it flat in the input size.

Writes benchmarks/results/spark_throughput.md.
"""

from __future__ import annotations

import argparse
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from anomaly_vae import VAEAnomalyDetector

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402
from procstat import peak_tree_rss_mib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXE = shutil.which("anomaly-vae", path=str(Path(sys.executable).parent)) or "anomaly-vae"
SPARK = ["--master", "local[2]", "--quiet", "--conf", "spark.ui.enabled=false"]


def run_job(cmd: list[str]) -> dict[str, float]:
    """Run a score command: its own rate, wall seconds, peak RSS of its process tree by kind."""
    start = time.perf_counter()
    peaks, code, stdout = peak_tree_rss_mib(cmd)
    wall = time.perf_counter() - start
    if code not in (0, 3):
        raise RuntimeError(f"{cmd} failed with exit code {code}: {stdout[-2000:]}")
    m = re.search(r"scored (\d+) of (\d+) \w+ .* in ([\d.]+) s", stdout)
    assert m, stdout
    rows, seconds = int(m.group(2)), float(m.group(3))
    return {"rows": rows, "rate": rows / seconds, "wall_rate": rows / wall, **peaks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", default=str(RESULTS / "spark_throughput.md"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="anomaly-vae-spark-bench-"))
    try:
        normal, big, files = datasets.throughput_table(ROOT, args.rows, work)
        csv, quarter, parquet = files["csv"], files["quarter"], files["parquet"]
        # one network (pair=False), as measured before the pair became the tables' default (session 12): the
        # numbers in results/spark_throughput.md; the default pair's forward is about 5x slower (cli_throughput.md)
        det = VAEAnomalyDetector(epochs=30, random_state=0, pair=False, marginal_floor=0.0).fit(normal)
        model = work / "model"
        det.save(model)
        n = len(big)
        print(f"{n} rows, CSV {csv.stat().st_size / 2**20:.0f} MiB", file=sys.stderr)

        x = det.preprocess(big)
        start = time.perf_counter()
        det.score_prepared(x)
        raw = n / (time.perf_counter() - start)

        jobs = {
            "cli_csv": [EXE, "score", str(model), str(csv), "--out", str(work / "c1.parquet"), "--quiet"],
            "spark_csv": [EXE, "spark-score", str(model), str(csv), "--out", str(work / "s1.parquet"), *SPARK],
            "cli_pq": [EXE, "score", str(model), str(parquet), "--out", str(work / "c2.parquet"), "--quiet"],
            "spark_pq": [EXE, "spark-score", str(model), str(parquet), "--out", str(work / "s2.parquet"), *SPARK],
            "spark_quarter": [EXE, "spark-score", str(model), str(quarter), "--out", str(work / "s3.parquet"), *SPARK],
        }
        res = {}
        for name, cmd in jobs.items():
            print(name, file=sys.stderr)
            res[name] = run_job(cmd)
        got = pd.read_parquet(work / "s1.parquet").sort_values("row")
        want = pd.read_parquet(work / "c1.parquet")
        same = np.array_equal(got["score"].to_numpy(), want["score"].to_numpy())
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def mem(r: dict[str, float]) -> str:
        return f"{r['total']:,.0f} ({r['python']:,.0f} / {r['java']:,.0f} / {r['workers']:,.0f})"

    table = [
        ["raw model forward, rows in memory (torch, 1 thread)", f"{n:,}", f"{raw:,.0f}", "", ""],
        ["**`anomaly-vae score` CSV -> Parquet**", f"{n:,}", f"**{res['cli_csv']['rate']:,.0f}**", "**1.00**",
         mem(res["cli_csv"])],
        ["**`anomaly-vae spark-score` local[2], CSV -> Parquet**", f"{n:,}", f"**{res['spark_csv']['rate']:,.0f}**",
         f"**{res['spark_csv']['rate'] / res['cli_csv']['rate']:.2f}**", mem(res["spark_csv"])],
        ["`anomaly-vae score` CSV, wall time with start-up", f"{n:,}", f"{res['cli_csv']['wall_rate']:,.0f}",
         f"{res['cli_csv']['wall_rate'] / res['cli_csv']['rate']:.2f}", ""],
        ["`anomaly-vae spark-score` CSV, wall time with JVM and session start-up", f"{n:,}",
         f"{res['spark_csv']['wall_rate']:,.0f}", f"{res['spark_csv']['wall_rate'] / res['cli_csv']['rate']:.2f}", ""],
        ["`anomaly-vae score` Parquet -> Parquet", f"{n:,}", f"{res['cli_pq']['rate']:,.0f}",
         f"{res['cli_pq']['rate'] / res['cli_csv']['rate']:.2f}", mem(res["cli_pq"])],
        ["`anomaly-vae spark-score` local[2], Parquet -> Parquet", f"{n:,}", f"{res['spark_pq']['rate']:,.0f}",
         f"{res['spark_pq']['rate'] / res['cli_csv']['rate']:.2f}", mem(res["spark_pq"])],
        ["`anomaly-vae spark-score` local[2], CSV, a quarter of the rows", f"{n // 4:,}",
         f"{res['spark_quarter']['rate']:,.0f}", "", mem(res["spark_quarter"])],
        ["peak RSS of the Spark job, full / quarter", "", "", "",
         f"{res['spark_csv']['total'] / res['spark_quarter']['total']:.2f}x"],
    ]
    lines = [
        "# Spark batch scoring throughput (`benchmarks/spark_throughput.py`)", "",
        f"{platform.machine()}, 2 cores, torch {torch.__version__}, python {platform.python_version()}; one run, "
        "so compare the ratios within it. Spark runs in local mode with 2 task slots (`local[2]`): the driver and "
        "the executor are one JVM, with one Python worker per running task.", "",
        "| what | rows | rows/s | / `anomaly-vae score` CSV | peak RSS, MiB: all (Python driver / JVM / Python workers) |",
        "|---|---:|---:|---:|---:|",
        *["| " + " | ".join(r) + " |" for r in table], "",
        f"Spark's scores equal those of `anomaly-vae score` on the same CSV, row by row: **{same}**.", "",
        "`rows/s` of a job is the command's own figure: reading, scoring and writing; for `spark-score` also the "
        "counting pass that numbers the rows in file order and the read-back of the written output for the "
        "summary. The wall-time lines add start-up: Python and torch for `score`, and the JVM and Spark session "
        "for `spark-score`.", "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
