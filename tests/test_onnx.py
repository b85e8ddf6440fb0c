"""ONNX export (``anomaly_vae.onnx``): the graph run by onnxruntime gives the Python API's scores
within the documented tolerance, on real data: breast cancer and cardio tables (raw and prepared
input, missing values, a string column) and scikit-learn's 8x8 digits as images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from anomaly_vae import ExportError, NotFittedError, VAEAnomalyDetector
from anomaly_vae.onnx import ONNX_ATOL, ONNX_RTOL, export_onnx, read_onnx_metadata

TINY = dict(epochs=3, random_state=0)


def export(det: VAEAnomalyDetector, path: Path, **kwargs: Any) -> tuple[Any, dict[str, str]]:
    """Export, check the file with ONNX's full checker, and open it in onnxruntime (one thread)."""
    det.to_onnx(path, **kwargs)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]), read_onnx_metadata(path)


def run(session: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input": x})))


def assert_close(onnx_scores: np.ndarray, python_scores: np.ndarray) -> None:
    assert onnx_scores.dtype == np.float64 and np.isfinite(onnx_scores).all()
    np.testing.assert_allclose(onnx_scores, python_scores, rtol=ONNX_RTOL, atol=ONNX_ATOL)


def assert_p_values(det: VAEAnomalyDetector, out: dict[str, np.ndarray], python_scores: np.ndarray) -> None:
    """The graph's p-values are det.p_values_from_scores of its own scores, exactly. Against the
    Python API's p-values (of scores within the tolerance of the graph's): a p-value is a step
    function of the score, decreasing, so the graph's lies between the p-values of the Python
    score moved up and down by the tolerance, exactly; it differs from ``det.p_values(X)`` only
    where a calibration score lies in that band (by a few steps of 1 / (n + 1) at most)."""
    p = out["p_value"]
    np.testing.assert_array_equal(p, det.p_values_from_scores(out["score"]))
    tol = ONNX_ATOL + ONNX_RTOL * np.abs(python_scores)
    assert (det.p_values_from_scores(python_scores + tol) <= p).all()
    assert (p <= det.p_values_from_scores(python_scores - tol)).all()


def assert_flags(det: VAEAnomalyDetector, out: dict[str, np.ndarray], python_scores: np.ndarray) -> None:
    """``is_anomaly`` is ``score > threshold`` of the graph's score, exactly, and ``predict``'s
    answer wherever the score is not within the tolerance of the threshold."""
    flags, thr = out["is_anomaly"], det.threshold_
    assert flags.dtype == np.bool_
    np.testing.assert_array_equal(flags, out["score"] > thr)
    clear = np.abs(python_scores - thr) > ONNX_ATOL + ONNX_RTOL * abs(thr)
    np.testing.assert_array_equal(flags[clear], (python_scores > thr)[clear])


# -- tables ---------------------------------------------------------------------------------------
def test_raw_numeric_table_matches_the_python_api(cancer_model: VAEAnomalyDetector, cancer, tmp_path: Path) -> None:
    det = cancer_model
    _, rest, anomalous = cancer
    X = pd.concat([rest, anomalous])
    session, meta = export(det, tmp_path / "cancer.onnx")
    inp = session.get_inputs()[0]
    assert (inp.name, inp.type, inp.shape) == ("input", "tensor(double)", ["N", 30])
    assert [(o.name, o.type, o.shape) for o in session.get_outputs()] == [
        ("score", "tensor(double)", ["N"]), ("p_value", "tensor(double)", ["N"]), ("is_anomaly", "tensor(bool)", ["N"])]
    out = run(session, X.to_numpy(dtype=np.float64))  # the model's column order: the frame's own here
    expected = det.anomaly_score(X)
    assert_close(out["score"], expected)
    assert_p_values(det, out, expected)
    assert_flags(det, out, expected)
    assert meta["input"] == "raw_numeric" and json.loads(meta["columns"]) == list(X.columns)
    assert not list(tmp_path.glob(".*.part"))  # written atomically: no temporary file left


def test_every_score_kind_and_the_prepared_input(cancer_model: VAEAnomalyDetector, cancer, tmp_path: Path) -> None:
    det = cancer_model
    X = pd.concat([cancer[1], cancer[2]])
    x = det.preprocess(X)
    for score in ("elbo", "reconstruction", "iwae"):
        session, meta = export(det, tmp_path / f"{score}.onnx", score=score, prepared_input=True)
        assert meta["input"] == "prepared" and meta["score"] == score
        assert session.get_inputs()[0].type == "tensor(float)"
        assert len(json.loads(meta["feature_names"])) == det.preprocessor_.n_features_out
        out = run(session, x)
        assert_close(out["score"], det.anomaly_score(X, score=score))
        # the calibration is of the model's score_kind: another score gets no p-value or flag
        assert ("p_value" in out) == ("is_anomaly" in out) == (score == det.score_kind)


def test_missing_values_are_imputed_as_the_python_api_does(numeric, tmp_path: Path) -> None:
    """NaN in a column with a missing indicator (f03) and in one without (f05, imputed with a
    logged warning in Python); infinity, which Python refuses, is scored as a value beyond
    preprocessing.Z_MAX standard deviations (as Python scores a huge finite value)."""
    det, rows = numeric
    rows = rows.copy()
    rows.loc[::3, "f03"] = np.nan
    rows.loc[1::4, "f05"] = np.nan
    session, meta = export(det, tmp_path / "numeric.onnx")
    assert meta["input"] == "raw_numeric" and det.preprocessor_.n_features_out == 22  # f03's indicator
    values = rows[det.preprocessor_.names].to_numpy(dtype=np.float64)
    assert_close(run(session, values)["score"], det.anomaly_score(rows))

    far = rows.iloc[:4].copy()
    far.iloc[:, 0] = [np.inf, -np.inf, 1e300, -1e300]
    got = run(session, far[det.preprocessor_.names].to_numpy(dtype=np.float64))["score"]
    huge = far.replace([np.inf, -np.inf], [1e300, -1e300])  # Python: standardised to +-Z_MAX, logged
    assert_close(got, det.anomaly_score(huge))
    assert np.isfinite(got).all()


def test_mixed_table_with_strings_and_missing_values(mixed, tmp_path: Path) -> None:
    det, rows = mixed  # a categorical likelihood on the one-hot "site" column; f01 has missing values
    rows = rows.copy()
    rows.loc[::5, "site"] = "west"  # never seen in training: <other>
    rows.loc[::7, "f01"] = np.nan
    assert det.model_.categorical
    session, meta = export(det, tmp_path / "mixed.onnx")
    assert meta["input"] == "prepared" and json.loads(meta["columns"]) == det.preprocessor_.names
    assert "site=<other>" in json.loads(meta["feature_names"])
    for score in ("elbo", "reconstruction", "iwae"):
        if score != det.score_kind:
            session, _ = export(det, tmp_path / f"mixed-{score}.onnx", score=score)
        out = run(session, det.preprocess(rows))
        expected = det.anomaly_score(rows, score=score)
        assert_close(out["score"], expected)
        if score == det.score_kind:
            assert_p_values(det, out, expected)
            assert_flags(det, out, expected)


def test_gaussian_shared_likelihood(cancer, tmp_path: Path) -> None:
    det = VAEAnomalyDetector(likelihood="gaussian-shared", score_kind="iwae", alpha=0.05, **TINY).fit(cancer[0])
    session, _ = export(det, tmp_path / "shared.onnx")
    X = pd.concat([cancer[1], cancer[2]])
    assert_close(run(session, X.to_numpy(dtype=np.float64))["score"], det.anomaly_score(X))


def test_a_marginal_floor_and_values_far_outside_training(cancer, tmp_path: Path) -> None:
    """The floor's mixture in the graph, also where both of its parts underflow float32's exp (a value
    thousands of standard deviations away): the graph's score stays finite and matches."""
    train, rest, anomalous = cancer
    det = VAEAnomalyDetector(marginal_floor=1e-3, alpha=0.05, **TINY).fit(train)
    X = pd.concat([rest, anomalous]).copy()
    X.iloc[:5, 3] *= 1e4  # far values in one column
    X.iloc[5:10, 7] = -1e30
    session, _ = export(det, tmp_path / "floor.onnx")
    out = run(session, X.to_numpy(dtype=np.float64))
    expected = det.anomaly_score(X)
    assert expected[:10].min() > 1e4  # the far rows are far
    assert_close(out["score"], expected)
    assert_p_values(det, out, expected)


def test_the_batch_dimension_is_dynamic(cancer_model: VAEAnomalyDetector, cancer, tmp_path: Path) -> None:
    """A row's score does not depend on the batch it comes in (1, 7, 200 or 1000 rows): within the
    tolerance (onnxruntime may pick another kernel for one row than for many)."""
    session, _ = export(cancer_model, tmp_path / "c.onnx")
    X = pd.concat([cancer[1], cancer[2]]).to_numpy(dtype=np.float64)
    big = np.resize(X, (1000, X.shape[1]))
    scores = run(session, big)["score"]
    assert scores.shape == (1000,)
    for n in (1, 7, 200):
        assert_close(run(session, X[:n])["score"], scores[:n])


# -- images ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """scikit-learn's 8x8 digits as grey levels in [0, 1] (N, 8, 8): a ConvVAE takes them as 1x8x8."""
    from sklearn.datasets import load_digits

    return load_digits().images / 16.0


@pytest.mark.parametrize("likelihood", ["gaussian", "gaussian-fixed", "bernoulli"])
def test_images_every_likelihood_and_score(digits: np.ndarray, likelihood: str, tmp_path: Path) -> None:
    det = VAEAnomalyDetector(likelihood=likelihood, latent_dim=4, alpha=0.1, epochs=2, random_state=0).fit(digits[:500])
    images = digits[500:800]
    x = det.preprocess(images)
    for score in ("elbo", "reconstruction", "iwae"):
        session, meta = export(det, tmp_path / f"{score}.onnx", score=score)
        inp = session.get_inputs()[0]
        assert (inp.type, inp.shape) == ("tensor(float)", ["N", 1, 8, 8])
        assert (meta["image_height"], meta["image_width"], meta["image_channels"]) == ("8", "8", "1")
        out = run(session, x)
        expected = det.anomaly_score(images, score=score)
        assert_close(out["score"], expected)
        assert_close(run(session, x[:1])["score"], out["score"][:1])  # a batch of one
        if score == det.score_kind:
            assert_p_values(det, out, expected)
            assert_flags(det, out, expected)


# -- metadata, thresholds, errors ----------------------------------------------------------------
def test_metadata(cancer_model: VAEAnomalyDetector, tmp_path: Path) -> None:
    from anomaly_vae import __version__, load_detector

    det = cancer_model
    det.save(tmp_path / "model")
    loaded = load_detector(tmp_path / "model")
    export(loaded, tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert model.producer_name == "anomaly-vae" and model.producer_version == __version__ and model.doc_string
    meta = read_onnx_metadata(tmp_path / "m.onnx")
    assert meta["package_version"] == __version__ and meta["export_version"] == "1"
    assert meta["weights_sha256"] == loaded.model_card_["weights"]["sha256"]
    assert meta["model_format_version"] == str(loaded.model_card_["format_version"])
    assert meta["score"] == det.score_kind and meta["units"] == "nats, higher = more anomalous"
    assert float(meta["threshold"]) == det.threshold_ and float(meta["alpha"]) == det.alpha_ == 0.05
    assert meta["threshold_method"] == "conformal"
    assert int(meta["n_calibration"]) == det.calibration_scores_.size
    assert (meta["input"], meta["input_kind"], meta["input_dtype"]) == ("raw_numeric", "table", "float64")
    assert json.loads(meta["input_shape"]) == ["N", 30]
    assert json.loads(meta["columns"]) == det.preprocessor_.names
    assert json.loads(meta["outputs"]) == ["score", "p_value", "is_anomaly"]
    assert (float(meta["rtol"]), float(meta["atol"])) == (ONNX_RTOL, ONNX_ATOL)


def test_without_a_usable_threshold_only_the_score_and_p_value(cancer_model: VAEAnomalyDetector, cancer,
                                                               tmp_path: Path) -> None:
    det = cancer_model
    det.set_alpha(0.001)  # far too few calibration scores for it: an infinite threshold
    try:
        session, meta = export(det, tmp_path / "t.onnx")
    finally:
        det.set_alpha(0.05)
    assert [o.name for o in session.get_outputs()] == ["score", "p_value"]
    assert meta["threshold"] == "" and "no usable threshold" in meta["threshold_note"]
    _, meta = export(det, tmp_path / "t2.onnx", p_value=False)
    assert json.loads(meta["outputs"]) == ["score", "is_anomaly"]


def test_unexportable_cases_say_what_and_why(cancer_model: VAEAnomalyDetector, digits: np.ndarray, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ExportError, match="score must be one of"):
        cancer_model.to_onnx(tmp_path / "x.onnx", score="mahalanobis")
    with pytest.raises(NotFittedError):
        VAEAnomalyDetector().to_onnx(tmp_path / "x.onnx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cancer_model.to_onnx(tmp_path / "no-such-folder" / "x.onnx")
    det = VAEAnomalyDetector(latent_dim=2, epochs=1, random_state=0).fit(digits[:300])
    with pytest.raises(ExportError, match="only for tables whose columns are all numeric"):
        det.to_onnx(tmp_path / "x.onnx", prepared_input=False)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the extra were not installed
    with pytest.raises(ExportError, match=r"pip install 'anomaly-vae\[onnx\]'"):
        export_onnx(cancer_model, tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())


def test_importing_the_package_does_not_import_onnx() -> None:
    code = "import sys, anomaly_vae.detector; print('onnx' in sys.modules, 'onnxscript' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["False", "False"], r.stderr


# -- command line ---------------------------------------------------------------------------------
def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "anomaly-vae"
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_cli_export_format_onnx(cancer_model: VAEAnomalyDetector, cancer, tmp_path: Path, cli_here) -> None:
    """The first export through the installed executable, the rest in this process."""
    cancer_model.save(tmp_path / "model")
    out = tmp_path / "onnx" / "cancer.onnx"
    r = cli("export", tmp_path / "model", "--format", "onnx", "--out", out)
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout and "input float64 [N, 30]" in r.stdout and "score, p_value, is_anomaly" in r.stdout
    assert "torchvision" not in r.stdout + r.stderr  # the exporter's chatter stays out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    X = cancer[2]
    assert_close(run(session, X.to_numpy(dtype=np.float64))["score"], cancer_model.anomaly_score(X))

    r = cli_here("export", tmp_path / "model", "--format", "onnx", "--out", tmp_path / "p.onnx", "--prepared-input",
            "--no-p-value", "--score", "reconstruction")
    assert r.returncode == 0, r.stderr
    assert "input float32 [N, 30]" in r.stdout and "outputs              score\n" in r.stdout

    # a hostile review overwrote the model's own weights with --out MODEL_DIR/model.safetensors (exit 0)
    weights = (tmp_path / "model" / "model.safetensors").read_bytes()
    r = cli_here("export", tmp_path / "model", "--format", "onnx", "--out", tmp_path / "model" / "model.safetensors")
    assert r.returncode == 2 and "inside the model directory" in r.stderr
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == weights
    r = cli_here("export", tmp_path / "model", "--format", "onnx", "--out", tmp_path / "onnx")  # a directory
    assert r.returncode == 1 and "is a directory" in r.stderr


def test_cli_export_usage_and_model_errors(tmp_path: Path, cli_here) -> None:
    r = cli("export", tmp_path, "--format", "onnx")
    assert r.returncode == 2 and "--format onnx needs --out" in r.stderr
    r = cli_here("export", tmp_path, "--out", tmp_path / "x.onnx")  # --out without --format onnx
    assert r.returncode == 2 and "only with --format onnx" in r.stderr
    r = cli_here("export", tmp_path / "no-model", "--format", "onnx", "--out", tmp_path / "x.onnx")
    assert r.returncode == 1 and "not a model directory" in r.stderr


def test_a_pair_scores_the_sum_of_its_networks_in_the_graph(cancer, tmp_path: Path, monkeypatch) -> None:
    train, rest, anomalous = cancer
    det = VAEAnomalyDetector(pair=True, marginal_floor=1e-2, alpha=0.05, **TINY).fit(train)
    X = pd.concat([rest, anomalous])
    session, _ = export(det, tmp_path / "pair.onnx")  # elbo, the model's score: with p-values
    out = run(session, X.to_numpy(dtype=np.float64))
    assert_close(out["score"], det.anomaly_score(X))
    assert_p_values(det, out, det.anomaly_score(X))
    session, _ = export(det, tmp_path / "pair-iwae.onnx", score="iwae")  # the prior in the importance weights
    assert_close(run(session, X.to_numpy(dtype=np.float64))["score"], det.anomaly_score(X, score="iwae"))
    # the runtime scorer (the service's onnxruntime backend) hands onnxruntime blocks of rows, not a
    # whole input at once: a pair's graph holds rows x 16 x codes numbers
    from anomaly_vae import onnx as onnx_module

    scorer = onnx_module.onnxruntime_scorer(det)
    x = det.preprocess(pd.concat([X] * 4))
    whole = scorer(x)
    assert_close(whole, det.score_prepared(x))
    monkeypatch.setattr(onnx_module, "SCORER_BLOCK_ROWS", 7)
    assert_close(scorer(x), whole)
    assert len(x) > 1024 and scorer(x[:20]).shape == (20,)
    own = VAEAnomalyDetector(pair=True, pair_hidden_sizes=(24, 12), alpha=0.05, **TINY).fit(train)  # its own layers
    session, _ = export(own, tmp_path / "own.onnx")
    assert_close(run(session, X.to_numpy(dtype=np.float64))["score"], own.anomaly_score(X))
