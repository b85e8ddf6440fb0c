"""4. The beta trade-off (beta-VAE, Higgins et al. 2017): beta in {0.5, 1, 4} on Fashion-MNIST
one-class (train on T-shirts only; score the test set, anything else is an anomaly). A table of
the reconstruction term, the KL term and the anomaly AUROC, and an interpolation between two
samples for each beta. The anomaly score is always the true negative ELBO (beta = 1), whatever
beta the model was trained with.

    python examples/04_beta_tradeoff.py            # all 6,000 T-shirts, 30 epochs, the 10,000 test images
    python examples/04_beta_tradeoff.py --quick    # 2,000 T-shirts, 6 epochs, 2,000 test images
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.metrics import roc_auc_score

from _common import FMNIST_CLASSES, load_one_class, parser, report, save, settings
from anomaly_vae import VAEAnomalyDetector, plots

NORMAL = 0  # T-shirt/top
BETAS = (0.5, 1.0, 4.0)


def main() -> None:
    args = parser(__doc__).parse_args()
    s = settings(args, full={"limit": 6000, "epochs": 30}, quick={"limit": 2000, "epochs": 6})
    started = time.perf_counter()
    xtr, xte, yte = load_one_class(NORMAL, s["limit"], args.quick, args.seed)
    anomalous = yte != NORMAL
    rows, numbers = [], {"normal_class": FMNIST_CLASSES[NORMAL], "training_images": len(xtr), "epochs": s["epochs"],
                         "test_images": len(xte)}
    a, b = xte[yte == NORMAL][0], xte[yte == 3][0]  # a T-shirt and a dress
    plt = plots.pyplot()
    fig, axes = plt.subplots(len(BETAS), 1, figsize=(12, 1.9 * len(BETAS)), dpi=100)
    for beta, ax in zip(BETAS, axes):
        det = VAEAnomalyDetector(model="conv", latent_dim=16, beta=beta, epochs=s["epochs"], patience=s["epochs"],
                                 random_state=args.seed, verbose=1).fit(xtr)
        last = det.history_[-1]
        auroc = roc_auc_score(anomalous, det.anomaly_score(xte))
        rows.append((beta, last["recon"], last["kl"], auroc))
        numbers[f"beta {beta:g}"] = {"recon": round(last["recon"], 1), "kl": round(last["kl"], 2), "auroc": round(auroc, 3)}
        zz = det.encode(np.stack([a, b]))
        t = np.linspace(0, 1, 10)
        ax.imshow(plots.tile_images(det.decode((1 - t)[:, None] * zz[0] + t[:, None] * zz[1]), 1, 10, gap=2),
                  cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"beta {beta:g}")
    fig.suptitle("T-shirt -> dress, decoded along the line between their latent codes", fontsize=10)
    fig.tight_layout()
    save(fig, args.out, "04_beta_morphs.png")
    print("\n| beta | -log p(x|z) (nats) | KL (nats) | AUROC |\n|---:|---:|---:|---:|")
    for beta, recon, kl, auroc in rows:
        print(f"| {beta:g} | {recon:.1f} | {kl:.2f} | {auroc:.3f} |")
    report(args.out, "04_beta_tradeoff", numbers, started)


if __name__ == "__main__":
    main()
