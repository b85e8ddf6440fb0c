"""Slow checks on the real benchmark data in ../shared/datasets (skipped when it is absent)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from anomaly_vae import VAEAnomalyDetector

from .conftest import shared_or_skip

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["6_cardio", "23_mammography"])
def test_adbench_table_at_least_isolation_forest(name):
    shared_or_skip("adbench", f"{name}.npz")
    import datasets

    X, y = datasets.load_adbench(name)
    tr, te = datasets.adbench_split(y, 0)
    ours = roc_auc_score(y[te], VAEAnomalyDetector(random_state=0).fit(X[tr]).anomaly_score(X[te]))
    iforest = roc_auc_score(y[te], -IsolationForest(random_state=0).fit(X[tr]).score_samples(X[te]))
    assert ours >= iforest - 0.02, (ours, iforest)


def test_fashion_mnist_one_class_trouser():
    shared_or_skip("fashion-mnist", "train-images-idx3-ubyte.gz")
    import datasets

    Xtr, ytr, Xte, yte = datasets.load_images("fashion-mnist")
    det = VAEAnomalyDetector(random_state=0, epochs=10).fit(Xtr[ytr == 1])
    assert roc_auc_score(yte != 1, det.anomaly_score(Xte)) > 0.95
    # the false-alarm rate on the unseen trousers of the test set stays near alpha
    rate = np.mean(det.predict(Xte[yte == 1]) == -1)
    assert rate <= 0.01 + 3 * np.sqrt(0.01 * 0.99 / 1000) + 0.01
