"""The fit loop (``anomaly_vae.training``) through the estimator: history, early stopping,
divergence, objectives, progress output and checkpoints that resume exactly."""

import numpy as np
import pytest
import torch

from anomaly_vae import InputError, TrainingDivergedError, VAEAnomalyDetector

FAST = dict(epochs=30, random_state=0)


def test_history_and_early_stopping(cancer):
    det = VAEAnomalyDetector(epochs=200, patience=3, random_state=0).fit(cancer[0])
    assert len(det.history_) < 200
    assert {"loss", "recon", "kl", "val_loss", "log_px", "log_pz", "log_qz"} <= set(det.history_[0])


def test_divergence_is_a_clear_error(cancer):
    X = cancer[0].to_numpy() * 1e30  # standardised away...
    X[:, 0] = np.linspace(-1e38, 3e38, len(X))  # ...but a column so wide it overflows float32
    with pytest.raises((TrainingDivergedError, InputError)):
        VAEAnomalyDetector(epochs=2, random_state=0, learning_rate=1e3).fit(X)


def test_huge_learning_rate_diverges_with_clear_error(cancer):
    with pytest.raises(TrainingDivergedError, match="training diverged at epoch"):
        VAEAnomalyDetector(epochs=20, random_state=0, learning_rate=1e6, grad_clip=0.0).fit(cancer[0])


def test_verbose_zero_is_silent(cancer, capsys):
    VAEAnomalyDetector(epochs=2, random_state=0, verbose=0).fit(cancer[0])
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_verbose_one_shows_progress_with_loss_terms(cancer, capsys):
    VAEAnomalyDetector(epochs=2, random_state=0, verbose=1).fit(cancer[0])
    err = capsys.readouterr().err
    assert "training" in err and "recon=" in err and "kl=" in err


def test_mmd_objective_and_mc_kl_train(cancer):
    for kw in ({"objective": "mmd"}, {"kl_estimator": "mc"}, {"kl_warmup_epochs": 2}, {"likelihood": "gaussian-fixed"}):
        det = VAEAnomalyDetector(epochs=4, random_state=0, **kw).fit(cancer[0])
        assert np.isfinite(det.anomaly_score(cancer[1])).all()


def test_checkpoints_resume_to_exactly_the_uninterrupted_run(cancer, tmp_path):
    import json

    X = cancer[0]
    settings = dict(patience=100, random_state=0, alpha=0.1)
    full = VAEAnomalyDetector(epochs=6, **settings).fit(X)
    ckpt = tmp_path / "ckpt"
    VAEAnomalyDetector(epochs=3, checkpoint_dir=str(ckpt), **settings).fit(X)  # "interrupted" after 3 epochs
    assert json.loads((ckpt / "checkpoint.json").read_text())["epoch"] == 3
    resumed = VAEAnomalyDetector(epochs=6, checkpoint_dir=str(ckpt), **settings).fit(X)
    assert [h["epoch"] for h in resumed.history_] == [1, 2, 3, 4, 5, 6]
    assert resumed.history_ == full.history_
    for (name, a), b in zip(full.model_.state_dict().items(), resumed.model_.state_dict().values()):
        assert torch.equal(a, b), name
    assert np.array_equal(full.anomaly_score(X), resumed.anomaly_score(X))
    with pytest.raises(ValueError, match="was written for other settings than this run's"):
        VAEAnomalyDetector(epochs=6, checkpoint_dir=str(ckpt), learning_rate=0.01, **settings).fit(X)
    with pytest.raises(ValueError, match="was written for other data than this run's"):
        VAEAnomalyDetector(epochs=6, checkpoint_dir=str(ckpt), **settings).fit(X.iloc[::-1])
