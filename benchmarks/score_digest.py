"""Fingerprints of trained weights and scores on the data that ships with the repo.

A refactor that must not change behaviour ("same scores, bit-identical") is checked by running this
before and after, on the same machine, and comparing the printed digests::

    python benchmarks/score_digest.py --out /tmp/before.json     # on the old commit
    python benchmarks/score_digest.py --compare /tmp/before.json # on the new one

It trains the demo's dense model (``data/cardio.csv``, seed 0) as one network and as the default pair,
and a small convolutional model on
``data/fashion_mnist_sample.npz``, then hashes the weights, the threshold and every score kind
(``elbo``, ``reconstruction``, ``iwae``), the per-feature scores and the p-values, on one thread and
on two. Digests are exact (SHA-256 of the float64 bytes): they hold on one CPU, not across CPUs
(see the README's "Scores").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anomaly_vae import VAEAnomalyDetector, load_detector  # noqa: E402
from anomaly_vae.io.tables import EXACT_FLOATS  # noqa: E402


def _h(a: object) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(a, dtype=np.float64)).tobytes()).hexdigest()[:16]


def _weights(det: VAEAnomalyDetector) -> str:
    h = hashlib.sha256()
    for name, t in sorted(det.model_.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _digests(det: VAEAnomalyDetector, X: object, tag: str) -> dict[str, str]:
    out = {f"{tag}/weights": _weights(det), f"{tag}/threshold": _h(det.threshold_)}
    for score in ("elbo", "reconstruction", "iwae"):
        for threads in (1, 2):
            d = det.set_params(n_threads=threads)
            out[f"{tag}/{score}/threads={threads}"] = _h(d.anomaly_score(X, score=score))
    out[f"{tag}/feature_scores"] = _h(det.feature_scores(X))
    out[f"{tag}/p_values"] = _h(det.p_values(X))
    with tempfile.TemporaryDirectory() as tmp:
        det.save(Path(tmp) / "m")
        out[f"{tag}/reloaded/elbo"] = _h(load_detector(Path(tmp) / "m").anomaly_score(X))
    return out


def _cli_outputs(det: VAEAnomalyDetector, data: Path, tag: str, *extra: str) -> dict[str, str]:
    """Digest of ``anomaly-vae score`` outputs (CSV and Parquet) of the saved model."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        det.save(Path(tmp) / "m")
        for suffix in ("csv", "parquet"):
            target = Path(tmp) / f"out.{suffix}"
            subprocess.run([sys.executable, "-m", "anomaly_vae.cli", "score", str(Path(tmp) / "m"), str(data),
                            "--out", str(target), "--quiet", *extra], check=False, capture_output=True)
            frame = pd.read_csv(target, dtype=str, keep_default_na=False) if suffix == "csv" \
                else pd.read_parquet(target).astype(str)
            frame = frame.replace(str(data), "DATA", regex=True)  # image paths hold the temporary folder
            out[f"{tag}/cli/{suffix}"] = hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()[:16]
    return out


def run() -> dict[str, str]:
    torch.set_num_threads(2)
    df = pd.read_csv(ROOT / "data" / "cardio.csv", **EXACT_FLOATS)
    X = df.drop(columns="label")
    # one network (the tables' default before session 12), then the default: the pair
    dense = VAEAnomalyDetector(epochs=30, random_state=0, pair=False, marginal_floor=0.0).fit(X.iloc[:900])
    out = _digests(dense, X, "dense")
    out.update(_cli_outputs(dense, ROOT / "data" / "cardio.csv", "dense", "--explain", "3"))
    pair = VAEAnomalyDetector(epochs=30, random_state=0).fit(X.iloc[:900])
    out.update(_digests(pair, X, "pair"))
    out.update(_cli_outputs(pair, ROOT / "data" / "cardio.csv", "pair", "--explain", "3"))
    images = np.load(ROOT / "data" / "fashion_mnist_sample.npz")["images"][:400].astype(np.float32) / 255.0
    conv = VAEAnomalyDetector(model="conv", epochs=3, random_state=0).fit(images[:300])
    out.update(_digests(conv, images, "conv"))
    with tempfile.TemporaryDirectory() as tmp:
        from PIL import Image
        for i, img in enumerate(images[300:340]):
            Image.fromarray((img * 255).round().astype(np.uint8)).save(Path(tmp) / f"{i:03d}.png")
        (Path(tmp) / "broken.png").write_bytes(b"not a png")
        out.update(_cli_outputs(conv, Path(tmp), "conv", "--explain", "2"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the digests here (JSON)")
    ap.add_argument("--compare", type=Path, help="compare with digests written earlier; exit 1 on any difference")
    args = ap.parse_args()
    got = run()
    for k, v in got.items():
        print(f"{k:40s} {v}")
    if args.out:
        args.out.write_text(json.dumps(got, indent=1))
    if args.compare:
        want = json.loads(args.compare.read_text())
        diff = [k for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
        print("identical" if not diff else f"DIFFERENT: {', '.join(diff)}")
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
