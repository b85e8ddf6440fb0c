import json
import re
from pathlib import Path

import numpy as np
import pytest

import anomaly_vae
from anomaly_vae import ArtifactError, VAEAnomalyDetector, load_detector

PACKAGE = Path(anomaly_vae.__file__).parent


@pytest.fixture(scope="module")
def fitted(cardio):
    df = cardio[cardio.label == "normal"].drop(columns="label").copy()
    df["shift"] = np.where(np.arange(len(df)) % 3 == 0, "night", "day")
    return VAEAnomalyDetector(epochs=3, random_state=0).fit(df), df


def test_round_trip_gives_identical_scores(fitted, tmp_path):
    det, df = fitted
    det.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]
    back = load_detector(tmp_path / "m")
    for score in ("elbo", "reconstruction", "iwae"):
        assert np.array_equal(back.anomaly_score(df, score=score), det.anomaly_score(df, score=score))
    assert back.threshold_ == det.threshold_ and back.alpha_ == det.alpha_
    assert np.array_equal(back.predict(df), det.predict(df))
    assert np.array_equal(back.calibration_scores_, det.calibration_scores_)
    back.set_alpha(0.2)  # calibration scores travel with the model
    assert back.threshold_ < det.threshold_


def test_image_model_round_trip(fashion_sample, tmp_path):
    images, labels = fashion_sample
    det = VAEAnomalyDetector(epochs=1, random_state=0, alpha=0.2).fit(images[labels == 3])
    det.save(tmp_path / "img")
    assert np.array_equal(load_detector(tmp_path / "img").anomaly_score(images[:70]), det.anomaly_score(images[:70]))


def test_model_json_has_the_contract_fields(fitted, tmp_path):
    det, _ = fitted
    det.save(tmp_path / "m")
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    for key in ("format_version", "package_version", "architecture", "input", "score", "calibration", "training", "weights"):
        assert key in card
    assert card["score"]["units"] == "nats" and card["calibration"]["n"] == len(det.calibration_scores_)
    assert re.fullmatch(r"[0-9a-f]{64}", card["weights"]["sha256"])
    assert card["input"]["preprocessing"]["columns"][-1]["categories"] == ["day", "night", "<other>"]


def test_modified_weights_are_refused(fitted, tmp_path):
    det, _ = fitted
    det.save(tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        load_detector(tmp_path / "m")


def test_newer_format_is_refused(fitted, tmp_path):
    det, _ = fitted
    det.save(tmp_path / "m")
    p = tmp_path / "m" / "model.json"
    card = json.loads(p.read_text())
    card["format_version"] = 99
    p.write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="format 99.*upgrade anomaly-vae"):
        load_detector(tmp_path / "m")


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ArtifactError, match="not a model directory"):
        load_detector(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="model.json is missing"):
        load_detector(tmp_path / "empty")


def test_save_before_fit_is_an_error(tmp_path):
    from anomaly_vae import NotFittedError

    with pytest.raises(NotFittedError):
        VAEAnomalyDetector().save(tmp_path / "m")


def test_no_pickle_in_any_load_path():
    """No pickle, joblib, torch.load or allow_pickle=True anywhere in the package or the service
    (and no bentoml.pytorch / picklable_model, which pickle a whole module)."""
    pattern = re.compile(r"import (c?pickle|dill|joblib|cloudpickle)|pickle\.(loads?|dumps?)|joblib\.|torch\.load\(|"
                         r"allow_pickle\s*=\s*True|bentoml\.(pytorch|picklable_model)")
    files = [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "service").rglob("*.py")]
    assert len(files) > 20
    offenders = [f"{p.name}:{i}" for p in files
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
