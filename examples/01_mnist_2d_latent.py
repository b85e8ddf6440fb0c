"""1. A dense VAE with a 2-D latent space on MNIST (784 -> 512 -> 256 -> 2, MSE + KL).

Shows the latent map of the test set coloured by digit, the image decoded at one chosen latent
coordinate, and a 30 x 30 grid of 900 digits decoded over the latent plane.

    python examples/01_mnist_2d_latent.py            # 60,000 images, 25 epochs
    python examples/01_mnist_2d_latent.py --quick    # 10,000 images, 8 epochs
"""

from __future__ import annotations

import time

from _common import load, parser, report, save, settings
from anomaly_vae import VAEAnomalyDetector, plots


def main() -> None:
    args = parser(__doc__).parse_args()
    s = settings(args, full={"limit": 60000, "epochs": 25}, quick={"limit": 10000, "epochs": 8})
    started = time.perf_counter()
    xtr, _, xte, yte = load("mnist", s["limit"], args.seed)
    det = VAEAnomalyDetector(model="dense", hidden_sizes=(512, 256), latent_dim=2, likelihood="gaussian-fixed",
                             epochs=s["epochs"], patience=s["epochs"], batch_size=128, alpha=0.01,
                             random_state=args.seed, verbose=1).fit(xtr)
    print(f"MNIST, dense VAE with a 2-D latent: {len(xtr)} training images, {s['epochs']} epochs")
    save(plots.latent_figure(det, xte, yte.tolist()), args.out, "01_mnist_latent.png")
    # one chosen coordinate: where the test 1s sit on average
    z_one = det.encode(xte[yte == 1]).mean(axis=0)
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(3, 3.3), dpi=100)
    plots.show_image(ax, det.decode(z_one[None])[0, 0], f"decoded at z = ({z_one[0]:.2f}, {z_one[1]:.2f})")
    fig.tight_layout()
    save(fig, args.out, "01_mnist_decoded_point.png")
    save(plots.grid_figure(det, n=30), args.out, "01_mnist_grid.png")
    last = det.history_[-1]
    report(args.out, "01_mnist_2d_latent", {
        "training_images": len(xtr), "epochs": len(det.history_), "recon_mse_term": round(last["recon"], 2),
        "kl": round(last["kl"], 3), "test_elbo_mean": round(float(-det.anomaly_score(xte).mean()), 2),
    }, started)


if __name__ == "__main__":
    main()
