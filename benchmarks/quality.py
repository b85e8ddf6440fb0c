"""Detection quality: the default VAEAnomalyDetector beside IsolationForest, KNN and PyOD's VAE,
on the same splits, under the one-class protocols of ../shared/datasets/README.md.

    python benchmarks/quality.py                      # ADBench tables (3 seeds) + Fashion-MNIST
    python benchmarks/quality.py --only adbench       # tables only
    python benchmarks/quality.py --classes 0,1 --no-pyod   # a quick look

Writes benchmarks/results/quality.md (per dataset and mean: AUROC and fit seconds).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

from anomaly_vae import VAEAnomalyDetector  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def knn_scores(train: np.ndarray, test: np.ndarray, k: int = 5) -> np.ndarray:
    nn = NearestNeighbors(n_neighbors=k).fit(train)
    return nn.kneighbors(test)[0].mean(axis=1)


def run_detectors(train: np.ndarray, test: np.ndarray, y: np.ndarray, seed: int, use_pyod: bool,
                  images: bool = False, train_img: np.ndarray | None = None,
                  test_img: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """AUROC and fit seconds per detector. Baselines see flat features; ours sees images as images."""
    out: dict[str, tuple[float, float]] = {}

    t = time.perf_counter()
    det = VAEAnomalyDetector(random_state=seed).fit(train_img if images else train)
    fit_s = time.perf_counter() - t
    out["VAEAnomalyDetector"] = (roc_auc_score(y, det.anomaly_score(test_img if images else test)), fit_s)

    t = time.perf_counter()
    iforest = IsolationForest(random_state=seed).fit(train)
    out["IsolationForest"] = (roc_auc_score(y, -iforest.score_samples(test)), time.perf_counter() - t)

    t = time.perf_counter()
    out["KNN (k=5)"] = (roc_auc_score(y, knn_scores(train, test)), time.perf_counter() - t)

    if use_pyod:
        from pyod.models.vae import VAE

        t = time.perf_counter()
        pyod_vae = VAE(random_state=seed, verbose=0).fit(train)
        out["PyOD VAE"] = (roc_auc_score(y, pyod_vae.decision_function(test)), time.perf_counter() - t)
    return out


def table(title: str, rows: dict[str, dict[str, tuple[float, float]]], note: str) -> str:
    names = list(next(iter(rows.values())).keys())
    lines = [f"## {title}", "", note, "",
             "| dataset | " + " | ".join(f"{n} AUROC" for n in names) + " | " + " | ".join(f"{n} fit s" for n in names) + " |",
             "|---|" + "---:|" * (2 * len(names))]
    for ds, r in rows.items():
        lines.append(f"| {ds} | " + " | ".join(f"{r[n][0]:.3f}" for n in names) + " | "
                     + " | ".join(f"{r[n][1]:.1f}" for n in names) + " |")
    means = {n: (np.mean([r[n][0] for r in rows.values()]), np.mean([r[n][1] for r in rows.values()])) for n in names}
    lines.append("| **mean** | " + " | ".join(f"**{means[n][0]:.3f}**" for n in names) + " | "
                 + " | ".join(f"{means[n][1]:.1f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def bench_adbench(seeds: list[int], use_pyod: bool) -> str:
    rows = {}
    for name in datasets.ADBENCH:
        X, y = datasets.load_adbench(name)
        per_seed = []
        for seed in seeds:
            tr, te = datasets.adbench_split(y, seed)
            mean, std = X[tr].mean(0), X[tr].std(0)
            std[std == 0] = 1.0
            Xs = (X - mean) / std  # baselines: standardised on the training half, as the protocol says
            per_seed.append(run_detectors(Xs[tr], Xs[te], y[te], seed, use_pyod))
        rows[name] = {k: (float(np.mean([r[k][0] for r in per_seed])), float(np.mean([r[k][1] for r in per_seed])))
                      for k in per_seed[0]}
        print(name, {k: round(v[0], 3) for k, v in rows[name].items()}, flush=True)
    return table("ADBench Classical, one-class (mean of seeds " + ", ".join(map(str, seeds)) + ")", rows,
                 "Train on a random half of the normal rows; test on the other half plus all anomalies. "
                 "Baselines get features standardised on the training half; VAEAnomalyDetector gets the raw "
                 "table (it standardises internally, from the same half).")


def bench_fmnist(classes: list[int], use_pyod: bool, name: str = "fashion-mnist") -> str:
    Xtr, ytr, Xte, yte = datasets.load_images(name)
    flat_tr, flat_te = Xtr.reshape(len(Xtr), -1) / 255.0, Xte.reshape(len(Xte), -1) / 255.0
    rows = {}
    for c in classes:
        m = ytr == c
        r = run_detectors(flat_tr[m], flat_te, yte != c, 0, use_pyod, images=True, train_img=Xtr[m], test_img=Xte)
        label = datasets.FMNIST_CLASSES[c] if name == "fashion-mnist" else str(c)
        rows[f"{c} {label}"] = r
        print(c, {k: round(v[0], 3) for k, v in r.items()}, flush=True)
    return table(f"{name}, one-class", rows,
                 "Train on the training images of one class; score the whole test set (10,000 images); "
                 "anomaly = another class. Pixels in [0, 1]; baselines see 784 flat features.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["adbench", "fashion-mnist", "mnist"], action="append")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--no-pyod", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "quality.md"))
    args = ap.parse_args()
    if not datasets.available():
        sys.exit(f"datasets not found at {datasets.ROOT} (set ANOMALY_VAE_DATASETS): nothing to benchmark")
    only = args.only or ["adbench", "fashion-mnist"]
    use_pyod = not args.no_pyod
    parts = ["# Detection quality", "",
             f"`python benchmarks/quality.py {' '.join(sys.argv[1:])}`; default `VAEAnomalyDetector()` (only "
             "`random_state` set), scikit-learn defaults for IsolationForest, PyOD defaults for its VAE. AUROC with "
             "the anomaly score (higher = more anomalous). Fit seconds on this machine, same run.", ""]
    if "adbench" in only:
        parts.append(bench_adbench([int(s) for s in args.seeds.split(",")], use_pyod))
    for name in ("fashion-mnist", "mnist"):
        if name in only:
            parts.append(bench_fmnist([int(c) for c in args.classes.split(",")], use_pyod, name))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(parts))
    print("\n".join(parts))


if __name__ == "__main__":
    main()
