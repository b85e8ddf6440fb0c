"""The service over HTTP, in process (``AnomalyVAE.to_asgi()`` and a test client): every endpoint,
the scores against the Python API, the bad-input list, and the metrics they move."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp
from starlette.testclient import TestClient

from anomaly_vae import VAEAnomalyDetector, load_detector
from anomaly_vae.io import load_image
from anomaly_vae.io.tables import EXACT_FLOATS

from .servicekit import metric, serving

PIL = pytest.importorskip("PIL.Image")
EXE = str(Path(sys.executable).parent / "anomaly-vae")


@pytest.fixture(scope="module")
def table(cardio: pd.DataFrame) -> pd.DataFrame:
    """cardio with an id and a categorical column."""
    df = cardio.copy()
    df.insert(0, "id", [f"p{i:05d}" for i in range(len(df))])
    df["site"] = np.random.RandomState(0).choice(["north", "south", "east"], len(df))
    return df


@pytest.fixture(scope="module")
def table_model(table: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    normal = table[table["label"] == "normal"].drop(columns=["id", "label"])
    det = VAEAnomalyDetector(epochs=15, random_state=0).fit(normal.iloc[:1200])
    out = tmp_path_factory.mktemp("svc") / "table-model"
    det.save(out)
    return out


@pytest.fixture(scope="module")
def client(table_model: Path) -> Iterator[TestClient]:
    with serving(table_model) as c:
        yield c


@pytest.fixture(scope="module")
def det(table_model: Path) -> VAEAnomalyDetector:
    return load_detector(table_model)


def features(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=["id", "label"])


def test_score_matches_the_python_api_exactly(client: TestClient, det: VAEAnomalyDetector, table: pd.DataFrame) -> None:
    rows = features(table).iloc[1300:1400].reset_index(drop=True)
    rows.loc[4, "f07"] = np.nan  # a missing value: null in JSON
    as_lists = [[None if isinstance(v, float) and np.isnan(v) else v for v in r] for r in rows.to_numpy().tolist()]
    as_objects = [dict(reversed(list(zip(rows.columns, r)))) for r in as_lists]
    expected = det.anomaly_score(rows)
    for instances in (as_lists, as_objects):
        r = client.post("/score", json={"instances": instances})
        assert r.status_code == 200, r.text
        body = r.json()
        assert np.array_equal(body["scores"], expected)
        assert np.array_equal(body["p_values"], det.p_values(rows))
        assert body["is_anomaly"] == (det.predict(rows) == -1).tolist()
        assert body["threshold"] == det.threshold_ and body["alpha"] == det.alpha_
        assert body["model_version"] == "sha256:" + det.model_card_["weights"]["sha256"][:12]
    one = client.post("/score", json={"instances": as_objects[7:8]}).json()
    assert one["scores"] == [expected[7]]


def test_concurrent_requests_get_their_own_exact_scores(client: TestClient, det: VAEAnomalyDetector,
                                                        table: pd.DataFrame) -> None:
    rows = features(table).iloc[:96]
    expected = det.anomaly_score(rows)
    records = rows.to_dict("records")
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: client.post("/score", json={"instances": records[i:i + 1 + i % 3]}),
                                range(0, 96, 4)))
    for i, r in zip(range(0, 96, 4), answers):
        assert r.status_code == 200
        assert np.array_equal(r.json()["scores"], expected[i:i + 1 + i % 3])


BAD_SCORE_REQUESTS = [
    # (what, request kwargs, status, reason, words in the message)
    ("empty instances", {"json": {"instances": []}}, 422, "empty", "'instances' is empty"),
    ("instance not a row", {"json": {"instances": ["row"]}}, 422, "shape", "instance 0: expected a list of 22 values"),
    ("wrong width", {"json": {"instances": [[1.0, 2.0]]}}, 422, "width", "instance 0 has 2 values, the model expects 22"),
    ("missing column", "missing", 422, "missing_column", "instance 0: missing column(s) ['f05']"),
    ("word in a number column", "word", 422, "non_numeric", "column 'f02': expected a number or null, got a string 'high'"),
    ("NaN", "nan", 422, "not_finite", "column 'f00': nan is not allowed"),
    ("infinity", "inf", 422, "not_finite", "column 'f00': inf is not allowed"),
    ("not JSON", {"content": b"{instances", "headers": {"content-type": "application/json"}}, 400, "invalid_request",
     "Invalid JSON"),
    ("no instances field", {"json": {"rows": [[1]]}}, 400, "invalid_request", "validation error"),
    ("instances not a list", {"json": {"instances": 5}}, 400, "invalid_request", "validation error"),
    ("text body", {"content": b"1,2,3", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type",
     "/score accepts Content-Type application/json, got text/plain"),
    ("pickle body", {"content": b"\x80\x04K\x01.", "headers": {"content-type": "application/vnd.bentoml+pickle"}}, 415,
     "unsupported_media_type", "got application/vnd.bentoml+pickle"),
    ("form body", {"data": {"instances": "[]"}}, 415, "unsupported_media_type", "got application/x-www-form-urlencoded"),
    ("over the size limit", {"content": b" " * (33 << 20), "headers": {"content-type": "application/json"}}, 413,
     "too_large", "over the limit of 33554432 bytes"),
    ("chunked over the size limit", {"content": iter([b" " * (1 << 20)] * 33), "headers": {"content-type": "application/json"}},
     413, "too_large", "over the limit"),
]


@pytest.mark.parametrize("what, request_kwargs, status, reason, words", BAD_SCORE_REQUESTS,
                         ids=[c[0] for c in BAD_SCORE_REQUESTS])
def test_bad_input_is_a_counted_4xx_that_says_what_is_wrong(client: TestClient, table: pd.DataFrame, what,
                                                            request_kwargs, status, reason, words) -> None:
    good = features(table).iloc[0].to_dict()
    if isinstance(request_kwargs, str):
        inst = dict(good)
        if request_kwargs == "missing":
            del inst["f05"]
        elif request_kwargs == "word":
            inst["f02"] = "high"
        request_kwargs = {"json": {"instances": [inst]}}
        if what in ("NaN", "infinity"):
            text = json.dumps({"instances": [[0.0] * 21 + ["north"]]}).replace("0.0", "NaN" if what == "NaN" else "Infinity", 1)
            request_kwargs = {"content": text.encode(), "headers": {"content-type": "application/json"}}
    before = metric(client, "anomaly_vae_requests_rejected_total", endpoint="score", reason=reason)
    r = client.post("/score", **request_kwargs)
    assert r.status_code == status, r.text
    assert words in r.text
    if status != 400:  # BentoML's own 400 answers carry pydantic's detail instead of a reason
        assert r.json()["reason"] == reason
    assert metric(client, "anomaly_vae_requests_rejected_total", endpoint="score", reason=reason) == before + 1
    ok = client.post("/score", json={"instances": [good]})
    assert ok.status_code == 200  # the server keeps serving


def test_keys_beyond_the_models_columns_are_ignored(client: TestClient, table: pd.DataFrame) -> None:
    """Extra columns are ignored on every face (the core's one input rulebook); /score refused
    them with 422 unknown_column, and /docs.json said so."""
    rows = features(table).iloc[:3].to_dict("records")
    plain = client.post("/score", json={"instances": rows})
    extra = client.post("/score", json={"instances": [dict(r, bogus=1) for r in rows]})
    assert extra.status_code == 200 and extra.json() == plain.json()
    doc = client.get("/docs.json").json()
    instances = doc["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["instances"]
    assert "additionalProperties" not in instances["items"]["anyOf"][1]


def test_json_integer_beyond_float64_is_a_422_naming_instance_and_column(client: TestClient) -> None:
    """It was an OverflowError, answered 500."""
    row = [0.0] * 21 + ["north"]
    r = client.post("/score", json={"instances": [row, [0.0] * 5 + [-(10**400)] + [0.0] * 15 + ["north"]]})
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == "not_finite"
    assert "instance 1, column 'f05': the integer -100000... (401 digits) is beyond the range" in r.json()["error"]
    assert client.post("/score", json={"instances": [row]}).status_code == 200


def test_a_finite_extreme_value_is_a_flagged_finite_score_and_infinity_a_422(client: TestClient,
                                                                              det: VAEAnomalyDetector) -> None:
    """1e300 (a finite float64 whose standardised value overflows float32) gave a NaN or infinite
    score and a 500 after the metrics had counted it; it is scored as what it is, a huge finite
    score, and flagged. 1e400 is what JSON decodes to infinity: an input error."""
    before = metric(client, "anomaly_vae_anomalies_total", endpoint="score")
    for value in (1e300, -1e300, 1e39):
        r = client.post("/score", json={"instances": [[value] + [0.0] * 20 + ["north"]]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["is_anomaly"] == [True] and np.isfinite(body["scores"][0]) and body["scores"][0] > det.threshold_
    assert metric(client, "anomaly_vae_anomalies_total", endpoint="score") == before + 3
    assert np.isfinite(metric(client, "anomaly_vae_score_nats_sum"))
    text = '{"instances": [[1e400' + ", 0.0" * 20 + ', "north"]]}'
    r = client.post("/score", content=text.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["reason"] == "not_finite"
    assert "column 'f00': inf is not allowed (a number beyond +-1.8e308 reads as infinity" in r.json()["error"]


def test_a_failed_request_records_nothing_in_the_metrics(client: TestClient, table: pd.DataFrame) -> None:
    """Samples and anomalies were counted, and the scores put in the histogram and the drift
    window, before the answer failed (a 500)."""
    import bentoml

    scorer = bentoml.get_current_service().scorer
    names = ("anomaly_vae_samples_scored_total", "anomaly_vae_anomalies_total")
    before = [metric(client, n, endpoint="score") for n in names] + [metric(client, "anomaly_vae_score_nats_count"),
                                                                    metric(client, "anomaly_vae_score_drift_window_samples")]
    score = scorer.batcher._fn
    scorer.batcher._fn = lambda x: np.full(len(x), np.inf)  # a core that breaks its promise of finite scores
    try:
        r = client.post("/score", json={"instances": features(table).iloc[:3].to_dict("records")})
    finally:
        scorer.batcher._fn = score
    assert r.status_code == 500
    after = [metric(client, n, endpoint="score") for n in names] + [metric(client, "anomaly_vae_score_nats_count"),
                                                                   metric(client, "anomaly_vae_score_drift_window_samples")]
    assert after == before


@pytest.mark.parametrize("route, field", [("/score_csv", "file"), ("/score_images", "files")])
def test_a_long_upload_filename_is_a_422_not_a_500(client: TestClient, route: str, field: str) -> None:
    """BentoML stores an upload under a temporary name that ends with the client's file name: a
    name over 255 bytes was an OSError, answered 500."""
    before = metric(client, "anomaly_vae_requests_rejected_total", endpoint=route[1:], reason="invalid_request")
    for name in ("a" * 300 + ".csv", "é" * 130 + ".csv"):  # 304 bytes; 264 bytes in 134 characters
        r = client.post(route, files={field: (name, b"f00\n1\n", "text/csv")})
        assert r.status_code == 422, r.text
        assert r.json()["reason"] == "invalid_request" and "rename the file to at most 240 bytes" in r.json()["error"]
    assert metric(client, "anomaly_vae_requests_rejected_total", endpoint=route[1:],
                  reason="invalid_request") == before + 2
    r = client.post(route, files={field: ("a" * 236 + ".csv", b"f00\n1\n", "text/csv")})
    assert r.status_code == 422 and "rename" not in r.text  # at the limit: read, and refused for its content


def test_a_request_with_two_content_types_is_a_counted_400(client: TestClient, table: pd.DataFrame) -> None:
    """The guard read the last Content-Type, BentoML the first: a pickle body passed the guard."""
    body = json.dumps({"instances": features(table).iloc[:1].values.tolist()}).encode()
    before = metric(client, "anomaly_vae_requests_rejected_total", endpoint="score", reason="invalid_request")
    for types in (["application/vnd.bentoml+pickle", "application/json"], ["application/json", "application/json"]):
        r = client.post("/score", content=body, headers=[("content-type", t) for t in types])
        assert r.status_code == 400 and "2 Content-Type headers" in r.json()["error"]
    assert metric(client, "anomaly_vae_requests_rejected_total", endpoint="score", reason="invalid_request") == before + 2


def test_openapi_document_agrees_with_the_service(client: TestClient, det: VAEAnomalyDetector) -> None:
    """BentoML's document said 400's detail was a string (it is a list), left out 408, 413, 415,
    422 and 503, and took any list as instances. The schema-based check is in the integration
    tests (schemathesis against a real server)."""
    doc = client.get("/docs.json").json()
    error = doc["components"]["schemas"]["Error"]
    assert error["properties"]["detail"]["type"] == "array" and "reason" in error["properties"]
    for route in ("/score", "/score_csv", "/score_images"):
        post = doc["paths"][route]["post"]
        assert {"200", "400", "408", "413", "415", "422", "503"} <= set(post["responses"])
        assert post["requestBody"]["required"] is True
    answers = {400: client.post("/score", json={"rows": []}), 415: client.post("/score", content=b"x"),
               422: client.post("/score", json={"instances": [[1.0]]})}
    for status, r in answers.items():
        assert r.status_code == status and set(r.json()) <= set(error["properties"]) and isinstance(r.json()["error"], str)
    instances = doc["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["instances"]
    as_list, as_object = instances["items"]["anyOf"]
    names = det.preprocessor_.names
    assert as_list["minItems"] == as_list["maxItems"] == len(names) and as_object["required"] == names
    assert as_object["properties"]["f00"] == {"type": "number", "minimum": -1.7976931348623157e308,
                                              "maximum": 1.7976931348623157e308, "nullable": True}
    assert as_object["properties"]["site"]["anyOf"][0] == {"type": "string"}
    alpha = doc["paths"]["/score"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["alpha"]
    assert alpha["nullable"] is True and "anyOf" not in json.dumps(alpha)


def test_the_score_body_is_the_documented_score_response(client: TestClient, table: pd.DataFrame) -> None:
    """/score writes its body with json.dumps, not through pydantic: the body must still be the
    ScoreResponse that /docs.json documents for its 200."""
    from service.schemas import ScoreResponse

    r = client.post("/score", json={"instances": features(table).iloc[:5].to_dict("records")})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    answer = ScoreResponse.model_validate_json(r.text)
    assert answer.model_dump() == r.json() and len(answer.scores) == 5
    schema = client.get("/docs.json").json()["paths"]["/score"]["post"]["responses"]["200"]["content"]
    properties = schema["application/json"]["schema"]["properties"]
    assert set(properties) == set(ScoreResponse.model_fields) == set(r.json())


def test_score_csv_answers_the_csv_the_command_line_writes(client: TestClient, table_model: Path, table: pd.DataFrame,
                                                           tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    table.iloc[1200:1500].drop(columns=["label"]).to_csv(src, index=False)
    cli = tmp_path / "cli.csv"
    run = subprocess.run([EXE, "score", str(table_model), str(src), "--out", str(cli), "--id-column", "id",
                          "--explain", "3", "--quiet"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    before = metric(client, "anomaly_vae_samples_scored_total", endpoint="score_csv")
    r = client.post("/score_csv", files={"file": ("in.csv", src.read_bytes(), "text/csv")},
                    data={"id_column": "id", "explain": "3"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.content == cli.read_bytes()
    assert r.headers["x-rows"] == "300" and r.headers["x-rows-failed"] == "0"
    assert metric(client, "anomaly_vae_samples_scored_total", endpoint="score_csv") == before + 300


def test_score_csv_rows_that_cannot_be_scored(client: TestClient, table: pd.DataFrame) -> None:
    df = table.iloc[:40].drop(columns=["label"]).astype({"f02": object})
    df.loc[5, "f02"] = "high"
    df.loc[9, "f04"] = np.inf
    data = df.to_csv(index=False).encode()
    r = client.post("/score_csv", files={"file": ("x.csv", data, "text/csv")}, data={"id_column": "id"})
    assert r.status_code == 422
    assert r.json()["reason"] == "bad_csv"
    assert "2 of 40 rows could not be scored (id p00005: column 'f02': expected a number, got 'high'" in r.json()["error"]
    r = client.post("/score_csv", files={"file": ("x.csv", data, "text/csv")}, data={"on_error": "column"})
    assert r.status_code == 200 and r.headers["x-rows-failed"] == "2"
    out = pd.read_csv(io.BytesIO(r.content), **EXACT_FLOATS)
    assert len(out) == 40 and out["row"].tolist() == list(range(40))
    assert out["error"].notna().tolist() == [i in (5, 9) for i in range(40)]
    assert np.isnan(out.loc[5, "score"]) and out["score"].notna().sum() == 38


@pytest.mark.parametrize("what, kwargs, status, reason, words", [
    ("missing column", {"files": {"file": ("x.csv", b"f00,f01\n1,2\n", "text/csv")}}, 422, "missing_column",
     "missing column(s) ['f02'"),
    ("empty file", {"files": {"file": ("x.csv", b"", "text/csv")}}, 422, "bad_csv", ""),
    ("URL instead of a file", {"data": {"file": "http://127.0.0.1:9/x.csv"}, "files": {"other": ("a", b"1")}}, 422,
     "invalid_request", "form field 'file' must be a file upload"),
    ("JSON body", {"json": {"file": "x"}}, 415, "unsupported_media_type", "accepts Content-Type multipart/form-data"),
    ("no file", {"data": {"sep": ","}, "files": {"other": ("a", b"1")}}, 400, "invalid_request", "file"),
])
def test_score_csv_bad_uploads(client: TestClient, what, kwargs, status, reason, words) -> None:
    before = metric(client, "anomaly_vae_requests_rejected_total", endpoint="score_csv", reason=reason)
    r = client.post("/score_csv", **kwargs)
    assert r.status_code == status, r.text
    assert words in r.text
    assert metric(client, "anomaly_vae_requests_rejected_total", endpoint="score_csv", reason=reason) == before + 1


def test_model_card_probes_and_docs(client: TestClient, det: VAEAnomalyDetector) -> None:
    card = client.get("/model").json()
    assert card["model_version"].startswith("sha256:") and card["calibration"]["threshold"] == det.threshold_
    assert card["input"]["preprocessing"]["columns"][0]["name"] == "f00"
    assert client.get("/livez").status_code == 200 and client.get("/readyz").status_code == 200
    paths = client.get("/docs.json").json()["paths"]
    assert {"/score", "/score_csv", "/score_images"} <= set(paths)
    assert client.post("/model").status_code in (404, 405)


def test_metrics_after_a_known_batch(table_model: Path, det: VAEAnomalyDetector, table: pd.DataFrame) -> None:
    """A fresh server: counters, the histogram's bucket at the threshold, gauges and the drift
    statistic, all against what the Python API says for the same rows."""
    rows = pd.concat([features(table[table.label == "normal"]).iloc[1200:1350],
                      features(table[table.label != "normal"]).iloc[:50]])
    scores = det.anomaly_score(rows)
    flagged = int((scores > det.threshold_).sum())
    assert 0 < flagged < len(rows)
    with serving(table_model) as c:
        before = {n: metric(c, n, endpoint="score") for n in ("anomaly_vae_samples_scored_total", "anomaly_vae_anomalies_total")}
        at_threshold = dict(le=repr(det.threshold_))
        bucket_before = metric(c, "anomaly_vae_score_nats_bucket", **at_threshold)
        records = rows.to_dict("records")
        for i in range(0, len(records), 50):
            assert c.post("/score", json={"instances": records[i:i + 50]}).status_code == 200
        assert metric(c, "anomaly_vae_samples_scored_total", endpoint="score") == before["anomaly_vae_samples_scored_total"] + 200
        assert metric(c, "anomaly_vae_anomalies_total", endpoint="score") == before["anomaly_vae_anomalies_total"] + flagged
        assert metric(c, "anomaly_vae_score_nats_bucket", **at_threshold) == bucket_before + 200 - flagged
        assert metric(c, "anomaly_vae_threshold_nats") == det.threshold_
        assert metric(c, "anomaly_vae_alpha") == det.alpha_
        assert metric(c, "anomaly_vae_model_info", score="elbo", input_kind="table") == 1
        expected = ks_2samp(scores, det.calibration_scores_, method="asymp").statistic
        assert metric(c, "anomaly_vae_score_drift_ks") == pytest.approx(expected, abs=1e-12)
        assert metric(c, "anomaly_vae_score_drift_window_samples") == 200


def test_without_a_loadable_model_the_server_is_live_but_not_ready(tmp_path: Path) -> None:
    with serving(tmp_path / "no-such-model") as c:
        assert c.get("/livez").status_code == 200
        assert c.get("/readyz").status_code == 503
        for r in (c.post("/score", json={"instances": [[1.0]]}), c.get("/model"),
                  c.post("/score_csv", files={"file": ("x.csv", b"a\n1\n", "text/csv")})):
            assert r.status_code == 503
        assert "no-such-model is not a model directory" in c.post("/score", json={"instances": [[1.0]]}).text
        assert c.get("/metrics").status_code == 200


# -- images -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_model(fashion_sample, tmp_path_factory: pytest.TempPathFactory) -> Path:
    images, labels = fashion_sample
    det = VAEAnomalyDetector(epochs=2, latent_dim=4, conv_channels=(8, 16), alpha=0.1, random_state=0)
    det.fit(images[labels == 0])
    out = tmp_path_factory.mktemp("svc") / "image-model"
    det.save(out)
    return out


def _png(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    PIL.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def test_images_by_upload_and_as_json(image_model: Path, fashion_sample, tmp_path: Path) -> None:
    images, labels = fashion_sample
    det = load_detector(image_model)
    shirts, sneaker = images[labels == 0][:3], images[labels == 7][0]
    colour = np.stack([np.kron(sneaker, np.ones((2, 2), dtype=np.uint8))[:40, :40]] * 3, axis=-1)  # 40x40 RGB
    uploads = [("files", (f"shirt{i}.png", _png(a), "image/png")) for i, a in enumerate(shirts)]
    uploads.append(("files", ("sneaker.jpg", _png(colour, "JPEG"), "image/jpeg")))
    with serving(image_model) as c:
        r = c.post("/score_images", files=uploads)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["filename"] for x in results] == ["shirt0.png", "shirt1.png", "shirt2.png", "sneaker.jpg"]
        paths = []
        for i, (_, (name, data, _)) in enumerate(uploads):
            paths.append(tmp_path / f"{i}-{name}")
            paths[-1].write_bytes(data)
        loaded = np.stack([load_image(p, (28, 28), 1) for p in paths])  # what the command line reads
        assert np.array_equal([x["score"] for x in results], det.anomaly_score(loaded))
        # the same images as JSON nested lists (uint8 0-255)
        j = c.post("/score", json={"instances": shirts.tolist()})
        assert j.status_code == 200 and np.array_equal(j.json()["scores"], det.anomaly_score(shirts))

        corrupt = _png(shirts[0])[:60]
        before = metric(c, "anomaly_vae_requests_rejected_total", endpoint="score_images", reason="bad_image")
        r = c.post("/score_images", files=[uploads[0], ("files", ("broken.png", corrupt, "image/png"))])
        assert r.status_code == 422 and "'broken.png'" in r.json()["error"] and r.json()["reason"] == "bad_image"
        r = c.post("/score_images", files=[("files", ("notes.txt", b"hello", "text/plain"))])
        assert r.status_code == 422 and "'notes.txt': not an image" in r.json()["error"]
        assert metric(c, "anomaly_vae_requests_rejected_total", endpoint="score_images", reason="bad_image") == before + 2
        r = c.post("/score", json={"instances": [images[0][:20].tolist()]})
        assert r.status_code == 422 and r.json()["reason"] == "shape" and "28x28" in r.json()["error"]
        r = c.post("/score_csv", files={"file": ("x.csv", b"a\n1\n", "text/csv")})
        assert r.status_code == 422 and "this model scores images" in r.json()["error"]
        assert c.post("/score_images", files=uploads[:1]).status_code == 200  # still serving
