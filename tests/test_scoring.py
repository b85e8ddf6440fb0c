"""Determinism: a row's score does not depend on its batch, position, batch size or thread count."""

import numpy as np
import pytest
import torch

from anomaly_vae import VAEAnomalyDetector
from anomaly_vae.scoring import BLOCK


@pytest.fixture(scope="module")
def table_model(cardio):
    X = cardio[cardio.label == "normal"].drop(columns="label")
    return VAEAnomalyDetector(epochs=5, random_state=0).fit(X), cardio.drop(columns="label")


@pytest.fixture(scope="module")
def image_model(fashion_sample):
    images, labels = fashion_sample
    return VAEAnomalyDetector(epochs=2, random_state=0, alpha=0.2).fit(images[labels == 7]), images[:150]


@pytest.mark.parametrize("score", ["elbo", "reconstruction", "iwae"])
def test_score_independent_of_batch_position_and_size(table_model, score):
    det, X = table_model
    X = X.iloc[:300]
    full = det.anomaly_score(X, score=score)
    for size in (1, 7, BLOCK, 100):
        parts = np.concatenate([det.anomaly_score(X.iloc[i : i + size], score=score) for i in range(0, 300, size)])
        assert np.array_equal(parts, full), size
    perm = np.random.default_rng(0).permutation(300)
    assert np.array_equal(det.anomaly_score(X.iloc[perm], score=score), full[perm])


def test_image_scores_independent_of_batch(image_model):
    det, X = image_model
    full = det.anomaly_score(X)
    single = np.concatenate([det.anomaly_score(X[i : i + 1]) for i in range(0, 20)])
    assert np.array_equal(single, full[:20])
    perm = np.random.default_rng(1).permutation(len(X))
    assert np.array_equal(det.anomaly_score(X[perm]), full[perm])


def test_score_independent_of_thread_count(table_model, image_model):
    for det, X in (table_model, image_model):
        X = X[:100]
        old = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = det.anomaly_score(X)
            torch.set_num_threads(2)
            two = det.anomaly_score(X)
        finally:
            torch.set_num_threads(old)
        assert np.array_equal(one, two)


def test_scores_repeat_exactly(table_model):
    det, X = table_model
    assert np.array_equal(det.anomaly_score(X.iloc[:50], score="iwae"), det.anomaly_score(X.iloc[:50], score="iwae"))


def test_memory_is_bounded_by_the_block(table_model, monkeypatch):
    """Each forward pass sees BLOCK rows, however many rows are scored."""
    det, X = table_model
    seen = []
    original = det.model_.encode

    def spy(x):
        seen.append(x.shape[0])
        return original(x)

    monkeypatch.setattr(det.model_, "encode", spy)
    det.anomaly_score(X)
    assert set(seen) == {BLOCK} and len(seen) == -(-len(X) // BLOCK)
