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
