"""5. Anomaly detection on images, end to end: train a convolutional VAE on one Fashion-MNIST class,
calibrate the threshold for a 1% false-alarm rate on held-out images of that class, and score
the whole test set. Shows the score histograms of the normal class and the others with the
threshold, and the most anomalous (and most normal) test images with their reconstructions and
error maps.

    python examples/05_image_anomalies.py            # all 6,000 training trousers, 30 epochs
    python examples/05_image_anomalies.py --quick    # 6,000 trousers, 8 epochs, 2,000 test images
"""

from __future__ import annotations

import time

from sklearn.metrics import roc_auc_score

from _common import FMNIST_CLASSES, load_one_class, parser, report, save, settings
from anomaly_vae import VAEAnomalyDetector, plots

NORMAL = 1  # Trouser


def main() -> None:
    args = parser(__doc__).parse_args()
    s = settings(args, full={"limit": 6000, "epochs": 30}, quick={"limit": 6000, "epochs": 8})
    started = time.perf_counter()
    xtr, xte, yte = load_one_class(NORMAL, s["limit"], args.quick, args.seed)
    det = VAEAnomalyDetector(model="conv", latent_dim=16, alpha=0.01, epochs=s["epochs"], random_state=args.seed,
                             verbose=1).fit(xtr)
    scores = det.anomaly_score(xte)
    anomalous = yte != NORMAL
    flagged = scores > det.threshold_
    labels = [FMNIST_CLASSES[NORMAL] + " (normal)" if y == NORMAL else "other classes" for y in yte]
    save(plots.scores_figure(det, xte, labels), args.out, "05_scores.png")
    save(plots.reconstructions_figure(det, xte, n=6), args.out, "05_reconstructions.png")
    per_class = {FMNIST_CLASSES[c]: round(float(flagged[yte == c].mean()), 3) for c in range(10)}
    report(args.out, "05_image_anomalies", {
        "normal_class": FMNIST_CLASSES[NORMAL], "training_images": len(xtr), "epochs": len(det.history_),
        "test_images": len(xte), "auroc": round(roc_auc_score(anomalous, scores), 4), "alpha": det.alpha_,
        "false_alarm_rate": round(float(flagged[~anomalous].mean()), 4),
        "detection_rate": round(float(flagged[anomalous].mean()), 4), "flagged_share_by_class": per_class,
    }, started)


if __name__ == "__main__":
    main()
