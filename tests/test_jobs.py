"""The batch jobs as Python functions (``anomaly_vae.jobs``): read a file, call the detector,
return numbers; the CLI tests run the same jobs through the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_vae import VAEAnomalyDetector, load_detector
from anomaly_vae.exceptions import InputError
from anomaly_vae.jobs import DataOptions, calibrate_job, evaluate_job, load_data, read_for_model, train_job


def zero_padded_table(n: int, seed: int) -> pd.DataFrame:
    """Numbers and a categorical column whose values all look like integers with leading zeros."""
    rng = np.random.RandomState(seed)
    return pd.DataFrame({
        "id": [f"r{i:04d}" for i in range(n)],
        "a": rng.normal(size=n),
        "b": rng.normal(size=n),
        "site": rng.choice(["007", "012", "030"], size=n),
        "label": np.where(np.arange(n) % 10 == 0, "other", "normal"),
    })


@pytest.fixture(scope="module")
def table_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[VAEAnomalyDetector, Path]:
    det = VAEAnomalyDetector(epochs=2, alpha=0.1, random_state=0)
    det.fit(zero_padded_table(300, 0)[["a", "b", "site"]])
    out = tmp_path_factory.mktemp("model") / "m"
    det.save(out)
    return det, out


def test_calibrate_job_reads_categories_with_leading_zeros_as_text(table_model, tmp_path: Path) -> None:
    """Issue 11.8: calibrate_job read the table without the model's categorical dtypes, so "007"
    came back as 7, an unknown category, and the calibration scores were not the model's scores."""
    det, model = table_model
    df = zero_padded_table(200, 1)
    path = tmp_path / "normal.csv"
    df.to_csv(path, index=False)
    assert "007" in path.read_text()
    before, after = calibrate_job(model, path, DataOptions(id_column="id", label_column="label"), alpha=0.2)
    normal = df[df.label == "normal"]
    assert after["n"] == len(normal) == 180 and after["alpha"] == 0.2
    got = load_detector(model).calibration_scores_
    np.testing.assert_array_equal(np.sort(got), np.sort(det.anomaly_score(normal[["a", "b", "site"]])))


def test_a_calibration_too_small_for_alpha_leaves_the_model_directory_as_it_was(table_model, tmp_path: Path) -> None:
    """Hostile review: 20 rows at alpha 0.01 rewrote the model with an infinite threshold (exit 1, but a
    working model destroyed: every later score job refused it)."""
    _, model = table_model
    df = zero_padded_table(20, 1)
    df.to_csv(tmp_path / "few.csv", index=False)
    files = {p.name: p.read_bytes() for p in Path(model).iterdir()}
    before, after = calibrate_job(model, tmp_path / "few.csv", DataOptions(id_column="id", label_column="label"),
                                  alpha=0.01)
    assert not after["saved"] and "needs at least 99 calibration samples" in after["error"]
    assert {p.name: p.read_bytes() for p in Path(model).iterdir()} == files
    assert np.isfinite(load_detector(model).threshold_)


def test_load_data_drops_label_id_and_named_columns(tmp_path: Path) -> None:
    df = zero_padded_table(20, 2)
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    X, labels = load_data(path, DataOptions(label_column="label", id_column="id", drop_columns=["b"]))
    assert list(X.columns) == ["a", "site"] and labels == df["label"].tolist()
    with pytest.raises(InputError, match=r"--drop-columns names \['nope'\]"):
        load_data(path, DataOptions(drop_columns=["nope"]))
    with pytest.raises(InputError, match="no feature columns left"):
        load_data(path, DataOptions(drop_columns=["id", "a", "b", "site", "label"]))
    with pytest.raises(InputError, match="--normal-label needs --label-column for a table"):
        load_data(path, DataOptions(normal_label="normal"))


def test_load_data_label_options_of_arrays_and_image_folders(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 3)))
    with pytest.raises(InputError, match="a .npy file holds one array"):
        load_data(tmp_path / "x.npy", DataOptions(label_column="y"))
    np.savez(tmp_path / "x.npz", X=np.zeros((4, 3)), y=np.array([0, 1, 0, 0]))
    with pytest.raises(InputError, match="--normal-label needs --label-column"):
        load_data(tmp_path / "x.npz", DataOptions(normal_label="0"))
    X, labels = load_data(tmp_path / "x.npz", DataOptions(label_column="y"))
    assert X.shape == (4, 3) and labels == [0, 1, 0, 0]
    (tmp_path / "images").mkdir()
    with pytest.raises(InputError, match="--label-column is for tables and arrays"):
        load_data(tmp_path / "images", DataOptions(label_column="label"))


def test_read_for_model_keeps_the_model_categories(table_model, tmp_path: Path) -> None:
    det, _ = table_model
    df = zero_padded_table(30, 3)
    df.to_csv(tmp_path / "t.csv", index=False)
    X, labels = read_for_model(det, tmp_path / "t.csv", DataOptions(label_column="label"))
    assert X["site"].tolist() == df["site"].tolist() and labels == df["label"].tolist()


def test_train_job_holds_out_and_evaluate_job_measures(tmp_path: Path) -> None:
    df = zero_padded_table(400, 4)
    df.loc[df.label == "other", "a"] += 8.0  # anomalies far from the normal rows
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    opts = DataOptions(label_column="label", normal_label="normal", id_column="id")
    result = train_job(path, tmp_path / "m", opts, {"epochs": 2, "alpha": 0.1}, test_size=0.25)
    n_normal = int((df.label == "normal").sum())
    assert result.n_rows == 400 and result.n_train_rows == n_normal - round(0.25 * n_normal)
    assert result.holdout is not None and result.holdout["n_anomalous"] == 40
    assert load_detector(tmp_path / "m").fit_info_["holdout"]["n_anomalous"] == 40
    metrics, scores, y, errors = evaluate_job(tmp_path / "m", path, opts)
    assert metrics["rows"] == 400 and errors == [] and int(y.sum()) == 40
    np.testing.assert_array_equal(scores, result.detector.anomaly_score(df[["a", "b", "site"]]))
