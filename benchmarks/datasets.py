"""Loaders for ../shared/datasets (absent on a user's fresh clone: callers skip with a reason)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

ROOT = Path(os.environ.get("ANOMALY_VAE_DATASETS", Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets")).resolve()

ADBENCH = ["38_thyroid", "6_cardio", "30_satellite", "32_shuttle", "23_mammography", "2_annthyroid",
           "28_pendigits", "4_breastw", "18_Ionosphere", "40_vowels"]
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


# one-class tasks from scikit-learn's bundled data (no download, never used to choose a default): the
# normal rows are one class, the anomalies every other class (digits: 8x8 images as 64 columns)
SKLEARN = [*(f"sk_digits_{k}" for k in range(10)), *(f"sk_wine_{k}" for k in range(3)), "sk_breast_cancer"]


def load_sklearn(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``sk_digits_K``, ``sk_wine_K``: class K normal, the others anomalies; ``sk_breast_cancer``:
    benign normal, malignant anomalies. (X float64, y 0 normal / 1 anomaly)."""
    from sklearn import datasets as skd

    if name == "sk_breast_cancer":
        X, target = skd.load_breast_cancer(return_X_y=True)
        return X.astype(np.float64), (target == 0).astype(int)  # 0 = malignant in scikit-learn
    if name not in SKLEARN:
        raise ValueError(f"unknown scikit-learn task {name!r}; known: {', '.join(SKLEARN)}")
    _, what, k = name.split("_")
    X, target = {"digits": skd.load_digits, "wine": skd.load_wine}[what](return_X_y=True)
    return X.astype(np.float64), (target != int(k)).astype(int)


def available() -> bool:
    return (ROOT / "adbench").is_dir() and (ROOT / "fashion-mnist").is_dir()


def load_adbench(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(ROOT / "adbench" / f"{name}.npz", allow_pickle=False) as f:
        return f["X"].astype(np.float64), f["y"].astype(int)


def adbench_split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The one-class protocol: half the normal rows to train; the other half plus all anomalies to test."""
    rng = np.random.RandomState(seed)
    normal = np.flatnonzero(y == 0)
    rng.shuffle(normal)
    half = len(normal) // 2
    test = np.concatenate([normal[half:], np.flatnonzero(y == 1)])
    return normal[:half], test


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_images(name: str = "fashion-mnist") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    d = ROOT / name
    return (_idx(d / "train-images-idx3-ubyte.gz"), _idx(d / "train-labels-idx1-ubyte.gz"),
            _idx(d / "t10k-images-idx3-ubyte.gz"), _idx(d / "t10k-labels-idx1-ubyte.gz"))


MIXED = "mixed_cardio"  # the mixed-type, heavy-tailed table built from 6_cardio (see make_mixed)


def make_mixed() -> tuple["pd.DataFrame", np.ndarray]:
    """A mixed-type table with heavy-tailed numeric columns and string columns, built from the real
    rows of ADBench 6_cardio by monotone transforms only (so each row keeps its label and its
    information; only the scales change), the shape of network or payment logs:

    - ``bytes_*`` (6 columns): exp(1.5 z) * 1000, rounded, lognormal-like counts over 4+ decades;
    - ``duration_*`` (3 columns): 10 ** z seconds, another heavy tail;
    - ``band_*`` (3 columns): the column cut at its quintiles into strings (``"b0"`` ... ``"b4"``);
    - ``host``: a string column unrelated to the label (Zipf-distributed over 20 names, seed 0);
    - the other 9 columns unchanged.
    z is the column standardised over all rows (a fixed transform of the data, not a model fit).
    """
    import pandas as pd

    X, y = load_adbench("6_cardio")
    z = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)
    cols: dict[str, object] = {}
    for j in range(6):
        cols[f"bytes_{j}"] = np.round(np.exp(1.5 * z[:, j]) * 1000.0)
    for j in range(6, 9):
        cols[f"duration_{j}"] = 10.0 ** z[:, j]
    for j in range(9, 12):
        edges = np.quantile(X[:, j], [0.2, 0.4, 0.6, 0.8])
        cols[f"band_{j}"] = np.array([f"b{int(b)}" for b in np.searchsorted(edges, X[:, j], side="right")], dtype=object)
    for j in range(12, X.shape[1]):
        cols[f"x_{j}"] = X[:, j]
    rng = np.random.RandomState(0)
    weights = 1.0 / np.arange(1, 21)
    cols["host"] = np.array([f"host-{i:02d}" for i in rng.choice(20, size=len(X), p=weights / weights.sum())],
                            dtype=object)
    return pd.DataFrame(cols), y


def baseline_features(df: "pd.DataFrame", train: np.ndarray) -> np.ndarray:
    """What the baselines see of a mixed table: string columns one-hot (categories of the training
    rows), numeric columns standardised on the training rows: the usual hand-rolled pipeline."""
    parts = []
    for name in df.columns:
        col = df[name].to_numpy()
        if col.dtype == object:
            cats = sorted(set(col[train]))
            parts.append(np.stack([(col == c).astype(float) for c in cats], axis=1))
        else:
            v = col.astype(float)
            std = v[train].std()
            parts.append(((v - v[train].mean()) / (std if std > 0 else 1.0))[:, None])
    return np.concatenate(parts, axis=1)


def throughput_table(root: Path, rows: int, work: Path) -> tuple["pd.DataFrame", "pd.DataFrame", dict[str, Path]]:
    """The table of the throughput benchmarks: ADBench cardio (``data/cardio.csv``) plus a string
    column, repeated to ``rows``. Returns (normal rows to fit on, the big table, its files under
    ``work``: "csv", "quarter" (a CSV of the first quarter) and "parquet")."""
    import pandas as pd

    from anomaly_vae.io.tables import EXACT_FLOATS

    cardio = pd.read_csv(root / "data" / "cardio.csv", **EXACT_FLOATS)
    cardio["site"] = np.random.RandomState(0).choice(["north", "south", "east", "west"], len(cardio))
    normal = cardio[cardio.label == "normal"].drop(columns="label")
    reps = int(np.ceil(rows / len(cardio)))
    big = pd.concat([cardio.drop(columns="label")] * reps, ignore_index=True).head(rows)
    files = {"csv": work / "big.csv", "quarter": work / "quarter.csv", "parquet": work / "big.parquet"}
    big.to_csv(files["csv"], index=False)
    big.head(rows // 4).to_csv(files["quarter"], index=False)
    big.to_parquet(files["parquet"], index=False)
    return normal, big, files
