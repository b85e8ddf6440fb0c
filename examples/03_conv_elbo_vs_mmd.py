"""3. A convolutional VAE trained with the Monte-Carlo ELBO against an MMD-VAE (InfoVAE) of the
same architecture: two stride-2 convolutions (32 and 64 filters), a 2-D latent, a transposed-
convolution decoder; on Fashion-MNIST, then on MNIST.

For each data set: the two latent maps side by side, the two generated grids, a morph between two
classes, and the three log-terms log p(x|z), log p(z), log q(z|x) per epoch. Training writes a
checkpoint every epoch; each model is trained in two runs, the second resuming from the
checkpoint the first left (the same weights as one uninterrupted run: see the tests).

    python examples/03_conv_elbo_vs_mmd.py            # 60,000 images, 20 epochs, both data sets
    python examples/03_conv_elbo_vs_mmd.py --quick    # 6,000 images, 4 epochs
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from _common import FMNIST_CLASSES, load, parser, report, save, settings
from anomaly_vae import VAEAnomalyDetector, plots

MODELS = {
    "MC ELBO": dict(objective="elbo", kl_estimator="mc"),  # KL as log q(z|x) - log p(z) at the sampled z
    "MMD-VAE": dict(objective="mmd", mmd_weight=100.0),  # KL replaced by MMD(q(z), p(z)), Zhao et al.
}
PAIRS = {"fashion-mnist": (0, 7), "mnist": (1, 8)}  # morph: T-shirt -> sneaker; 1 -> 8


def train(name: str, params: dict, xtr, epochs: int, seed: int, ckpt: Path) -> tuple[VAEAnomalyDetector, int]:
    common = dict(model="conv", conv_channels=(32, 64), latent_dim=2, likelihood="bernoulli", patience=epochs,
                  alpha=0.05, random_state=seed, verbose=1, checkpoint_dir=str(ckpt), **params)
    VAEAnomalyDetector(epochs=max(1, epochs // 2), **common).fit(xtr)  # a run stopped half way
    resumed_at = json.loads((ckpt / "checkpoint.json").read_text())["epoch"]
    det = VAEAnomalyDetector(epochs=epochs, **common).fit(xtr)  # goes on from the checkpoint
    print(f"  {name}: resumed from the checkpoint of epoch {resumed_at}, trained to epoch {len(det.history_)}")
    return det, resumed_at


def main() -> None:
    args = parser(__doc__).parse_args()
    s = settings(args, full={"limit": 60000, "epochs": 20}, quick={"limit": 6000, "epochs": 4})
    started = time.perf_counter()
    plt = plots.pyplot()
    numbers: dict[str, object] = {"training_images": s["limit"], "epochs": s["epochs"]}
    work = Path(tempfile.mkdtemp(prefix="anomaly-vae-ckpt-"))
    try:
        for data in ("fashion-mnist", "mnist"):
            xtr, _, xte, yte = load(data, s["limit"], args.seed)
            xtr, xte = xtr / 255.0, xte / 255.0  # Bernoulli decoder on grey levels in [0, 1]
            dets = {}
            for name, params in MODELS.items():
                dets[name], _ = train(name, params, xtr, s["epochs"], args.seed, work / f"{data}-{name}")
            names = FMNIST_CLASSES if data == "fashion-mnist" else [str(d) for d in range(10)]
            labels = [names[int(v)] for v in yte]
            fig, axes = plt.subplots(1, 2, figsize=(13, 6), dpi=100)
            for ax, (name, det) in zip(axes, dets.items()):
                plots.latent_figure(det, xte, labels, ax=ax, title=f"{data}: {name}, posterior means of {len(xte)} test images")
            save(fig, args.out, f"03_{data}_latent_maps.png")
            fig, axes = plt.subplots(1, 2, figsize=(12, 6.3), dpi=100)
            for ax, (name, det) in zip(axes, dets.items()):
                plots.grid_figure(det, n=15, ax=ax, title=f"{name}: decoded over the latent plane")
            save(fig, args.out, f"03_{data}_grids.png")
            a, b = PAIRS[data]
            for name, det in dets.items():
                tag = name.replace(" ", "_").lower()
                save(plots.morph_figure(det, xte[yte == a][0], xte[yte == b][0], steps=10), args.out,
                     f"03_{data}_{tag}_morph.png")
                save(plots.history_figure(det), args.out, f"03_{data}_{tag}_history.png")
                last = det.history_[-1]
                numbers[f"{data} {name}"] = {k: round(last[k], 2) for k in ("log_px", "log_pz", "log_qz", "kl")} | (
                    {"mmd": round(last["mmd"], 4)} if "mmd" in last else {})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(args.out, "03_conv_elbo_vs_mmd", numbers, started)


if __name__ == "__main__":
    main()
