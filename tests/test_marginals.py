"""``marginals="kde"``: near-normal numeric columns made N(0, 1) through their training KDE's CDF,
with the maps' log-Jacobian in every score (``anomaly_vae.preprocessing.marginals``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_wine

from anomaly_vae import ArtifactError, InputError, VAEAnomalyDetector, load_detector
from anomaly_vae.preprocessing import marginals as mg


@pytest.fixture(scope="module")
def cancer() -> tuple[pd.DataFrame, pd.DataFrame]:
    d = load_breast_cancer(as_frame=True)
    X = d.data.copy()
    X.iloc[3:12, 4] = np.nan  # a column with missing values in training: it gets an indicator
    return X.iloc[:330], X.iloc[330:]


@pytest.fixture(scope="module")
def fitted(cancer):
    train, _ = cancer
    return VAEAnomalyDetector(marginals="kde", epochs=4, random_state=0).fit(train)


def test_a_map_is_monotone_makes_the_training_column_normal_and_its_log_slope_is_its_derivative():
    x = np.sort(load_wine().data[:, 0])  # alcohol: near-normal tails
    m = mg.fit_column_map(x)
    assert m is not None and mg.check_column_map(m) is None and len(m["x"]) <= mg.MAX_KNOTS
    xk, zk, slopes = mg.arrays(m)
    z = mg.apply_map(x, xk, zk, slopes)
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.08, "the training values' margin is about N(0, 1)"
    grid = np.linspace(x[0] - 3 * x.std(), x[-1] + 3 * x.std(), 4001)  # inside, and past both ends
    zg = mg.apply_map(grid, xk, zk, slopes)
    assert np.all(np.diff(zg) > 0), "strictly increasing, past the ends too"
    mid = (grid[1:] + grid[:-1]) / 2
    fd = np.log(np.diff(zg) / np.diff(grid))
    assert np.allclose(mg.log_slope_at(mg.apply_map(mid, xk, zk, slopes), zk, slopes), fd, atol=0.02), \
        "the log slope found from z is the map's own derivative"
    assert np.isnan(mg.apply_map(np.array([np.nan]), xk, zk, slopes)).all()
    exact = mg._kde_normal_scores(x, x, 0.9 * min(x.std(), (np.quantile(x, .75) - np.quantile(x, .25)) / 1.349)
                                  * len(x) ** -0.2)
    assert np.abs(z - exact).max() < 5e-3, "the knots follow the kernel density's own normal scores"


@pytest.mark.parametrize("column", [
    np.exp(np.random.RandomState(0).randn(500) * 1.5),  # lognormal: heavy right tail
    np.r_[np.zeros(400), np.random.RandomState(1).rand(100)],  # a spike at 0 (IQR 0)
    np.full(50, 3.0),  # constant
])
def test_heavy_tailed_spiky_and_constant_columns_stay_standardised(column):
    assert mg.fit_column_map(column) is None


def test_scores_are_densities_of_the_columns_own_units(cancer):
    """The Jacobian puts a score in nats of the columns as they came: the same table in units 1000
    times larger scores log(1000) higher for each mapped column and network (the network sees the
    same numbers: the maps and the standardisation do not change), where without maps it would
    score the same."""
    train, test = cancer
    a = VAEAnomalyDetector(marginals="kde", epochs=3, random_state=0, pair=False).fit(train)
    b = VAEAnomalyDetector(marginals="kde", epochs=3, random_state=0, pair=False).fit(train * 1000.0)
    mapped = sum("map" in c for c in a.preprocessor_.columns)
    assert 0 < mapped < len(train.columns), "some columns mapped, the heavy-tailed ones not"
    shift = b.anomaly_score(test * 1000.0) - a.anomaly_score(test)
    missing = test.isna().any(axis=1).to_numpy()  # a missing value adds no Jacobian term for its column
    assert np.allclose(shift[~missing], mapped * math.log(1000.0), atol=0.05)


def test_a_kde_model_saves_as_format_6_loads_and_scores_alike_on_every_path(fitted, cancer, tmp_path):
    _, test = cancer
    scores = fitted.anomaly_score(test)
    assert np.all(np.isfinite(scores))
    fitted.save(tmp_path / "m")
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert card["format_version"] == 6 and card["params"]["marginals"] == "kde"
    loaded = load_detector(tmp_path / "m")
    assert np.array_equal(loaded.anomaly_score(test), scores)
    assert np.array_equal(fitted.score_prepared(fitted.preprocess(test)), scores)
    rows, errors = fitted.anomaly_score_rows(test)
    assert np.array_equal(rows, scores) and not any(errors)
    per = fitted.feature_scores(test)
    assert np.allclose(per.to_numpy().sum(axis=1), fitted.anomaly_score(test, score="reconstruction"),
                       rtol=1e-5, atol=1e-3)  # float32 sums in another order
    # the calibration is in these units: its scores are the training rows' own, Jacobian included
    train, _ = cancer
    assert np.isin(fitted.calibration_scores_, fitted.anomaly_score(train)).all()


def test_a_model_without_maps_keeps_an_older_format_and_no_marginals_in_its_card(cancer, tmp_path):
    train, _ = cancer
    VAEAnomalyDetector(epochs=2, random_state=0, pair=False).fit(train).save(tmp_path / "m")
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert card["format_version"] < 6 and "marginals" not in card["params"]  # releases before 6 read it


def _tampered(fitted, tmp_path, change):
    from anomaly_vae.artifact import card_sha256

    fitted.save(tmp_path / "t")
    path = tmp_path / "t" / "model.json"
    card = json.loads(path.read_text())
    change(card)
    card["card_sha256"] = card_sha256(card)
    path.write_text(json.dumps(card))
    return tmp_path / "t"


def _first_map(card):
    return next(c for c in card["input"]["preprocessing"]["columns"] if "map" in c)["map"]


@pytest.mark.parametrize("change, said", [
    (lambda c: _first_map(c)["x"].reverse(), "strictly increasing"),
    (lambda c: _first_map(c)["z"].pop(), "of one length"),
    (lambda c: _first_map(c).update(x=[0.0] * (mg.MAX_KNOTS + 1)), "a list of 2..1024 items"),
    (lambda c: c["params"].pop("marginals"), "params.marginals"),
    (lambda c: c.update(format_version=5), "6 or more"),
])
def test_a_tampered_map_is_refused_with_the_field_named(fitted, tmp_path, change, said):
    with pytest.raises(ArtifactError, match="map|marginals|format_version") as err:
        load_detector(_tampered(fitted, tmp_path, change))
    assert said in str(err.value)


def test_marginals_is_checked_and_is_for_tables():
    with pytest.raises(ValueError, match="marginals must be one of"):
        VAEAnomalyDetector(marginals="quantile").fit(np.random.RandomState(0).randn(200, 3))
    images = np.random.RandomState(0).rand(40, 8, 8)
    with pytest.raises(InputError, match="for tables"):
        VAEAnomalyDetector(marginals="kde", epochs=1).fit(images)


@pytest.mark.parametrize("prepared", [False, True])
def test_the_onnx_graph_maps_and_adds_the_jacobian_as_the_python_api(fitted, cancer, tmp_path, prepared):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'anomaly-vae[onnx]'")
    pytest.importorskip("onnx", reason="onnx is not installed: pip install 'anomaly-vae[onnx]'")
    from anomaly_vae.onnx import ONNX_ATOL, ONNX_RTOL

    _, test = cancer
    test = test.copy()
    test.iloc[0, 0], test.iloc[1, 1], test.iloc[2, 4] = 1e9, -1e9, np.nan  # past the knots both ways, missing
    path = fitted.to_onnx(tmp_path / "m.onnx", prepared_input=prepared)
    sess = ort.InferenceSession(str(path))
    feed = fitted.preprocess(test) if prepared else test.to_numpy(np.float64)
    got = sess.run(None, {"input": feed})[0]
    want = fitted.anomaly_score(test)
    assert np.all(np.abs(got - want) <= ONNX_ATOL + ONNX_RTOL * np.abs(want))
