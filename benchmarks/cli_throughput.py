"""Batch-scoring throughput of `anomaly-vae score` beside the raw model forward, in one run.

    python benchmarks/cli_throughput.py                        # 1M-row CSV and Parquet, 10,000 PNGs
    python benchmarks/cli_throughput.py --rows 200000 --images 2000   # a quick look

Tables: ADBench cardio (data/cardio.csv) plus a string column, repeated to --rows. Images: the
Fashion-MNIST sample in data/ written as PNG files, repeated to --images. For each input the
command line runs as a real subprocess (its own rate, its wall time with start-up, and its peak
RSS from wait4), beside the same rows already in memory: the raw model forward (the network on
the preprocessed tensor), the Python API (`anomaly_score` on the DataFrame) and, for scale,
IsolationForest.score_samples and pandas.read_csv alone. A CSV of a quarter of the rows is
scored too: peak RSS must be flat in the input size. The table model is the default, a pair of
networks (session 12); one network (``pair=False``, the default before) is scored too (its forward
and the command), against the same forward of the default.

Writes benchmarks/results/cli_throughput.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import IsolationForest

from anomaly_vae import VAEAnomalyDetector

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402
from procstat import peak_rss_mib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXE = shutil.which("anomaly-vae", path=str(Path(sys.executable).parent)) or "anomaly-vae"


def cli_score(model: Path, data: Path, out: Path) -> dict[str, float]:
    """Run `anomaly-vae score` as a subprocess: its own rate, wall seconds, peak RSS (MiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen([EXE, "score", str(model), str(data), "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()  # the pipes are drained here; wait4 below would block otherwise
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"anomaly-vae score failed ({proc.returncode}): {stderr}")
    m = re.search(r"scored (\d+) of (\d+) \w+ .* in ([\d.]+) s", stdout)
    assert m, stdout
    rows, seconds = int(m.group(2)), float(m.group(3))
    return {"rows": rows, "seconds": seconds, "rate": rows / seconds, "wall": wall, "wall_rate": rows / wall}


def timed(fn, *args) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def raw_forward_rate(det: VAEAnomalyDetector, X: object, n: int) -> float:
    """The network alone on rows already preprocessed and in memory, with the threads the CLI uses
    (one for dense models, torch's for conv ones: the forward of the scores, nothing else)."""
    x = det.preprocess(X)
    seconds, _ = timed(det.score_prepared, x)
    return n / seconds


def tables(args: argparse.Namespace, work: Path) -> list[list[str]]:
    normal, big, files = datasets.throughput_table(ROOT, args.rows, work)
    csv, quarter, parquet = files["csv"], files["quarter"], files["parquet"]
    det = VAEAnomalyDetector(epochs=30, random_state=0).fit(normal)  # the default: a pair
    model = work / "table-model"
    det.save(model)
    n = len(big)
    print(f"tables: {n} rows, CSV {csv.stat().st_size / 2**20:.0f} MiB", file=sys.stderr)

    raw = raw_forward_rate(det, big, n)
    api_s, _ = timed(det.anomaly_score, big)
    read_s, _ = timed(pd.read_csv, csv)
    forest = IsolationForest(random_state=0).fit(normal.drop(columns="site"))
    forest_s, _ = timed(forest.score_samples, big.drop(columns="site"))
    res_csv = cli_score(model, csv, work / "o.csv")
    res_pq = cli_score(model, parquet, work / "o.parquet")
    rss_q, rss_full = (peak_rss_mib([EXE, "score", str(model), str(d), "--out", str(work / "r.csv"), "--quiet"])
                       for d in (quarter, csv))

    rows = [
        ["raw model forward, rows in memory (`score_prepared`)", f"{n:,}", f"{raw:,.0f}", "1.00", ""],
        ["Python API `anomaly_score(DataFrame)`, in memory", f"{n:,}", f"{n / api_s:,.0f}", f"{n / api_s / raw:.2f}", ""],
        ["**`anomaly-vae score` CSV -> CSV**", f"{n:,}", f"**{res_csv['rate']:,.0f}**", f"**{res_csv['rate'] / raw:.2f}**",
         f"{rss_full:.0f}"],
        ["`anomaly-vae score` CSV -> CSV, wall time with start-up", f"{n:,}", f"{res_csv['wall_rate']:,.0f}",
         f"{res_csv['wall_rate'] / raw:.2f}", ""],
        ["`anomaly-vae score` CSV -> CSV, a quarter of the rows", f"{n // 4:,}", "", "", f"{rss_q:.0f}"],
        ["`anomaly-vae score` Parquet -> CSV", f"{n:,}", f"{res_pq['rate']:,.0f}", f"{res_pq['rate'] / raw:.2f}", ""],
        ["pandas.read_csv alone (the whole file, no scoring)", f"{n:,}", f"{n / read_s:,.0f}", "", ""],
        ["IsolationForest.score_samples, in memory (for scale)", f"{n:,}", f"{n / forest_s:,.0f}", "", ""],
    ]
    rows.append(["peak RSS, full / quarter", "", "", "", f"{rss_full / rss_q:.2f}x"])
    # one network (pair=False): no second network, no aggregate prior's K x M latent densities a row
    one = VAEAnomalyDetector(epochs=30, random_state=0, pair=False, marginal_floor=0.0).fit(normal)
    one.save(work / "one-model")
    one_raw = raw_forward_rate(one, big, n)
    res_one = cli_score(work / "one-model", csv, work / "p.csv")
    rows += [
        ["`pair=False` (one network): raw model forward, rows in memory", f"{n:,}", f"{one_raw:,.0f}",
         f"{one_raw / raw:.2f}", ""],
        ["`pair=False` (one network): `anomaly-vae score` CSV -> CSV", f"{n:,}", f"{res_one['rate']:,.0f}",
         f"{res_one['rate'] / raw:.2f}", ""],
    ]
    return rows


def images(args: argparse.Namespace, work: Path) -> list[list[str]]:
    from PIL import Image

    with np.load(ROOT / "data" / "fashion_mnist_sample.npz", allow_pickle=False) as f:
        x = f["images"]
    det = VAEAnomalyDetector(epochs=2, random_state=0).fit(x)  # speed only: all 1000 images, 200 for calibration
    model = work / "image-model"
    det.save(model)
    folder = work / "pngs"
    folder.mkdir()
    idx = np.resize(np.arange(len(x)), args.images)
    for k, i in enumerate(idx):
        sub = folder / f"{k // 1000:02d}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(x[i]).save(sub / f"{k:05d}.png")
    arr = x[idx]
    raw = raw_forward_rate(det, arr, len(arr))
    api_s, _ = timed(det.anomaly_score, arr)
    res = cli_score(model, folder, work / "img.csv")
    n = len(arr)
    return [
        ["raw model forward, images in memory (conv)", f"{n:,}", f"{raw:,.0f}", "1.00", ""],
        ["Python API `anomaly_score(array)`, in memory", f"{n:,}", f"{n / api_s:,.0f}", f"{n / api_s / raw:.2f}", ""],
        ["**`anomaly-vae score` PNG folder -> CSV**", f"{n:,}", f"**{res['rate']:,.0f}**", f"**{res['rate'] / raw:.2f}**", ""],
        ["`anomaly-vae score` PNG folder, wall time with start-up", f"{n:,}", f"{res['wall_rate']:,.0f}",
         f"{res['wall_rate'] / raw:.2f}", ""],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=RESULTS / "cli_throughput.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="anomaly-vae-bench-") as tmp:
        work = Path(tmp)
        table_rows = tables(args, work)
        image_rows = images(args, work)
    head = "| what | rows | rows/s | / raw forward | peak RSS (MiB) |\n|---|---:|---:|---:|---:|\n"
    text = [
        "# Batch scoring throughput (`benchmarks/cli_throughput.py`)", "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"python {platform.python_version()}; one run, so compare the ratios within it.", "",
        "## Tables: ADBench cardio + a string column, repeated", "",
        head + "\n".join("| " + " | ".join(r) + " |" for r in table_rows), "",
        "## Images: Fashion-MNIST 28x28 PNG files", "",
        head + "\n".join("| " + " | ".join(r) + " |" for r in image_rows), "",
        "`rows/s` of a CLI run is the command's own figure (reading, scoring, writing); the wall-time line "
        "adds the process start-up (Python, torch import, model load).", "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
