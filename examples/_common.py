"""What the example scripts share: arguments, the MNIST / Fashion-MNIST loader (the benchmarks'
IDX reader, from ../shared/datasets or ANOMALY_VAE_DATASETS), and saving figures and numbers."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "benchmarks"))
import datasets  # noqa: E402  (benchmarks/datasets.py)

FMNIST_CLASSES = datasets.FMNIST_CLASSES


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small settings: a few minutes on 2 cores")
    ap.add_argument("--limit", type=int, help="use at most this many training images (overrides the settings)")
    ap.add_argument("--epochs", type=int, help="epochs (overrides the settings)")
    ap.add_argument("--out", type=Path, default=HERE / "figures", help="folder for the PNG files (examples/figures)")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def settings(args: argparse.Namespace, full: dict[str, int], quick: dict[str, int]) -> dict[str, int]:
    s = dict(quick if args.quick else full)
    if args.limit:
        s["limit"] = args.limit
    if args.epochs:
        s["epochs"] = args.epochs
    return s


def load(name: str, limit: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels), uint8 (N, 28, 28); the training set
    cut to ``limit`` images (a random subset, the same for a seed) and the test set to a sixth of
    that when it is smaller than the test set."""
    if not (datasets.ROOT / name).is_dir():
        sys.exit(f"needs {datasets.ROOT / name} (MNIST / Fashion-MNIST in IDX format); set ANOMALY_VAE_DATASETS")
    xtr, ytr, xte, yte = datasets.load_images(name)
    if limit and limit < len(xtr):
        keep = np.sort(np.random.RandomState(seed).choice(len(xtr), limit, replace=False))
        xtr, ytr = xtr[keep], ytr[keep]
        n_test = max(500, min(len(xte), limit // 6))
        keep = np.sort(np.random.RandomState(seed + 1).choice(len(xte), n_test, replace=False))
        xte, yte = xte[keep], yte[keep]
    return xtr, ytr, xte, yte


def load_one_class(normal: int, limit: int, quick: bool, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST one-class: (the first ``limit`` training images of class ``normal``, test
    images, test labels); with ``quick`` a random 2,000 of the test images."""
    xtr, ytr, xte, yte = load("fashion-mnist", None, seed)
    if quick:
        keep = np.sort(np.random.RandomState(seed).choice(len(xte), 2000, replace=False))
        xte, yte = xte[keep], yte[keep]
    return xtr[ytr == normal][:limit], xte, yte


def save(fig: Any, out: Path, name: str) -> Path:
    from anomaly_vae.plots import pyplot

    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    fig.savefig(path)
    pyplot().close(fig)
    shrink(path)
    print(f"  figure               {path}")
    return path


def shrink(path: Path) -> None:
    """Rewrite a PNG with a 256-colour palette: a third of the bytes, the same picture to the eye
    (the figures are committed)."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def report(out: Path, name: str, numbers: dict[str, Any], started: float) -> None:
    numbers = {**numbers, "seconds": round(time.perf_counter() - started, 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(numbers, indent=2) + "\n")
    for k, v in numbers.items():
        print(f"  {k:<20} {v}")
