"""The Open Inference Protocol (KServe V2) routes, in process: every input form against the Python
API and ``/score``, binary tensors both ways, metadata and health, bad requests answered 4xx in the
protocol's error form and counted. Triton's own client against a real server is in
``test_service_integration.py``."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient

from anomaly_vae import VAEAnomalyDetector, load_detector

from .servicekit import metric, serving

INFER = "/v2/models/anomaly_vae/infer"


def column(name: str, values: list[Any], datatype: str) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [len(values)], "data": values}


def binary_request(inputs: list[tuple[str, str, list[int], bytes]], **doc: Any) -> tuple[bytes, dict[str, str]]:
    """A binary-extension request: (name, datatype, shape, raw bytes) per input."""
    header = {"inputs": [{"name": n, "datatype": t, "shape": s, "parameters": {"binary_data_size": len(raw)}}
                         for n, t, s, raw in inputs], **doc}
    head = json.dumps(header).encode()
    return head + b"".join(raw for *_, raw in inputs), {"Inference-Header-Content-Length": str(len(head)),
                                                        "content-type": "application/octet-stream"}


def bytes_tensor(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def outputs(r: Any) -> dict[str, np.ndarray]:
    """The outputs of an answer, JSON or binary, as arrays."""
    assert r.status_code == 200, r.text
    length = r.headers.get("inference-header-content-length")
    head = json.loads(r.content if length is None else r.content[: int(length)])
    out, pos = {}, int(length or 0)
    for o in head["outputs"]:
        dtype = {"FP64": "<f8", "BOOL": "?"}[o["datatype"]]
        if "data" in o:
            out[o["name"]] = np.array(o["data"], dtype=dtype)
        else:
            size = o["parameters"]["binary_data_size"]
            out[o["name"]] = np.frombuffer(r.content[pos: pos + size], dtype=dtype)
            pos += size
        assert o["shape"] == [len(out[o["name"]])]
    assert pos == (len(r.content) if length else 0)
    return out


def saved(fitted: tuple[VAEAnomalyDetector, pd.DataFrame], name: str, factory: pytest.TempPathFactory
          ) -> tuple[Path, VAEAnomalyDetector, pd.DataFrame]:
    """(model directory, the detector loaded from it, rows to score) for a conftest (det, rows) pair."""
    det, rows = fitted
    out = factory.mktemp("v2") / name
    det.save(out)
    return out, load_detector(out), rows


@pytest.fixture(scope="module")
def mixed_model(mixed, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, VAEAnomalyDetector, pd.DataFrame]:
    return saved(mixed, "mixed", tmp_path_factory)


@pytest.fixture(scope="module")
def numeric_model(numeric, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, VAEAnomalyDetector, pd.DataFrame]:
    return saved(numeric, "numeric", tmp_path_factory)


@pytest.fixture
def numeric_client(numeric_model) -> Iterator[TestClient]:
    # one per test: the app is one per process, and another test's lifespan replaces its instance
    with serving(numeric_model[0]) as c:
        yield c


def test_table_columns_as_tensors_score_as_the_python_api_and_score(mixed_model) -> None:
    path, det, rows = mixed_model
    rows = rows.iloc[:40].copy()
    rows.loc[3, "f01"] = np.nan
    rows.loc[5, "site"] = None
    rows.loc[6, "site"] = "west"  # not seen in training
    expected = det.anomaly_score(rows)
    values = {c: [None if isinstance(v, float) and np.isnan(v) else v for v in rows[c]] for c in rows.columns}
    with serving(path) as c:
        tensors = [column(n, values[n], "BYTES" if n == "site" else "FP64") for n in rows.columns]
        got = outputs(c.post(INFER, json={"inputs": tensors[::-1], "id": "r-1"}))  # any order: by name
        np.testing.assert_array_equal(got["score"], expected)
        np.testing.assert_array_equal(got["p_value"], det.p_values(rows))
        np.testing.assert_array_equal(got["is_anomaly"], det.predict(rows) == -1)
        instances = [dict(zip(rows.columns, r)) for r in zip(*values.values())]
        assert c.post("/score", json={"instances": instances}).json()["scores"] == got["score"].tolist()
        # the same tensors in binary; missing: NaN in a float column, an empty string in a BYTES one
        numeric = [n for n in rows.columns if n != "site"]
        body, headers = binary_request(
            [(n, "FP64", [len(rows)], rows[n].to_numpy("<f8").tobytes()) for n in numeric]
            + [("site", "BYTES", [len(rows)], bytes_tensor([v or "" for v in values["site"]]))],
            parameters={"binary_data_output": True})
        r = c.post(INFER, content=body, headers=headers)
        assert r.headers["content-type"] == "application/octet-stream"
        got = outputs(r)
        np.testing.assert_array_equal(got["score"], expected)
        np.testing.assert_array_equal(got["is_anomaly"], det.predict(rows) == -1)
        # an integer column tensor is taken as numbers; a matrix is refused for a model with text columns
        ints = [column(n, [int(v) for v in rows[n].fillna(0)], "INT64") if n == "f00" else t
                for n, t in zip(rows.columns, tensors)]
        assert outputs(c.post(INFER, json={"inputs": ints}))["score"].shape == (40,)
        r = c.post(INFER, json={"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 7], "data": [0.0] * 7}]})
        assert r.status_code == 422 and "one tensor per column" in r.json()["error"]


def test_an_all_numeric_model_takes_a_matrix_json_or_binary(numeric_model, numeric_client: TestClient) -> None:
    _, det, rows = numeric_model
    rows = rows.iloc[:300].copy()
    rows.loc[7, "f03"] = np.nan
    expected = det.anomaly_score(rows)
    matrix = rows.to_numpy(np.float64)
    data = [[None if np.isnan(v) else v for v in r] for r in matrix.tolist()]
    for flat in (False, True):  # nested rows or the flat row-major list
        doc = {"inputs": [{"name": "input", "datatype": "FP64", "shape": list(matrix.shape),
                           "data": sum(data, []) if flat else data}]}
        np.testing.assert_array_equal(outputs(numeric_client.post(INFER, json=doc))["score"], expected)
    body, headers = binary_request([("input", "FP64", list(matrix.shape), matrix.astype("<f8").tobytes())],
                                   outputs=[{"name": "score", "parameters": {"binary_data": True}},
                                            {"name": "is_anomaly"}])
    got = outputs(numeric_client.post(INFER, content=body, headers=headers))
    assert list(got) == ["score", "is_anomaly"]  # the outputs asked, in the order asked
    np.testing.assert_array_equal(got["score"], expected)
    # FP32 is the float32 of each value: the Python API on the same float32 values
    as32 = matrix.astype(np.float32)
    body, headers = binary_request([("input", "FP32", list(matrix.shape), as32.tobytes())])
    np.testing.assert_array_equal(outputs(numeric_client.post(INFER, content=body, headers=headers))["score"],
                                  det.anomaly_score(pd.DataFrame(as32.astype(np.float64), columns=rows.columns)))
    # one tensor per column works for it too, and the versioned route answers the same
    version = numeric_client.get("/v2/models/anomaly_vae").json()["versions"][0]
    tensors = [column(n, [None if np.isnan(v) else v for v in rows[n]], "FP64") for n in rows.columns]
    r = numeric_client.post(f"/v2/models/anomaly_vae/versions/{version}/infer", json={"inputs": tensors})
    np.testing.assert_array_equal(outputs(r)["score"], expected)


def test_images_as_tensors_in_every_layout(fashion_sample, tmp_path_factory: pytest.TempPathFactory) -> None:
    images, labels = fashion_sample
    det = VAEAnomalyDetector(epochs=1, latent_dim=4, conv_channels=(8, 16), alpha=0.1, random_state=0)
    det.fit(images[labels == 0][:200])
    path = tmp_path_factory.mktemp("v2") / "image"
    det.save(path)
    batch = images[:12]
    expected = det.anomaly_score(batch)
    with serving(path) as c:
        meta = c.get("/v2/models/anomaly_vae").json()
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
        for arr, datatype in ((batch, "UINT8"), (batch[:, None], "UINT8"), (batch[..., None], "UINT8"),
                              (batch.astype(np.float32) / 255, "FP32")):
            body, headers = binary_request([("input", datatype, list(arr.shape), arr.tobytes())])
            np.testing.assert_allclose(outputs(c.post(INFER, content=body, headers=headers))["score"],
                                       det.anomaly_score(arr if datatype == "UINT8" else arr.astype(np.float32)))
        got = outputs(c.post(INFER, json={"inputs": [{"name": "input", "datatype": "UINT8", "shape": [12, 28, 28],
                                                      "data": batch.tolist()}]}))
        np.testing.assert_array_equal(got["score"], expected)
        r = c.post(INFER, json={"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 20, 20],
                                            "data": [0] * 400}]})
        assert r.status_code == 422 and "20" in r.json()["error"], r.text
        body, headers = binary_request([("input", "FP32", [1, 28, 28], np.full((1, 28, 28), np.nan, "<f4").tobytes())])
        r = c.post(INFER, content=body, headers=headers)
        assert r.status_code == 422 and "finite" in r.json()["error"], r.text


def test_metadata_health_and_versions(numeric_model, numeric_client: TestClient) -> None:
    _, det, rows = numeric_model
    c = numeric_client
    assert c.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    assert c.get("/v2/health/live").status_code == 200
    assert c.get("/v2/health/ready").status_code == 200
    meta = c.get("/v2/models/anomaly_vae").json()
    assert meta["name"] == "anomaly_vae"
    assert [i["name"] for i in meta["inputs"]] == list(rows.columns)
    assert {i["datatype"] for i in meta["inputs"]} == {"FP64"}
    assert meta["outputs"] == [{"name": "score", "datatype": "FP64", "shape": [-1]},
                               {"name": "p_value", "datatype": "FP64", "shape": [-1]},
                               {"name": "is_anomaly", "datatype": "BOOL", "shape": [-1]}]
    assert meta["parameters"]["threshold"] == det.threshold_ and meta["parameters"]["alpha"] == det.alpha_
    assert meta["parameters"]["matrix_input"]["shape"] == [-1, 21]
    version = meta["versions"][0]
    assert version == "sha256:" + det.model_card_["weights"]["sha256"][:12]
    assert c.get(f"/v2/models/anomaly_vae/versions/{version}").json() == meta
    assert c.get(f"/v2/models/anomaly_vae/versions/{version}/ready").status_code == 200
    for path in ("/v2/models/other", "/v2/models/other/ready", "/v2/models/anomaly_vae/versions/7",
                 "/v2/models/anomaly_vae/versions/7/ready"):
        r = c.get(path)
        assert r.status_code == 404 and "error" in r.json(), path
    assert c.post("/v2/models/anomaly_vae/versions/7/infer", json={"inputs": []}).status_code == 404
    for path in ("/v2/no/such/route", "/v2/models/a%0Ab/ready"):  # JSON 404s, not plain text (schemathesis)
        r = c.get(path)
        assert r.status_code == 404 and r.headers["content-type"] == "application/json" and r.json()["error"]


def test_without_a_model_v2_health_is_false_and_says_why(tmp_path: Path) -> None:
    with serving(tmp_path / "no-such-model") as c:
        assert c.get("/v2/health/live").status_code == 200
        r = c.get("/v2/health/ready")
        assert r.status_code == 400 and "no-such-model" in r.json()["error"]
        assert c.get("/v2/models/anomaly_vae/ready").status_code == 400
        r = c.post(INFER, json={"inputs": [column("f00", [1.0], "FP64")]})
        assert r.status_code == 503 and "no-such-model" in r.json()["error"]


def _binary(doc: dict[str, Any], raw: bytes, length: int | None = None) -> dict[str, Any]:
    head = json.dumps(doc).encode()
    return {"content": head + raw, "headers": {"Inference-Header-Content-Length": str(length or len(head))}}


ONE = {"name": "input", "datatype": "FP64", "shape": [1, 21]}
BAD_V2_REQUESTS = [
    # (what, request kwargs, status, reason, words in the error)
    ("not JSON", {"content": b"{inputs", "headers": {"content-type": "application/json"}}, 400, "invalid_request",
     "not JSON"),
    ("NaN literal", {"content": b'{"inputs": [{"name": "input", "datatype": "FP64", "shape": [1], "data": [NaN]}]}'},
     400, "invalid_request", "NaN is not JSON"),
    ("no inputs", {"json": {"outputs": [{"name": "score"}]}}, 400, "invalid_request", "needs 'inputs'"),
    ("inputs not a list", {"json": {"inputs": {"f00": 1}}}, 400, "invalid_request", "needs 'inputs'"),
    ("unknown datatype", {"json": {"inputs": [{**ONE, "datatype": "FP128", "data": [0] * 21}]}}, 400,
     "invalid_request", "datatype 'FP128'"),
    ("BF16", {"json": {"inputs": [{**ONE, "datatype": "BF16", "data": [0] * 21}]}}, 400, "invalid_request", "BF16"),
    ("bad shape", {"json": {"inputs": [{**ONE, "shape": [-1, 21], "data": [0] * 21}]}}, 400, "invalid_request",
     "'shape' must be"),
    ("data do not fill the shape", {"json": {"inputs": [{**ONE, "data": [0.0] * 20}]}}, 400, "invalid_request",
     "has 21 elements, 'data' has 20"),
    ("ragged nested data", {"json": {"inputs": [{**ONE, "shape": [2, 21], "data": [[0.0] * 21, [0.0] * 20]}]}}, 400,
     "invalid_request", "regular array"),
    ("a string in FP64 data", {"json": {"inputs": [{**ONE, "data": ["x"] + [0.0] * 20}]}}, 400, "invalid_request",
     "found a string"),
    ("a float in INT64 data", {"json": {"inputs": [{**ONE, "datatype": "INT64", "data": [0.5] + [0] * 20}]}}, 400,
     "invalid_request", "whole numbers"),
    ("integer beyond INT64", {"json": {"inputs": [{**ONE, "datatype": "INT64", "data": [2**70] + [0] * 20}]}}, 400,
     "invalid_request", "does not fit INT64"),
    ("a number beyond float64", {"content": b'{"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 2], '
                                            b'"data": [1e999, 0]}]}'}, 422, "not_finite", "beyond the range"),
    ("unknown output", {"json": {"inputs": [{**ONE, "data": [0.0] * 21}], "outputs": [{"name": "loss"}]}}, 400,
     "invalid_request", "unknown output 'loss'"),
    ("two inputs of one name", {"json": {"inputs": [{**ONE, "data": [0.0] * 21}] * 2}}, 400, "invalid_request",
     "distinct"),
    ("matrix of the wrong width", {"json": {"inputs": [{**ONE, "shape": [1, 20], "data": [0.0] * 20}]}}, 422,
     "width", "expected shape [N, 21]"),
    ("BYTES for a numeric column", "bytes", 422, "non_numeric", "the column is numeric"),
    ("a missing column", {"json": {"inputs": [column("f00", [1.0], "FP64")]}}, 422, "missing_column",
     "missing input tensor(s) ['f01'"),
    ("null in an integer tensor", {"json": {"inputs": [{**ONE, "datatype": "INT32", "data": [None] + [0] * 20}]}},
     400, "invalid_request", "needs a float datatype"),
    ("binary without the header length", {"content": json.dumps({"inputs": [{**ONE, "parameters": {
        "binary_data_size": 168}}]}).encode() + bytes(168)}, 400, "invalid_request", "Inference-Header-Content-Length"),
    ("header length past the body", _binary({"inputs": [{**ONE, "data": [0.0] * 21}]}, b"", 10**6), 400,
     "invalid_request", "Inference-Header-Content-Length must be"),
    ("binary size too small", _binary({"inputs": [{**ONE, "parameters": {"binary_data_size": 160}}]}, bytes(160)),
     400, "invalid_request", "need 21 x 8 = 168"),
    ("binary size past the body", _binary({"inputs": [{**ONE, "parameters": {"binary_data_size": 999}}]},
                                           bytes(168)), 400, "invalid_request", "more than the 168 bytes"),
    ("bytes after the tensors", _binary({"inputs": [{**ONE, "parameters": {"binary_data_size": 168}}]}, bytes(170)),
     400, "invalid_request", "2 bytes after"),
    ("infinity in binary", _binary({"inputs": [{**ONE, "parameters": {"binary_data_size": 168}}]},
                                   np.full(21, np.inf).tobytes()), 422, "not_finite", "not finite"),
    ("bad UTF-8 in BYTES", "utf8", 422, "invalid_value", "UTF-8"),
    ("JSON nested too deeply", {"content": b'{"inputs":' + b"[" * 100000 + b"]" * 100000 + b"}"}, 400,
     "invalid_request", "nested too deeply"),
    ("nested data deeper than the shape", {"json": {"inputs": [{**ONE, "data": [[[0.0] * 21]]}]}}, 400,
     "invalid_request", "nested 'data' has shape [1, 1, 21]"),
    ("BYTES shape bigger than its bytes", _binary({"inputs": [{"name": "f00", "datatype": "BYTES", "shape": [2**31 - 1,
                                                   2**31 - 1], "parameters": {"binary_data_size": 0}}]}, b""), 400,
     "invalid_request", "room for at most 0"),
    ("text content type", {"content": b"{}", "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media_type", "got text/plain"),
    ("compressed body", {"content": b"{}", "headers": {"content-encoding": "gzip"}}, 415,
     "unsupported_media_type", "Content-Encoding"),
    ("another model", {"url": "/v2/models/other/infer", "json": {"inputs": [{**ONE, "data": [0.0] * 21}]}}, 404,
     "not_found", "no model named 'other'"),
]


@pytest.mark.parametrize("what, kwargs, status, reason, words", BAD_V2_REQUESTS, ids=[b[0] for b in BAD_V2_REQUESTS])
def test_bad_v2_requests_are_counted_4xx_in_the_protocols_error_form(numeric_model, numeric_client: TestClient, what,
                                                                    kwargs, status, reason, words) -> None:
    _, _, rows = numeric_model
    if kwargs == "bytes":
        kwargs = {"json": {"inputs": [column(n, ["1"] if n == "f00" else [1.0],
                                             "BYTES" if n == "f00" else "FP64") for n in rows.columns]}}
    elif kwargs == "utf8":
        doc = {"inputs": [{"name": "f00", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]}
        kwargs = _binary(doc, struct.pack("<I", 2) + b"\xff\xfe")
    kwargs = dict(kwargs)
    url = kwargs.pop("url", INFER)
    before = metric(numeric_client, "anomaly_vae_requests_rejected_total", endpoint="v2_infer", reason=reason)
    r = numeric_client.post(url, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert words in body["error"] and body["reason"] == reason, body
    after = metric(numeric_client, "anomaly_vae_requests_rejected_total", endpoint="v2_infer", reason=reason)
    assert after == before + 1
    ok = numeric_client.post(INFER, json={"inputs": [{**ONE, "data": rows.iloc[0].tolist()}]})
    assert ok.status_code == 200  # and the service goes on


def test_v2_scores_are_counted_under_their_own_endpoint(numeric_model, numeric_client: TestClient) -> None:
    _, det, rows = numeric_model
    before = metric(numeric_client, "anomaly_vae_samples_scored_total", endpoint="v2_infer")
    flagged_before = metric(numeric_client, "anomaly_vae_anomalies_total", endpoint="v2_infer")
    r = numeric_client.post(INFER, json={"inputs": [{"name": "input", "datatype": "FP64", "shape": [50, 21],
                                                     "data": rows.iloc[:50].fillna(0).to_numpy().tolist()}]})
    flags = outputs(r)["is_anomaly"]
    assert metric(numeric_client, "anomaly_vae_samples_scored_total", endpoint="v2_infer") == before + 50
    assert metric(numeric_client, "anomaly_vae_anomalies_total", endpoint="v2_infer") == flagged_before + flags.sum()


def test_an_oversized_v2_body_is_a_413(numeric_client: TestClient) -> None:
    from service.app import SETTINGS

    r = numeric_client.post(INFER, content=b"x" * (SETTINGS.max_body_bytes + 1),
                            headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413 and r.json()["reason"] == "too_large"


def test_the_onnxruntime_backend_scores_within_the_export_tolerance(numeric_model, monkeypatch) -> None:
    from anomaly_vae.onnx import ONNX_ATOL, ONNX_RTOL

    path, det, rows = numeric_model
    rows = rows.iloc[:200]
    expected = det.anomaly_score(rows)
    monkeypatch.setenv("ANOMALY_VAE_BACKEND", "onnxruntime")
    with serving(path) as c:
        assert c.get("/model").json()["backend"] == "onnxruntime"
        body, headers = binary_request([("input", "FP64", list(rows.shape), rows.to_numpy("<f8").tobytes())])
        got = outputs(c.post(INFER, content=body, headers=headers))
        np.testing.assert_allclose(got["score"], expected, rtol=ONNX_RTOL, atol=ONNX_ATOL)
        np.testing.assert_array_equal(got["p_value"], det.p_values_from_scores(got["score"]))
        one = c.post("/score", json={"instances": rows.iloc[:1].to_numpy().tolist()}).json()["scores"]
        np.testing.assert_allclose(one, expected[:1], rtol=ONNX_RTOL, atol=ONNX_ATOL)
