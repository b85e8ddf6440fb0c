"""Training and scoring on a CUDA device (``device="cuda"``): what a GPU fit gives, and that its model,
saved, scores on the CPU as on the GPU up to float rounding. Skipped where torch sees no CUDA device
(CI has none); on a GPU machine: ``pytest tests/test_cuda.py``.

A GPU run is not bit-identical to a CPU run (other kernels, other summation orders), so these tests
compare within tolerances, and compare detection quality, never bits. The random draws of training
(batch order, reparameterisation noise) come from the same CPU generator on either device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anomaly_vae import VAEAnomalyDetector, load_detector

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")

RTOL, ATOL = 1e-4, 1e-3  # nats: float32 on two devices' kernels


def auroc(det: VAEAnomalyDetector, normal, anomalous) -> float:
    scores = np.concatenate([det.anomaly_score(normal), det.anomaly_score(anomalous)])
    return float(roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(anomalous))], scores))


def on_cpu(det: VAEAnomalyDetector, tmp_path: Path, name: str) -> VAEAnomalyDetector:
    det.save(str(tmp_path / name))
    loaded = load_detector(tmp_path / name)
    assert next(loaded.model_.parameters()).device.type == "cpu"
    return loaded


@pytest.mark.parametrize("settings", [{}, {"pair": True, "marginal_floor": 0.01}], ids=["dense", "pair"])
def test_a_table_fit_on_cuda_detects_as_on_cpu_and_its_saved_model_scores_alike_on_cpu(cancer, tmp_path, settings):
    train, normal, anomalous = cancer
    gpu = VAEAnomalyDetector(device="cuda", epochs=30, random_state=0, alpha=0.05, **settings).fit(train)
    assert gpu.fit_info_["device"].startswith("cuda")
    assert all(p.device.type == "cuda" for p in gpu.model_.parameters())
    cpu = VAEAnomalyDetector(device="cpu", epochs=30, random_state=0, alpha=0.05, **settings).fit(train)
    # the same data splits, draws and epochs: only the kernels differ
    assert gpu.fit_info_["n_train"] == cpu.fit_info_["n_train"]
    assert abs(auroc(gpu, normal, anomalous) - auroc(cpu, normal, anomalous)) < 0.02
    assert auroc(gpu, normal, anomalous) > 0.9

    loaded = on_cpu(gpu, tmp_path, "m")
    for score in ("elbo", "reconstruction", "iwae"):
        x = anomalous if score != "iwae" else anomalous.iloc[:50]
        here, there = gpu.anomaly_score(x, score=score), loaded.anomaly_score(x, score=score)
        assert np.isfinite(here).all()
        np.testing.assert_allclose(here, there, rtol=RTOL, atol=ATOL)
    assert loaded.threshold_ == gpu.threshold_
    np.testing.assert_allclose(loaded.calibration_scores_, gpu.calibration_scores_)
    near = np.abs(gpu.anomaly_score(normal) - gpu.threshold_) <= ATOL + RTOL * abs(gpu.threshold_)
    assert (gpu.predict(normal) == loaded.predict(normal))[~near].all()


def test_encode_decode_and_feature_scores_come_back_as_numpy_from_cuda(cancer):
    train, normal, _ = cancer
    det = VAEAnomalyDetector(device="cuda", epochs=5, random_state=0, alpha=0.05).fit(train)
    z = det.encode(normal)
    assert isinstance(z, np.ndarray) and z.shape == (len(normal), det.model_.latent_dim)
    assert isinstance(det.decode(z), np.ndarray)
    fs = det.feature_scores(normal)
    np.testing.assert_allclose(np.asarray(fs).sum(axis=1), det.anomaly_score(normal, score="reconstruction"),
                               rtol=1e-4, atol=1e-3)


def test_auto_picks_the_gpu(cancer):
    det = VAEAnomalyDetector(device="auto", epochs=2, random_state=0, alpha=0.05).fit(cancer[0])
    assert det.fit_info_["device"].startswith("cuda")


def test_a_checkpointed_cuda_fit_resumes_to_the_uninterrupted_run(cancer, tmp_path):
    """The optimizer moments come back from the (CPU) checkpoint file onto the GPU."""
    train = cancer[0]
    settings = dict(device="cuda", random_state=0, alpha=0.05, patience=100)
    whole = VAEAnomalyDetector(epochs=6, **settings).fit(train)
    VAEAnomalyDetector(epochs=3, checkpoint_dir=str(tmp_path / "ck"), **settings).fit(train)
    resumed = VAEAnomalyDetector(epochs=6, checkpoint_dir=str(tmp_path / "ck"), **settings).fit(train)
    assert len(resumed.history_) == 6
    # the same kernels on the same device: the GPU's own run, resumed, within rounding of it
    np.testing.assert_allclose(resumed.anomaly_score(train), whole.anomaly_score(train), rtol=1e-4, atol=1e-3)


def test_a_conv_fit_on_cuda_scores_images_as_its_saved_model_does_on_cpu(fashion_sample, tmp_path):
    images, labels = fashion_sample
    normal = images[labels == 7]  # sneakers
    gpu = VAEAnomalyDetector(model="conv", device="cuda", epochs=3, random_state=0, alpha=0.1).fit(normal[:80])
    assert gpu.input_kind_ == "image" and gpu.fit_info_["device"].startswith("cuda")
    loaded = on_cpu(gpu, tmp_path, "conv")
    x = images[:200]
    np.testing.assert_allclose(gpu.anomaly_score(x), loaded.anomaly_score(x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("model", ["dense", "conv"])
def test_a_cuda_fit_is_reproducible_and_leaves_global_state_alone(fashion_sample, model, monkeypatch):
    """cuDNN's deterministic algorithms during the fit (its default convolution gradients made two
    fits of one seed differ); the CUDA generator and cuDNN's flags are as the fit found them."""
    images, labels = fashion_sample
    x = images[labels == 7][:80] if model == "conv" else images[labels == 7][:300].reshape(300, -1) / 255.0
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # the user's setting, restored after the test
    state = torch.cuda.get_rng_state()
    fits = [VAEAnomalyDetector(model=model, device="cuda", epochs=3, random_state=0, alpha=0.1).fit(x)
            for _ in range(2)]
    assert torch.equal(torch.cuda.get_rng_state(), state)
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    test = images[:200] if model == "conv" else images[:200].reshape(200, -1) / 255.0
    np.testing.assert_array_equal(fits[0].anomaly_score(test), fits[1].anomaly_score(test))


def test_onnx_export_of_a_cuda_model_leaves_it_on_the_gpu(cancer, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    train, normal, _ = cancer
    det = VAEAnomalyDetector(device="cuda", epochs=3, random_state=0, alpha=0.05).fit(train)
    det.to_onnx(tmp_path / "m.onnx")
    assert next(det.model_.parameters()).device.type == "cuda"
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": normal.to_numpy(np.float64)})))
    np.testing.assert_allclose(out["score"], det.anomaly_score(normal), rtol=1e-3, atol=1e-2)


def test_the_command_line_trains_on_cuda(cli_here, cardio, tmp_path):
    table = tmp_path / "normal.csv"
    cardio[cardio.label == "normal"].drop(columns="label").to_csv(table, index=False)
    done = cli_here("train", table, "--out", tmp_path / "m", "--device", "cuda", "--epochs", "3", "--seed", "0")
    assert done.returncode == 0, done.stderr
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert card["training"]["summary"]["device"].startswith("cuda")
    done = cli_here("score", tmp_path / "m", table, "--out", tmp_path / "s.csv")
    assert done.returncode == 0, done.stderr
