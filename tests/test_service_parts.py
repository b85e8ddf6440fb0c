"""The service's parts without HTTP: JSON instances into model input, the adaptive batcher, the
histogram buckets and the cross-worker drift window."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from anomaly_vae import InputError, VAEAnomalyDetector
from anomaly_vae.instances import instances_to_input, score_input
from service import metrics as service_metrics
from service.batcher import MicroBatcher, Overloaded
from service.metrics import DriftWindow, score_buckets


@pytest.fixture(scope="module")
def mixed(cardio: pd.DataFrame) -> tuple[VAEAnomalyDetector, pd.DataFrame]:
    """A model of cardio's features plus a categorical column, with missing values in training."""
    df = cardio.drop(columns=["label"]).iloc[:, :6].copy()
    rng = np.random.RandomState(0)
    df["site"] = rng.choice(["north", "south", "east"], len(df))
    df.loc[rng.rand(len(df)) < 0.05, "f01"] = np.nan  # f01 gets a missing indicator
    det = VAEAnomalyDetector(epochs=3, random_state=0).fit(df.iloc[:1200])
    return det, df.iloc[1200:1300].reset_index(drop=True)


@pytest.fixture(scope="module")
def numeric(cardio: pd.DataFrame) -> tuple[VAEAnomalyDetector, pd.DataFrame]:
    df = cardio.drop(columns=["label"])
    train = df.iloc[:1200].copy()
    train.loc[np.random.RandomState(1).rand(1200) < 0.05, "f03"] = np.nan
    det = VAEAnomalyDetector(epochs=3, random_state=0).fit(train)
    return det, df.iloc[1200:1400].reset_index(drop=True)


def test_numeric_fast_path_is_bit_identical_to_the_dataframe_path(numeric) -> None:
    det, rows = numeric
    rows = rows.copy()
    rows.loc[[3, 7], "f03"] = np.nan  # missing values: imputed, with the indicator
    rows.loc[5, "f10"] = np.nan  # no indicator in training: imputed with a warning
    lists = [[None if pd.isna(v) else float(v) for v in r] for r in rows.to_numpy()]
    x = instances_to_input(det, lists)
    assert np.array_equal(x, det._prepare(rows, reset=False))
    assert np.array_equal(score_input(det, x), det.anomaly_score(rows))


def test_objects_in_any_key_order_and_categorical_columns(mixed) -> None:
    det, rows = mixed
    objects = [{k: (None if pd.isna(v) else v) for k, v in reversed(list(r.items()))} for r in rows.to_dict("records")]
    objects[0]["site"] = "a site never seen"  # scored, in <other>
    expected = rows.copy()
    expected.loc[0, "site"] = "a site never seen"
    assert np.array_equal(score_input(det, instances_to_input(det, objects)), det.anomaly_score(expected))
    lists = [[o[c] for c in det.preprocessor_.names] for o in objects]
    assert np.array_equal(instances_to_input(det, lists), instances_to_input(det, objects))
    numbers_as_categories = [dict(o, site=7) for o in objects[:2]]  # a number in a text column is its text
    assert np.array_equal(instances_to_input(det, numbers_as_categories),
                          det._prepare(expected.iloc[:2].assign(site="7"), reset=False))


@pytest.mark.parametrize("instances, reason, words", [
    ([], "empty", "'instances' is empty"),
    (["row"], "shape", "instance 0: expected a list of 21 values or an object"),
    ([[1.0] * 21, [1.0] * 3], "width", "instance 1 has 3 values, the model expects 21"),
    ([{"f00": 1.0}], "missing_column", "instance 0: missing column(s) ['f01', 'f02'"),
    ([{**{f"f{i:02d}": 0.0 for i in range(21)}, "bogus": 1}], "unknown_column", "unknown column(s) ['bogus']"),
    ([[0.0] * 20 + ["abc"]], "non_numeric", "instance 0, column 'f20': expected a number or null, got a string 'abc'"),
    ([[0.0] * 20 + [True]], "non_numeric", "got a boolean True"),
    ([[0.0] * 20 + [float("nan")]], "not_finite", "nan is not allowed (send null for a missing value)"),
    ([[float("inf")] + [0.0] * 20], "not_finite", "column 'f00': inf is not allowed"),
    ([[0.0] * 20 + [[1, 2]]], "non_numeric", "got a list"),
])
def test_bad_table_instances_name_the_instance_and_the_reason(numeric, instances, reason, words) -> None:
    det, _ = numeric  # cardio's 21 numeric columns, f00..f20
    with pytest.raises(InputError) as err:
        instances_to_input(det, instances)
    assert err.value.reason == reason
    assert words in str(err.value)


def test_images_as_nested_lists(fashion_sample) -> None:
    images, _ = fashion_sample
    det = VAEAnomalyDetector(epochs=1, latent_dim=4, random_state=0, conv_channels=(8, 16)).fit(images[:200])
    some = images[200:205]
    x = instances_to_input(det, some.tolist())  # integers 0-255
    assert np.array_equal(score_input(det, x), det.anomaly_score(some))
    floats = (some / 255.0)[..., None]  # (H, W, 1) floats in [0, 1]
    assert np.allclose(instances_to_input(det, floats.tolist()), x, atol=1e-6)
    cases = [
        ([some[0][:20].tolist()], "shape", "instance 0: images must be 28x28 pixels"),
        ([[[1, 2], [3]]], "shape", "ragged"),
        ([np.full((28, 28), 300).tolist()], "invalid_value", "0..255, found 300..300"),
        ([np.full((28, 28), np.nan).tolist()], "not_finite", "NaN or infinity"),
        ([np.full((28, 28), 1.5).tolist()], "invalid_value", "must lie in [0, 1]"),
        ([np.zeros((28, 28, 5)).tolist()], "shape", "cannot tell the channel axis"),
        ([some[0].tolist(), some[1][..., None].tolist()], "shape", "one layout"),
        (["x"], "shape", "expected an image"),
    ]
    for instances, reason, words in cases:
        with pytest.raises(InputError) as err:
            instances_to_input(det, instances)
        assert err.value.reason == reason, instances
        assert words in str(err.value)


# -- batching ---------------------------------------------------------------------------------
def test_concurrent_requests_are_batched_together_and_answered_in_order() -> None:
    calls: list[int] = []

    def slow_double(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        time.sleep(0.05)
        return x[:, 0] * 2.0

    batcher = MicroBatcher(slow_double, max_batch_rows=1024)

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.score(np.full((1 + i % 3, 1), float(i))) for i in range(40)))

    results = asyncio.run(main())
    for i, r in enumerate(results):
        assert np.array_equal(r, np.full(1 + i % 3, 2.0 * i))
    assert sum(calls) == sum(1 + i % 3 for i in range(40))
    assert len(calls) <= 3, calls  # the first request alone, then everything that queued behind it
    assert batcher.queued_rows == 0
    batcher.close()


def test_large_requests_are_cut_into_pieces_and_errors_reach_only_their_batch() -> None:
    calls: list[int] = []

    def fn(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        if (x < 0).any():
            raise RuntimeError("boom")
        return x[:, 0].astype(float)

    batcher = MicroBatcher(fn, max_batch_rows=100, max_queued_rows=1000)

    async def main() -> None:
        out = await batcher.score(np.arange(250, dtype=float)[:, None])
        assert np.array_equal(out, np.arange(250))
        assert max(calls) <= 100
        calls.clear()
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.score(-np.ones((3, 1)))
        assert np.array_equal(await batcher.score(np.ones((2, 1))), [1.0, 1.0])  # the consumer goes on
        with pytest.raises(Overloaded):
            await batcher.score(np.ones((1001, 1)))

    asyncio.run(main())
    asyncio.run(main())  # a second event loop (a new test client) gets its own queue and consumer
    batcher.close()


# -- metrics ----------------------------------------------------------------------------------
def test_score_buckets_have_the_threshold_exactly_and_quantiles_below() -> None:
    cal = np.random.RandomState(0).gamma(5.0, 4.0, 800)
    threshold = float(np.sort(cal)[-9])  # an unrounded number
    b = score_buckets(cal, threshold)
    assert threshold in b
    assert b == sorted(b) and len(set(b)) == len(b)
    below = [v for v in b if v < threshold]
    assert len(below) >= 7 and below[0] <= np.quantile(cal, 0.05)
    assert len([v for v in b if v > threshold]) >= 5


def test_drift_window_keeps_the_most_recent_and_reads_every_worker(tmp_path: Path, monkeypatch) -> None:
    a = DriftWindow(5, str(tmp_path))
    a.add(np.arange(8.0))  # ring of 5: keeps 3..7
    assert sorted(a.recent(60)) == [3.0, 4.0, 5.0, 6.0, 7.0]
    monkeypatch.setattr(os, "getpid", lambda: 999999)  # a second worker process, by its file
    b = DriftWindow(5, str(tmp_path))
    b.add(np.array([100.0, 101.0]))
    assert sorted(a.recent(60)) == [3.0, 4.0, 5.0, 6.0, 7.0, 100.0, 101.0]
    assert sorted(b.recent(60)) == sorted(a.recent(60))
    time.sleep(0.2)
    b.add(np.array([200.0]))
    assert sorted(a.recent(0.1)) == [200.0]  # only the last 0.1 s


def test_drift_statistic_is_the_ks_distance_of_all_recent_scores() -> None:
    cal = np.random.RandomState(0).normal(10, 2, 500)
    m = service_metrics.ServiceMetrics(cal, float(np.quantile(cal, 0.99)), 0.01, info={"model_version": "t"})
    try:
        text = m.drift_text()
        assert "anomaly_vae_score_drift_ks NaN" in text and "anomaly_vae_score_drift_window_samples 0.0" in text
        recent = np.random.RandomState(1).normal(12, 2, 300)
        m.observe("score", recent, recent > m.threshold_value)
        expected = ks_2samp(recent, cal, method="asymp")
        values = dict(line.split(" ") for line in m.drift_text().splitlines() if not line.startswith("#"))
        assert float(values["anomaly_vae_score_drift_ks"]) == pytest.approx(expected.statistic, abs=1e-12)
        assert float(values["anomaly_vae_score_drift_ks_pvalue"]) == pytest.approx(expected.pvalue, rel=1e-9)
        assert float(values["anomaly_vae_score_drift_window_samples"]) == 300
    finally:
        m.unregister()
        service_metrics._current = None


def test_model_references_that_cannot_be_found_say_what_to_do(tmp_path: Path, monkeypatch) -> None:
    from anomaly_vae import ArtifactError
    from anomaly_vae.artifact import resolve_model

    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "home"))
    with pytest.raises(ArtifactError, match=r"no model 'anomaly_vae:latest' in the BentoML model store .*anomaly-vae export"):
        resolve_model("anomaly_vae:latest")
    with pytest.raises(ArtifactError, match="is not a model directory"):
        resolve_model("./no/such/model")
    with pytest.raises(ArtifactError, match="neither a model directory nor a BentoML model tag"):
        resolve_model("bad tag!")
