"""The input rulebook (``anomaly_vae.preprocessing``): scaling, missing values, categories, extreme
values, image layouts and pixel types, and the extra-column rule on every face."""

import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from anomaly_vae import InputError, VAEAnomalyDetector
from anomaly_vae.io.tables import EXACT_FLOATS

FAST = dict(epochs=30, random_state=0)


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


def test_numbers_given_as_text_read_as_python_reads_them():
    """A numeric column that arrives as text (one bad cell, or a JSON string): pandas before 3.1
    (``make test-pandas``) parsed about one in three of these a unit in the last place off."""
    from anomaly_vae.preprocessing.tables import TablePreprocessor

    x = np.random.default_rng(0).standard_normal(4000)
    errors: list = [None] * 4001
    v = TablePreprocessor._numeric_rows(pd.Series([repr(f) for f in x.tolist()] + ["abc"], dtype=object), "a", errors)
    np.testing.assert_array_equal(v[:4000], x)
    assert errors[:4000] == [None] * 4000 and errors[4000] == ("a", "expected a number, got 'abc'")


def test_text_beyond_float64_is_not_finite_whichever_pandas(cancer_model, cancer):
    """'1e999' and a 400-digit integer as text were "expected a number" on pandas 3.1 and "not finite"
    on 2.2 (so a Spark job and the command line disagreed on one row); both are now "not finite",
    and text that is no number stays "expected a number"."""
    X = cancer[2].iloc[:6].astype(object)
    X.iloc[:, 0] = ["1e999", "-" + "9" * 400, "abc", "inf", "1_000", "14.5"]
    scores, errors = cancer_model.anomaly_score_rows(X)
    for i in (0, 1):
        assert "column 'mean radius'" in errors[i] and "is not finite" in errors[i] and "beyond float64" in errors[i]
    assert errors[2].endswith("expected a number, got 'abc'")
    assert "is not finite" in errors[3]
    assert errors[4].endswith("expected a number, got '1_000'")  # Python's float() would take it; pandas does not
    assert errors[5] is None and np.isfinite(scores[5])


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


def test_a_prepared_input_preprocess_cannot_have_made_is_refused_by_sample_and_column(cardio, fashion_sample):
    """score_prepared (and the ONNX scorer) took any float32 array of the right shape: NaN scored as
    the 1e30-nat cap, two categories at once as a finite, meaningless number."""
    df = cardio.drop(columns="label").iloc[:300].copy()
    df["shift"] = np.random.default_rng(0).choice(["day", "night"], size=len(df))
    df.iloc[5, 2] = np.nan  # f02 gets a missing indicator (prepared feature 3)
    det = VAEAnomalyDetector(epochs=1, random_state=0, alpha=0.2).fit(df)
    x = det.preprocess(df.iloc[:4])
    assert np.array_equal(det.score_prepared(x), det.anomaly_score(df.iloc[:4]))
    shift = det.preprocessor_.categorical_groups()[0][0]
    cases = [((1, 0), np.nan, "not_finite", "sample 1, column 'f00' \\(prepared feature 0\\): nan is not finite"),
             ((2, 1), -np.inf, "not_finite", "sample 2, column 'f01' .*-inf is not finite"),
             ((0, 4), 3e6, "invalid_value", "sample 0, column 'f03' .*beyond 1e\\+06"),
             ((3, 3), 0.5, "invalid_value", "sample 3, column 'f02' .*missing indicator is 0 or 1, got 0.5"),
             ((1, shift + 2), 1.0, "invalid_value", "sample 1, column 'shift' .*one-hot group is one 1 and zeros"),
             ((2, slice(shift, shift + 3)), 0.0, "invalid_value", "sample 2, column 'shift' .*got \\[0.0, 0.0, 0.0\\]")]
    for (i, j), value, reason, match in cases:
        bad = x.copy()
        bad[i, j] = value
        with pytest.raises(InputError, match=match) as err:
            det.score_prepared(bad)
        assert err.value.reason == reason
    images, labels = fashion_sample
    img = VAEAnomalyDetector(epochs=1, random_state=0, alpha=0.2).fit(images[labels == 1][:60])
    p = img.preprocess(images[:3])
    for value, match in ((np.nan, "image 2: the prepared pixel at channel 0, row 1, column 2 is nan"),
                         (1.5, "image 2: the prepared pixel at channel 0, row 1, column 2 is 1.5; prepared pixels are in")):
        bad = p.copy()
        bad[2, 0, 1, 2] = value
        with pytest.raises(InputError, match=match):
            img.score_prepared(bad)
    # no rows: no scores (a numpy reshape error for images, a torch one for tables before)
    assert img.score_prepared(p[:0]).shape == (0,) and det.score_prepared(x[:0]).shape == (0,)


def test_a_long_one_hot_group_is_summed_up_in_the_message(cardio):
    df = cardio.drop(columns="label").iloc[:400].copy()
    df["host"] = [f"h{i % 40}" for i in range(len(df))]
    det = VAEAnomalyDetector(epochs=1, random_state=0, alpha=0.2).fit(df)
    x = det.preprocess(df.iloc[:2])
    start, width = det.preprocessor_.categorical_groups()[0]
    x[1, start : start + width] = 1.0
    with pytest.raises(InputError, match=f"column 'host' .*got {width} non-zero value\\(s\\) of {width} "
                                         "\\(at \\[0, 1, 2, 3, 4, ...\\]\\)"):
        det.score_prepared(x)


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


# -- one rulebook for every face ----------------------------------------------------------------
def test_extra_columns_are_ignored_on_every_face(cardio, tmp_path):
    """The extra-column rule, decided once: ignored by Python, by a CSV job and by a JSON object
    alike (ids, labels and timestamps travel with real rows), with the same scores as without them."""
    from anomaly_vae.batch import score_file
    from anomaly_vae.instances import instances_to_input

    X = cardio.drop(columns="label").iloc[:300]
    det = VAEAnomalyDetector(epochs=3, random_state=0).fit(X)
    rows = X.iloc[:5]
    extra = rows.assign(ticket="A-17", received_at="2026-11-21T10:00:00")
    expected = det.anomaly_score(rows)
    assert np.array_equal(det.anomaly_score(extra), expected)  # Python
    records = extra.to_dict(orient="records")
    assert np.array_equal(det.score_prepared(instances_to_input(det, records)), expected)  # HTTP
    extra.to_csv(tmp_path / "in.csv", index=False)
    summary = score_file(det, tmp_path / "in.csv", tmp_path / "out.csv")  # CLI / batch
    assert summary.errors == 0
    assert np.allclose(pd.read_csv(tmp_path / "out.csv", **EXACT_FLOATS)["score"], expected, rtol=1e-12)


def test_a_missing_column_is_an_error_on_every_face(cardio, tmp_path):
    from anomaly_vae.batch import score_file
    from anomaly_vae.instances import instances_to_input

    X = cardio.drop(columns="label").iloc[:300]
    det = VAEAnomalyDetector(epochs=2, random_state=0).fit(X)
    short = X.iloc[:3].drop(columns=[X.columns[4]])
    for call in (lambda: det.anomaly_score(short),
                 lambda: instances_to_input(det, short.to_dict(orient="records"))):
        with pytest.raises(InputError, match=str(X.columns[4])) as err:
            call()
        assert err.value.reason == "missing_column"
    short.to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(InputError, match=str(X.columns[4])):
        score_file(det, tmp_path / "in.csv", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64])
def test_integer_images_are_0_255_levels_in_python_as_in_json(fashion_sample, dtype):
    """Integer pixels mean 0-255 levels whatever the integer type, as JSON integers do (an int64
    array used to be refused unless it held only 0 and 1, which were then read as [0, 1] floats)."""
    from anomaly_vae.instances import instances_to_input

    images = fashion_sample[0][:300]
    det = VAEAnomalyDetector(epochs=1, random_state=0).fit(images[:200])
    some = images[200:204]
    expected = det.anomaly_score(some)  # uint8
    assert np.array_equal(det.anomaly_score(some.astype(dtype)), expected)
    assert np.array_equal(det.score_prepared(instances_to_input(det, some.astype(int).tolist())), expected)
    assert np.array_equal(det.anomaly_score(some.astype(np.float32) / 255.0), expected)
    bad = some.astype(np.int64)
    bad[1, 3, 5] = 300
    with pytest.raises(InputError, match=r"image 1: integer pixel values must lie in 0..255, found 0..300"):
        det.anomaly_score(bad)
    scores, errors = det.anomaly_score_rows(bad)
    assert errors[0] is None and errors[1] is not None and "0..255" in errors[1]
    assert np.isnan(scores[1]) and np.isfinite(scores[[0, 2, 3]]).all()


def test_integer_images_of_zeros_and_ones_warn_that_they_are_levels(fashion_sample, caplog):
    images = fashion_sample[0][:200]
    det = VAEAnomalyDetector(epochs=1, random_state=0).fit(images)
    with caplog.at_level(logging.WARNING):
        det.anomaly_score((images[:3] > 127).astype(np.int64))
    assert "0-255 levels" in caplog.text
