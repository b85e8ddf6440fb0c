"""2. A Bernoulli VAE on binarized MNIST (pixels > 0.5), as in Kingma & Welling (2014):
784 -> 500 tanh -> 5-D latent, a Bernoulli decoder, and an L2 weight penalty. Draws 10 samples
from the prior and saves them as one PNG.

    python examples/02_binarized_mnist_bernoulli.py            # 60,000 images, 30 epochs
    python examples/02_binarized_mnist_bernoulli.py --quick    # 15,000 images, 10 epochs
"""

from __future__ import annotations

import time

import numpy as np

from _common import load, parser, report, save, settings
from anomaly_vae import VAEAnomalyDetector, plots


def main() -> None:
    args = parser(__doc__).parse_args()
    s = settings(args, full={"limit": 60000, "epochs": 30}, quick={"limit": 15000, "epochs": 10})
    started = time.perf_counter()
    xtr, _, xte, _ = load("mnist", s["limit"], args.seed)
    binarize = lambda x: (x / 255.0 > 0.5).astype(np.float32)  # noqa: E731  {0, 1} floats, not 0-255
    xtr, xte = binarize(xtr), binarize(xte)
    det = VAEAnomalyDetector(model="dense", hidden_sizes=(500,), activation="tanh", latent_dim=5,
                             likelihood="bernoulli", weight_decay=1e-4, epochs=s["epochs"], patience=s["epochs"],
                             batch_size=100, learning_rate=1e-3, random_state=args.seed, verbose=1).fit(xtr)
    print(f"binarized MNIST, Bernoulli VAE 784-500(tanh)-5: {len(xtr)} images, {s['epochs']} epochs")
    samples = det.decode(np.random.default_rng(args.seed).standard_normal((10, 5)))  # Bernoulli means
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(10, 1.4), dpi=100)
    plots.show_image(ax, plots.tile_images(samples, 1, 10, gap=2),
                "10 samples from the prior N(0, I), decoded (Bernoulli means)")
    fig.tight_layout()
    save(fig, args.out, "02_bernoulli_prior_samples.png")
    last = det.history_[-1]
    report(args.out, "02_binarized_mnist_bernoulli", {
        "training_images": len(xtr), "epochs": len(det.history_),
        "train_neg_elbo": round(last["loss"], 2), "recon_term": round(last["recon"], 2), "kl": round(last["kl"], 2),
        "test_neg_elbo_mean": round(float(det.anomaly_score(xte).mean()), 2),
    }, started)


if __name__ == "__main__":
    main()
