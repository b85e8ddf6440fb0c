"""The estimator end to end on real data: breast cancer (scikit-learn), cardio and Fashion-MNIST (data/)."""

import copy
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from anomaly_vae import CalibrationError, InputError, NotFittedError, VAEAnomalyDetector, load_detector

FAST = dict(epochs=30, random_state=0)


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


def test_scores_match_a_hand_computation(cancer):
    """elbo, reconstruction and iwae recomputed here from the model's parts and the stored noise
    (one network under N(0, I); a pair's score is the sum of its networks': test_a_pair_is_...)."""
    from anomaly_vae.objectives import (
        kl_standard_normal,
        log_normal,
        log_standard_normal,
    )

    cancer_model = VAEAnomalyDetector(alpha=0.05, pair=False, **FAST).fit(cancer[0])

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


def test_strict_set_alpha_raises_and_changes_nothing(cancer_model, caplog):
    before = (cancer_model.threshold_, cancer_model.alpha_, cancer_model.calibration_error_)
    with caplog.at_level(logging.WARNING), pytest.raises(CalibrationError, match="needs at least 99999 calibration"):
        cancer_model.set_alpha(1e-5, strict=True)
    assert (cancer_model.threshold_, cancer_model.alpha_, cancer_model.calibration_error_) == before
    assert caplog.records == []  # the error says it; no warning first
    assert cancer_model.set_alpha(before[1], strict=True).threshold_ == before[0]


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


def test_a_bad_contamination_is_refused_before_training(cancer, tmp_path):
    """It was refused after the whole fit (and after a checkpoint had been written)."""
    with pytest.raises(ValueError, match=r"contamination must be a float in \(0, 0.5\]"):
        VAEAnomalyDetector(contamination=0.9, checkpoint_dir=str(tmp_path / "ck"), **FAST).fit(cancer[0])
    assert not (tmp_path / "ck").exists()


def test_a_refused_calibration_changes_nothing(cancer):
    """Hostile review: alpha=1.5 was refused after the calibration scores had been replaced, so
    predict (old threshold) and p_values (new scores) disagreed."""
    det = VAEAnomalyDetector(alpha=0.05, **FAST).fit(cancer[0])
    scores, threshold = det.calibration_scores_, det.threshold_
    for X, alpha in ((cancer[1].iloc[:30], 1.5), (cancer[1].iloc[:30].assign(**{"mean radius": np.inf}), 0.1)):
        with pytest.raises(ValueError):
            det.calibrate(X, alpha=alpha)
        assert det.calibration_scores_ is scores and det.threshold_ == threshold


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



# -- pair=True: two networks from one run, one score ---------------------------------------------
@pytest.fixture(scope="module")
def pair_model(cancer):
    return VAEAnomalyDetector(pair=True, pair_hidden_sizes=None, epochs=5, alpha=0.05, random_state=0).fit(cancer[0])


def test_a_pair_is_the_plain_fit_plus_a_long_network_and_scores_their_sum(cancer, pair_model):
    from anomaly_vae.detector import PAIR_CODES
    from anomaly_vae.models import build_model
    from anomaly_vae.scoring import score_samples

    plain = VAEAnomalyDetector(pair=False, epochs=5, alpha=0.05, random_state=0).fit(cancer[0])
    first, second = pair_model.model_.members
    sd = first.state_dict()
    # the first network is the plain fit's, bit for bit (a snapshot of the same run)
    assert all(torch.equal(v, sd[k]) for k, v in plain.model_.state_dict().items())
    assert second.aggregate_prior == min(PAIR_CODES, pair_model.fit_info_["n_train"])  # training rows only
    assert pair_model.fit_info_["epochs_run"] > 5  # the long network trained on
    X = pd.concat([cancer[1], cancer[2]])
    x = torch.from_numpy(pair_model.preprocess(X))
    alone = build_model({k: v for k, v in first.config().items() if k != "pair"})
    alone.load_state_dict({k: v for k, v in sd.items() if not k.startswith("second.")})
    for score in ("elbo", "reconstruction", "iwae"):
        parts = score_samples(alone, x, score, pair_model.noise_) + score_samples(second, x, score, pair_model.noise_)
        assert np.allclose(pair_model.anomaly_score(X, score=score), parts, rtol=1e-6)
    assert np.allclose(pair_model.feature_scores(X).sum(axis=1), pair_model.anomaly_score(X, score="reconstruction"),
                       rtol=1e-5)
    y = np.r_[np.zeros(len(cancer[1])), np.ones(len(cancer[2]))]
    assert roc_auc_score(y, pair_model.anomaly_score(X)) > 0.9
    # one calibration of the summed score: the threshold is a rank of the calibration rows' sums
    assert pair_model.threshold_ in pair_model.calibration_scores_


def test_a_pair_is_deterministic_and_independent_of_the_batch(cancer, pair_model):
    again = VAEAnomalyDetector(pair=True, pair_hidden_sizes=None, epochs=5, alpha=0.05, random_state=0).fit(cancer[0])
    X = pd.concat([cancer[1], cancer[2]])
    s = pair_model.anomaly_score(X)
    assert np.array_equal(again.anomaly_score(X), s)
    assert np.array_equal(np.concatenate([pair_model.anomaly_score(X.iloc[i:i + 7]) for i in range(0, len(X), 7)]), s)


def test_a_pair_with_its_own_layers_is_the_plain_fit_plus_a_long_network_of_those_layers(cancer):
    """pair_hidden_sizes: the first network is the plain fit's, bit for bit (its own run); the long
    one has the layers asked for; the score is still the sum, deterministic."""
    plain = VAEAnomalyDetector(pair=False, epochs=5, alpha=0.05, random_state=0).fit(cancer[0])
    det = VAEAnomalyDetector(pair=True, pair_hidden_sizes=(48, 24), epochs=5, alpha=0.05, random_state=0).fit(cancer[0])
    first, second = det.model_.members
    assert first.config()["hidden"] == plain.model_.config()["hidden"] == [64, 32]
    assert second.config()["hidden"] == [48, 24] and second.aggregate_prior > 0
    sd = first.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in plain.model_.state_dict().items())
    X = pd.concat([cancer[1], cancer[2]])
    y = np.r_[np.zeros(len(cancer[1])), np.ones(len(cancer[2]))]
    assert roc_auc_score(y, det.anomaly_score(X)) > 0.9
    again = VAEAnomalyDetector(pair=True, pair_hidden_sizes=[48, 24], epochs=5, alpha=0.05, random_state=0).fit(cancer[0])
    assert np.array_equal(again.anomaly_score(X), det.anomaly_score(X))


# -- the defaults since session 12: "auto" gives a table the floor and a pair ----------------------
def test_a_table_fitted_with_the_defaults_gets_the_floor_and_a_pair_with_a_wide_long_network(cancer, tmp_path):
    from anomaly_vae.detector import PAIR_HIDDEN_SIZES, TABLE_MARGINAL_FLOOR

    det = VAEAnomalyDetector(epochs=5, alpha=0.05, random_state=0).fit(cancer[0])
    params = det.get_params()
    assert params["pair"] == params["marginal_floor"] == params["pair_hidden_sizes"] == "auto"  # left as given
    assert det.pair_ is True and det.marginal_floor_ == TABLE_MARGINAL_FLOOR == 0.01
    assert det.pair_hidden_sizes_ == PAIR_HIDDEN_SIZES == (256, 128)
    first, second = det.model_.members
    assert first.config()["hidden"] == [64, 32] and second.config()["hidden"] == [256, 128]
    assert det.model_.marginal_floor == second.marginal_floor == 0.01
    # the first network's run is reported beside the long one's
    assert 1 <= det.fit_info_["epochs_run_first"] <= 5 and det.fit_info_["epochs_run"] == len(det.history_)
    explicit = VAEAnomalyDetector(pair=True, marginal_floor=0.01, pair_hidden_sizes=(256, 128), epochs=5, alpha=0.05,
                                  random_state=0).fit(cancer[0])
    X = pd.concat([cancer[1], cancer[2]])
    assert np.array_equal(det.anomaly_score(X), explicit.anomaly_score(X))
    y = np.r_[np.zeros(len(cancer[1])), np.ones(len(cancer[2]))]
    assert roc_auc_score(y, det.anomaly_score(X)) > 0.9
    # the card holds what "auto" became, so that the model refits the same wherever the defaults go
    det.save(tmp_path / "m")
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert card["format_version"] == 5
    assert (card["params"]["pair"], card["params"]["marginal_floor"], card["params"]["pair_hidden_sizes"]) == (
        True, 0.01, [256, 128])
    loaded = load_detector(tmp_path / "m")
    assert (loaded.pair, loaded.marginal_floor, loaded.pair_hidden_sizes) == (True, 0.01, (256, 128))
    assert np.array_equal(loaded.anomaly_score(X), det.anomaly_score(X))


def test_auto_gives_images_and_settings_a_pair_cannot_train_with_one_network(cancer, fashion_sample, tmp_path):
    images = VAEAnomalyDetector(epochs=1, alpha=0.2, random_state=0).fit(fashion_sample[0][:60])
    assert (images.pair_, images.marginal_floor_, images.pair_hidden_sizes_) == (False, 0.0, None)
    assert images.model_.kind == "conv"
    with pytest.raises(ValueError, match=r"pair_hidden_sizes=None \(the one-run pair.*cannot be checkpointed"):
        VAEAnomalyDetector(epochs=2, checkpoint_dir=str(tmp_path / "ck"), pair_hidden_sizes=None).fit(cancer[0])
    for kw in ({"lr_schedule": "cosine"},):
        det = VAEAnomalyDetector(epochs=2, alpha=0.05, random_state=0, **kw).fit(cancer[0])
        assert not det.pair_ and "pair" not in det.model_.config() and det.marginal_floor_ == 0.01, kw
        assert "epochs_run_first" not in det.fit_info_
    # a long network asked for where auto gives none: said, not dropped
    with pytest.raises(ValueError, match=r"pair_hidden_sizes=\(32,\) is the long network of a pair, and this fit has "
                                         "none: pair='auto' pairs only tables"):
        VAEAnomalyDetector(epochs=1, alpha=0.2, pair_hidden_sizes=(32,)).fit(fashion_sample[0][:60])


def test_the_long_run_of_a_pair_scales_with_epochs(cancer):
    """PAIR_UPDATES at the default 100 epochs; fewer epochs ask for a quicker fit of both networks."""
    from anomaly_vae.detector import PAIR_UPDATES

    for epochs in (2, 6):
        det = VAEAnomalyDetector(epochs=epochs, alpha=0.05, random_state=0).fit(cancer[0])
        per_epoch = -(-det.fit_info_["n_train"] // 128)
        assert det.fit_info_["epochs_run"] <= -(-PAIR_UPDATES * epochs // (100 * per_epoch)), epochs
        assert det.fit_info_["epochs_run_first"] <= epochs


@pytest.mark.parametrize("kw,match", [
    ({"pair": False, "pair_hidden_sizes": (64, 32)},
     "pair_hidden_sizes is the long network of a pair: it needs pair=True or 'auto'"),
    ({"pair": True, "pair_hidden_sizes": ()}, "pair_hidden_sizes must be 'auto', None or a list of 1 to 16 layer widths"),
    ({"pair_hidden_sizes": (0,)}, "pair_hidden_sizes must be 'auto', None or a list of 1 to 16"),
    ({"pair": True, "pair_hidden_sizes": "256,128"}, "pair_hidden_sizes must be 'auto', None or a list of 1 to 16"),
    ({"pair": True, "pair_hidden_sizes": "Auto"}, "pair_hidden_sizes must be 'auto', None or a list of 1 to 16"),
    ({"pair": True, "pair_hidden_sizes": (64.0,)}, "pair_hidden_sizes must be 'auto', None or a list of 1 to 16"),
    ({"pair": True, "pair_hidden_sizes": {3, 64}}, "pair_hidden_sizes must be 'auto', None or a list"),  # no order
    # the plain widths too (they were unchecked: a fit wrote a model whose card was refused on loading)
    ({"hidden_sizes": (0,)}, "hidden_sizes must be None or a list of 0 to 16 layer widths, integers in 1..4096"),
    ({"hidden_sizes": [99999]}, "hidden_sizes must be None or a list of 0 to 16"),
    ({"conv_channels": [8, True]}, "conv_channels must be None or a list of 0 to 16"),
])
def test_pair_hidden_sizes_that_cannot_work_are_refused_before_any_work(cancer, kw, match):
    with pytest.raises(ValueError, match=match):
        VAEAnomalyDetector(epochs=1, **kw).fit(cancer[0])


@pytest.mark.parametrize("kw,match", [
    ({"pair": "yes"}, "pair must be True, False or 'auto'"),
    ({"pair": 1}, "pair must be True, False or 'auto'"),
    ({"pair": None}, "pair must be True, False or 'auto'"),
    ({"marginal_floor": "0.01"}, "marginal_floor must be 'auto' or a number in"),
    ({"pair": True, "model": "conv"}, "pair=True applies to dense networks"),
    ({"pair": True, "likelihood": "bernoulli"}, "pair=True needs a Gaussian likelihood"),
    ({"pair": True, "lr_schedule": "cosine"}, "pair=True needs lr_schedule='constant'"),
    ({"pair": True, "checkpoint_dir": "ck", "pair_hidden_sizes": None}, "pair_hidden_sizes=None .* cannot be checkpointed"),
])
def test_pair_settings_that_cannot_work_are_refused_before_any_work(cancer, kw, match):
    with pytest.raises(ValueError, match=match):
        VAEAnomalyDetector(epochs=1, **kw).fit(cancer[0])


def test_a_bernoulli_likelihood_on_a_table_is_refused_and_on_images_fits(cancer, fashion_sample):
    """Standardised columns are not in [0, 1]: a table fitted with the Bernoulli likelihood scored
    +-1e10 nats after a long run. Images (pixels in [0, 1]) keep it, dense or conv."""
    from anomaly_vae import InputError

    for X in (cancer[0], cancer[0].to_numpy()):
        with pytest.raises(InputError, match="likelihood='bernoulli' is for images"):
            VAEAnomalyDetector(epochs=1, likelihood="bernoulli").fit(X)
    for model in ("dense", "conv"):
        det = VAEAnomalyDetector(epochs=1, likelihood="bernoulli", model=model, alpha=0.2, random_state=0)
        scores = det.fit(fashion_sample[0][:60]).anomaly_score(fashion_sample[0][60:70])
        assert np.isfinite(scores).all()
        with pytest.raises(InputError, match="is for images"):  # refused before the fitted model is touched
            det.set_params(model="auto").fit(cancer[0])
        assert np.array_equal(det.anomaly_score(fashion_sample[0][60:70]), scores)


def test_overlapping_cuda_fits_share_the_deterministic_setting_and_restore_the_user_s(monkeypatch):
    """The cuDNN flags are process-wide: a fit that ends while another runs must not switch it back
    to non-deterministic algorithms, and the last to end restores what the user had (hostile review:
    enter A, enter B, leave A left B non-deterministic and the user's benchmark=True lost). Only
    the flags are touched, so this runs without a GPU."""
    import torch

    from anomaly_vae.detector import _deterministic_cudnn

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    a, b = _deterministic_cudnn(torch.device("cuda")), _deterministic_cudnn(torch.device("cuda"))
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    with pytest.raises(RuntimeError):
        with _deterministic_cudnn(torch.device("cuda")):
            raise RuntimeError("a fit that fails")
    assert torch.backends.cudnn.deterministic  # B still runs
    b.__exit__(None, None, None)
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
    with _deterministic_cudnn(torch.device("cpu")):
        assert torch.backends.cudnn.benchmark  # a CPU fit leaves them alone


def test_a_refused_refit_leaves_the_fitted_detector_as_it_was(cancer, fashion_sample):
    """Fewer than 10 rows, a table for a fitted image model, an infinite cell, too few rows for alpha:
    each used to leave a half-reset detector (the input kind, schema or column names of the refused
    data beside the old network)."""
    from anomaly_vae import CalibrationError, InputError

    images = fashion_sample[0]
    det = VAEAnomalyDetector(epochs=1, alpha=0.2, random_state=0).fit(images[:60])
    scores, state = det.anomaly_score(images[60:70]), dict(det.__dict__)
    bad_table = cancer[0].iloc[:40].copy()
    bad_table.iloc[3, 1] = np.inf
    for X, error in ((cancer[0].iloc[:5], InputError), (images[:5], InputError), (bad_table, InputError),
                     (cancer[0].iloc[:30], CalibrationError)):
        with pytest.raises(error):
            det.set_params(alpha=0.01 if error is CalibrationError else 0.2).fit(X)
        assert det.__dict__.keys() == state.keys() and all(det.__dict__[k] is v for k, v in state.items()
                                                            if k not in ("alpha",))
        assert det.input_kind_ == "image" and not hasattr(det, "feature_names_in_")
        assert np.array_equal(det.anomaly_score(images[60:70]), scores)


def test_an_interrupted_fit_leaves_a_random_state_given_to_it_where_it_was(cancer, monkeypatch):
    """So that the fit started again draws the seed the first one drew, and ends as it would have."""
    import anomaly_vae.detector as detector

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C in training: after the seed was drawn

    rs = np.random.RandomState(7)
    with monkeypatch.context() as m:
        m.setattr(detector, "train", interrupted)
        with pytest.raises(KeyboardInterrupt):
            VAEAnomalyDetector(epochs=1, alpha=0.2, random_state=rs).fit(cancer[0])
    assert VAEAnomalyDetector(epochs=1, alpha=0.2, random_state=rs).fit(cancer[0]).fit_info_["seed"] == \
        VAEAnomalyDetector(epochs=1, alpha=0.2, random_state=np.random.RandomState(7)).fit(cancer[0]).fit_info_["seed"]


def test_a_pair_on_images_is_refused(fashion_sample):
    with pytest.raises(ValueError, match="pair=True applies to tables"):
        VAEAnomalyDetector(pair=True, epochs=1, alpha=0.2).fit(fashion_sample[0][:60])


def test_an_infinite_cell_in_an_array_names_its_row_and_column(cancer_model, cancer):
    """Fitted on an array, given an array (or a DataFrame): the same InputError as for a model fitted
    on a DataFrame (scikit-learn's own check said only 'Input X contains infinity'); ``anomaly_score_rows``
    keeps going and reports the row."""
    X = cancer[1].to_numpy()[:6].copy()
    X[4, 2] = np.inf
    det = VAEAnomalyDetector(epochs=2, random_state=0, alpha=0.05).fit(cancer[0].to_numpy())
    for given in (X, pd.DataFrame(X)):
        with pytest.raises(InputError, match=r"column '.*', row 4: value inf is not finite"):
            det.anomaly_score(given)
        scores, errors = det.anomaly_score_rows(given)
        assert errors[4] is not None and "not finite" in errors[4]
        assert all(e is None for i, e in enumerate(errors) if i != 4)
        assert np.isfinite(scores[[0, 1, 2, 3, 5]]).all()
    bad = cancer[0].to_numpy().copy()
    bad[7, 2] = -np.inf
    with pytest.raises(InputError, match=r"row 7: value -inf is not finite"):
        VAEAnomalyDetector(epochs=1).fit(bad)
