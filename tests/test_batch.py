"""Batch scoring (``batch.score_to_file``): one output row per input row, in order, nothing lost."""

import numpy as np
import pandas as pd
import pytest

from anomaly_vae import VAEAnomalyDetector
from anomaly_vae.batch import score_to_file
from anomaly_vae.io import open_data


@pytest.fixture(scope="module")
def table_model(cardio):
    return VAEAnomalyDetector(epochs=5, random_state=0).fit(cardio[cardio.label == "normal"].drop(columns="label"))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_extreme_value_row_is_scored_and_flagged_not_left_empty(table_model, cardio, tmp_path, suffix):
    """Issue 10.2: a row with 1e300 was written with an empty score and an empty error, exit 0; it is
    now scored (finite, huge) and flagged, and the other rows are untouched."""
    X = cardio.drop(columns="label").iloc[:40].copy()
    X.iloc[3, 0], X.iloc[7, 5], X.iloc[9, 2] = 1e300, -1e39, 1e19
    src = tmp_path / f"in{suffix}"
    X.to_csv(src, index=False) if suffix == ".csv" else X.to_parquet(src, index=False)
    with open_data(src, batch_size=16) as reader:
        summary = score_to_file(table_model, reader, tmp_path / f"out{suffix}")
    out = pd.read_csv(summary.output) if suffix == ".csv" else pd.read_parquet(summary.output)
    assert len(out) == 40 and summary.errors == 0 and summary.scored == 40
    assert np.isfinite(out["score"]).all() and out["error"].isna().all()
    assert out["is_anomaly"].iloc[[3, 7, 9]].astype(bool).all()
    assert summary.anomalies >= 3
    np.testing.assert_array_equal(out["score"].to_numpy(), table_model.anomaly_score(X))
