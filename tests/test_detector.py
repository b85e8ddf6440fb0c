"""The estimator end to end on real data: breast cancer (scikit-learn), cardio and Fashion-MNIST (data/)."""

import copy
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from anomaly_vae import CalibrationError, InputError, NotFittedError, TrainingDivergedError, VAEAnomalyDetector

FAST = dict(epochs=30, random_state=0)


@pytest.fixture(scope="module")
def cancer():
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    normal, anomalous = X[y == 1], X[y == 0]  # benign is the normal class
    return normal.iloc[:250], normal.iloc[250:], anomalous


@pytest.fixture(scope="module")
def cancer_model(cancer):
    train, _, _ = cancer
    return VAEAnomalyDetector(alpha=0.05, **FAST).fit(train)


def test_fit_returns_self_and_detects_malignant(cancer, cancer_model):
    _, test_normal, anomalous = cancer
    scores = cancer_model.anomaly_score(pd.concat([test_normal, anomalous]))
    y = np.r_[np.zeros(len(test_normal)), np.ones(len(anomalous))]
    assert roc_auc_score(y, scores) > 0.9


def test_sklearn_sign_conventions(cancer, cancer_model):
    X = cancer[2].iloc[:20]
    s = cancer_model.anomaly_score(X)
    assert np.array_equal(cancer_model.score_samples(X), -s)
    assert np.allclose(cancer_model.decision_function(X), -s - cancer_model.offset_)
    assert np.array_equal(cancer_model.predict(X), np.where(s > cancer_model.threshold_, -1, 1))
    assert np.array_equal(cancer_model.predict(X) == -1, cancer_model.p_values(X) <= cancer_model.alpha_)


def test_scores_match_a_hand_computation(cancer_model, cancer):
    """elbo, reconstruction and iwae recomputed here from the model's parts and the stored noise."""
    from anomaly_vae.objectives import kl_standard_normal, log_normal, log_standard_normal

    X = cancer[1].iloc[:10]
    m, eps = cancer_model.model_, cancer_model.noise_
    x = torch.from_numpy(cancer_model.preprocessor_.transform(X))
    with torch.no_grad():
        mu, logvar = m.encode(x)
        z = mu + torch.exp(0.5 * logvar) * eps[:, None, :]  # (K, B, k)
        log_px = torch.stack([m.log_likelihood(x, m.decode(zk)).sum(1) for zk in z])  # (K, B)
        log_w = log_px + log_standard_normal(z) - log_normal(z, mu, 0.5 * logvar).sum(-1)
        elbo = -log_px.mean(0) + kl_standard_normal(mu, logvar)
        iwae = -(torch.logsumexp(log_w, 0) - np.log(len(eps)))
        recon = -m.log_likelihood(x, m.decode(mu)).sum(1)
    assert np.allclose(cancer_model.anomaly_score(X, score="elbo"), elbo.numpy(), rtol=1e-5)
    assert np.allclose(cancer_model.anomaly_score(X, score="iwae"), iwae.numpy(), rtol=1e-5)
    assert np.allclose(cancer_model.anomaly_score(X, score="reconstruction"), recon.numpy(), rtol=1e-5)
    # Jensen: the IWAE estimate is below the Monte-Carlo -ELBO on the same samples
    assert torch.all(iwae <= -log_w.mean(0) + 1e-4)


def test_feature_scores_sum_to_reconstruction(cancer_model, cancer):
    X = cancer[2].iloc[:30]
    fs = cancer_model.feature_scores(X)
    assert list(fs.columns) == list(X.columns) and list(fs.index) == list(X.index)
    assert np.allclose(fs.sum(axis=1), cancer_model.anomaly_score(X, score="reconstruction"), rtol=1e-5, atol=1e-3)


def test_columns_matched_by_name(cancer_model, cancer):
    X = cancer[2].iloc[:10]
    shuffled = X[X.columns[::-1]].assign(extra="ignored")
    assert np.array_equal(cancer_model.anomaly_score(X), cancer_model.anomaly_score(shuffled))


def test_missing_column_is_named(cancer_model, cancer):
    X = cancer[2].drop(columns=["mean radius"])
    with pytest.raises(InputError, match="missing column.*mean radius"):
        cancer_model.anomaly_score(X)


def test_non_numeric_value_names_column_and_row(cancer_model, cancer):
    X = cancer[2].iloc[:5].astype(object)
    X.iloc[3, 2] = "12,5"
    with pytest.raises(InputError, match=r"column 'mean perimeter', row 3: expected a number, got '12,5'"):
        cancer_model.anomaly_score(X)


def test_infinity_is_an_error(cancer_model, cancer):
    X = cancer[2].iloc[:5].copy()
    X.iloc[2, 0] = np.inf
    with pytest.raises(InputError, match="column 'mean radius', row 2.*not finite"):
        cancer_model.anomaly_score(X)


def test_wrong_width_array_is_an_error(cancer_model, cancer):
    with pytest.raises(ValueError, match="X has 29 features, but VAEAnomalyDetector is expecting 30"), \
            pytest.warns(UserWarning, match="does not have valid feature names"):  # fitted on a DataFrame
        cancer_model.anomaly_score(cancer[2].to_numpy()[:, 1:])


def test_empty_input_is_an_error(cancer_model, cancer):
    with pytest.raises(ValueError, match="0 sample"):
        cancer_model.anomaly_score(cancer[2].iloc[:0])
    with pytest.raises(ValueError, match="0 sample"):
        VAEAnomalyDetector().fit(np.zeros((0, 3)))


def test_scoring_before_fit_is_an_error():
    with pytest.raises(NotFittedError):
        VAEAnomalyDetector().anomaly_score(np.zeros((3, 3)))


def test_images_given_to_a_table_model_is_an_error(cancer_model):
    with pytest.raises(InputError, match="this model scores tables"):
        cancer_model.anomaly_score(np.zeros((2, 8, 8)))


def test_constant_column_does_not_divide_by_zero(cancer):
    X = cancer[0].assign(const=7.0)
    det = VAEAnomalyDetector(epochs=3, random_state=0, alpha=0.1).fit(X)
    assert np.isfinite(det.anomaly_score(X)).all()


def test_column_constant_up_to_float_rounding_does_not_send_scores_to_infinity(cardio):
    """Regression: cardio's f05 is -0.0614 in every one of the first 1000 normal rows, with a
    float std of 1.4e-17, not 0. Divided by that, the one row with f05 = 19.9 scored infinity."""
    X = cardio.drop(columns=["label"])
    train = X[cardio["label"] == "normal"].iloc[:1000]
    assert 0 < train["f05"].std(ddof=0) < 1e-15
    det = VAEAnomalyDetector(epochs=3, random_state=0).fit(train)
    assert det.preprocessor_.columns[5]["std"] == 1.0
    assert np.isfinite(det.anomaly_score(X)).all()


def test_missing_values_are_imputed_with_indicator():
    X, _ = load_breast_cancer(return_X_y=True, as_frame=True)
    X = X.iloc[:300].copy()
    X.iloc[::7, 0] = np.nan
    det = VAEAnomalyDetector(epochs=3, random_state=0, alpha=0.1).fit(X)
    col = det.preprocessor_.columns[0]
    assert col["indicator"] is True
    assert np.isfinite(det.anomaly_score(X)).all()


def test_missing_value_in_column_without_missing_in_training_is_logged(cancer_model, cancer, caplog):
    X = cancer[2].iloc[:5].copy()
    X.iloc[1, 4] = np.nan
    with caplog.at_level(logging.WARNING, logger="anomaly_vae.preprocessing"):
        s = cancer_model.anomaly_score(X)
    assert np.isfinite(s).all()
    assert "1 missing value(s) imputed" in caplog.text


def test_string_columns_one_hot_and_unseen_category_is_scored(cardio):
    rng = np.random.default_rng(0)
    df = cardio[cardio.label == "normal"].drop(columns="label").copy()
    df["shift"] = rng.choice(["day", "night", "weekend"], size=len(df))
    det = VAEAnomalyDetector(epochs=5, random_state=0).fit(df)
    cats = [c for c in det.preprocessor_.columns if c["type"] == "categorical"]
    assert cats[0]["categories"] == ["day", "night", "weekend", "<other>"]
    probe = df.iloc[:4].copy()
    probe["shift"] = ["day", "holiday", None, "night"]
    s = det.anomaly_score(probe)
    assert np.isfinite(s).all()
    fs = det.feature_scores(probe)
    assert fs.loc[probe.index[1], "shift"] > fs.loc[probe.index[0], "shift"]  # unseen costs more


def test_images_any_layout_and_channels_are_converted(fashion_sample):
    images, labels = fashion_sample
    X = images[labels == 1]  # trousers
    det = VAEAnomalyDetector(epochs=2, random_state=0, alpha=0.2).fit(X)
    assert det.model_.kind == "conv" and det.input_kind_ == "image"
    s = det.anomaly_score(X[:5])
    assert np.allclose(det.anomaly_score(X[:5, :, :, None]), s)
    assert np.allclose(det.anomaly_score(X[:5, None, :, :]), s)
    assert np.allclose(det.anomaly_score(X[:5].astype(np.float32) / 255.0), s, rtol=1e-5)
    rgb = np.repeat(X[:5, :, :, None], 3, axis=3)
    assert np.allclose(det.anomaly_score(rgb), s, rtol=1e-4)
    assert det.feature_scores(X[:5]).shape == (5, 1, 28, 28)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((2, 20, 20), dtype=np.uint8), "must be 28x28 pixels, got 20x20"),
    (np.full((2, 28, 28), 2.0), "must lie in \\[0, 1\\]"),
    (np.full((2, 28, 28), np.nan), "must be finite"),
    (np.full((2, 28, 28), 1e308), "must lie in \\[0, 1\\].*found 1e\\+308"),  # finite: not "NaN or infinity"
])
def test_bad_images_are_clear_errors(fashion_sample, bad, match):
    images, labels = fashion_sample
    det = VAEAnomalyDetector(epochs=1, random_state=0, alpha=0.2).fit(images[labels == 1])
    with pytest.raises(InputError, match=match):
        det.anomaly_score(bad)


def test_too_few_calibration_samples_for_a_new_alpha_gives_clear_error_at_predict(cancer):
    det = VAEAnomalyDetector(epochs=2, random_state=0, alpha=0.05, calibration_size=0.2).fit(cancer[0])
    assert det.fit_info_["n_calibration"] == 50
    det.set_alpha(0.001)  # a threshold re-chosen later, from the 50 stored scores
    assert det.threshold_ == np.inf
    assert np.isfinite(det.anomaly_score(cancer[1])).all()  # scores still work
    with pytest.raises(CalibrationError, match="needs at least 999 calibration samples, got 50"):
        det.predict(cancer[1])
    det.set_alpha(0.05)
    assert det.predict(cancer[1]).shape == (len(cancer[1]),)


def test_small_data_default_fit_then_predict_works(cancer, cardio):
    """Issue 10.3: 250 rows with the defaults left 50 calibration rows and predict refused alpha=0.01;
    the calibration split is now sized for alpha."""
    det = VAEAnomalyDetector(epochs=2, random_state=0).fit(cancer[0])
    assert det.fit_info_["n_calibration"] == 99 and det.fit_info_["n_train"] + det.fit_info_["n_validation"] == 151
    assert np.isfinite(det.threshold_)
    assert det.predict(cancer[1]).shape == (len(cancer[1]),)
    big = VAEAnomalyDetector(epochs=1, random_state=0).fit(cardio.drop(columns="label").iloc[:600])
    assert big.fit_info_["n_calibration"] == 120  # enough data: 20%, as before


def test_too_little_data_for_alpha_fails_at_fit_with_the_numbers(cancer):
    """Issue 10.3: where the data cannot support alpha, fit says so (not predict, later)."""
    with pytest.raises(CalibrationError, match=r"alpha=0.01 needs at least 99 held-out calibration samples, and 150 "
                                               r"samples leave at most 75.*at least 198 samples.*alpha >= 0.01316"):
        VAEAnomalyDetector(epochs=2, random_state=0).fit(cancer[0].iloc[:150])
    det = VAEAnomalyDetector(epochs=2, random_state=0, alpha=0.05).fit(cancer[0].iloc[:150])  # the choices work
    assert np.isfinite(det.threshold_)
    det = VAEAnomalyDetector(epochs=2, random_state=0, contamination=0.05).fit(cancer[0].iloc[:150])
    assert det.predict(cancer[1]).shape == (len(cancer[1]),)


@pytest.mark.parametrize("value", [1e300, -1e300, 1e39, 1e19, np.finfo(np.float64).max])
def test_extreme_finite_value_is_flagged_not_nan(cancer_model, cancer, value, caplog):
    """Issue 10.2: a finite value that overflows float32 once standardised gave a NaN score and
    predict said "normal"; it is now scored as far out (finite, above the threshold) and flagged."""
    X = cancer[1].iloc[:3].copy()
    X.iloc[1, 0] = value
    with caplog.at_level(logging.WARNING):
        scores = cancer_model.anomaly_score(X)
    assert np.isfinite(scores).all() and scores[1] > cancer_model.threshold_
    assert "mean radius" in caplog.text and "standard deviations" in caplog.text
    assert list(cancer_model.predict(X))[1] == -1
    assert cancer_model.p_values(X)[1] == 1 / (len(cancer_model.calibration_scores_) + 1)
    rows, errors = cancer_model.anomaly_score_rows(X)
    assert np.array_equal(rows, scores) and errors == [None, None, None]
    assert np.isfinite(cancer_model.feature_scores(X).to_numpy()).all()
    assert np.isfinite(cancer_model.anomaly_score(X, score="iwae")).all()


def test_training_values_too_large_to_standardise_fail_at_fit(cancer):
    X = cancer[0].copy()
    X.iloc[0, 2] = 1e200  # its square overflows float64
    with pytest.raises(InputError, match=r"column 'mean perimeter': values up to 1e\+200 are too large"):
        VAEAnomalyDetector(epochs=1, random_state=0).fit(X)


def test_scores_are_capped_finite_even_if_the_network_overflows(cancer_model, cancer):
    """Issue 10.2, the last line of defence: whatever the network computes, no NaN or infinity
    leaves the core (a non-finite score is reported as SCORE_MAX and flagged)."""
    from anomaly_vae.scoring import SCORE_MAX

    det = copy.deepcopy(cancer_model)
    with torch.no_grad():
        det.model_.encoder[0].bias[0] = float("nan")
    scores = det.anomaly_score(cancer[1].iloc[:5])
    assert np.all(scores == SCORE_MAX)
    assert np.all(det.predict(cancer[1].iloc[:5]) == -1)


def test_set_alpha_moves_threshold_without_retraining(cancer_model):
    before = {k: v.clone() for k, v in cancer_model.model_.state_dict().items()}
    t05 = cancer_model.threshold_
    cancer_model.set_alpha(0.2)
    assert cancer_model.threshold_ < t05
    cancer_model.set_alpha(0.05)
    assert cancer_model.threshold_ == t05
    assert all(torch.equal(before[k], v) for k, v in cancer_model.model_.state_dict().items())


def test_calibrate_on_new_normal_data(cancer, cancer_model):
    det = VAEAnomalyDetector(alpha=0.05, **FAST).fit(cancer[0])
    det.calibrate(cancer[1], alpha=0.1)
    assert len(det.calibration_scores_) == len(cancer[1]) and det.alpha_ == 0.1
    assert np.mean(det.predict(cancer[1]) == -1) <= 0.1


def test_contamination_and_best_f1_thresholds(cancer):
    det = VAEAnomalyDetector(contamination=0.1, **FAST).fit(cancer[0])
    assert det.threshold_method_ == "contamination"
    assert np.mean(det.predict(cancer[0]) == -1) == pytest.approx(0.1, abs=0.01)
    X = pd.concat([cancer[1], cancer[2]])
    y = np.r_[np.zeros(len(cancer[1])), np.ones(len(cancer[2]))]
    det.set_threshold_best_f1(X, y)
    assert det.threshold_method_ == "best_f1" and det.best_f1_ > 0.8


def test_realized_false_alarm_rate_within_beta_band(cardio):
    normal = cardio[cardio.label == "normal"].drop(columns="label")
    train, fresh = normal.iloc[:900], normal.iloc[900:]
    det = VAEAnomalyDetector(alpha=0.05, **FAST).fit(train)
    n = len(det.calibration_scores_)
    k = int(np.ceil((n + 1) * 0.95))
    # conditional on the calibration set, the coverage is Beta(n+1-k, k); then binomial on fresh data
    lo = stats.beta(n + 1 - k, k).ppf(0.0005) - 3.3 * np.sqrt(0.05 * 0.95 / len(fresh))
    hi = stats.beta(n + 1 - k, k).ppf(0.9995) + 3.3 * np.sqrt(0.05 * 0.95 / len(fresh))
    rate = np.mean(det.predict(fresh) == -1)
    assert lo <= rate <= hi, (lo, rate, hi)


def test_fit_is_reproducible_and_leaves_global_rngs_alone(cancer):
    torch.manual_seed(123)
    np.random.seed(123)
    t_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    a = VAEAnomalyDetector(epochs=3, random_state=7).fit(cancer[0])
    b = VAEAnomalyDetector(epochs=3, random_state=7).fit(cancer[0])
    assert torch.equal(torch.get_rng_state(), t_state)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert np.array_equal(a.anomaly_score(cancer[1]), b.anomaly_score(cancer[1]))
    assert a.history_ == b.history_


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


def test_works_inside_a_pipeline(cancer):
    pipe = make_pipeline(FunctionTransformer(np.log1p, feature_names_out="one-to-one"),
                         VAEAnomalyDetector(alpha=0.05, **FAST))
    pipe.fit(cancer[0])
    pred = pipe.predict(cancer[2])
    assert set(np.unique(pred)) <= {-1, 1} and np.mean(pred == -1) > 0.5


def test_n_threads_is_restored(cancer):
    before = torch.get_num_threads()
    VAEAnomalyDetector(epochs=1, random_state=0, n_threads=1).fit(cancer[0])
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("param,value,match", [
    ("latent_dim", 0, "latent_dim must be >= 1, got 0"),
    ("score_kind", "likelihood", "score_kind must be one of"),
    ("model", "rnn", "model must be 'auto', 'dense' or 'conv'"),
    ("alpha", 1.5, "alpha must be a float in"),
    ("calibration_size", 0.0, "calibration_size must be in"),
    ("epochs", 0, "epochs must be >= 1"),
    ("objective", "gan", "objective must be"),
])
def test_bad_parameters_are_named(cancer, param, value, match):
    with pytest.raises(ValueError, match=match):
        VAEAnomalyDetector(**{param: value}).fit(cancer[0])


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
