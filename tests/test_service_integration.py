"""The service as people run it: `anomaly-vae export`, a real `bentoml serve` subprocess with two
workers on 127.0.0.1 (and a second server beside it in the same BentoML home), a real Prometheus
server scraping it, schemathesis checking it against its OpenAPI document, plain HTTP clients, and
`bentoml build` packing a Bento that serves on its own. Every server is started here and stopped
here."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from anomaly_vae import VAEAnomalyDetector, load_detector

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MONITORING = ROOT / "service" / "monitoring"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "ANOMALY_VAE_MODEL")}
    env.update(BENTOML_DO_NOT_TRACK="true", **extra)
    return env


class Server:
    """A subprocess in its own process group, stopped with everything it started."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "wb")
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_for(self, url: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{url} not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._out.close()


@pytest.fixture(scope="module")
def rows(cardio: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    features = cardio.drop(columns=["label"])
    return features[cardio["label"] == "normal"], features[cardio["label"] != "normal"]


@pytest.fixture(scope="module")
def stored_model(rows, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, VAEAnomalyDetector, str]:
    """A model trained on cardio's normal rows, exported into a fresh BentoML home."""
    normal, _ = rows
    home = tmp_path_factory.mktemp("bentoml-home")
    det = VAEAnomalyDetector(epochs=15, random_state=0).fit(normal.iloc[:1200])
    det.save(home / "model-dir")
    r = subprocess.run([str(BIN / "anomaly-vae"), "export", str(home / "model-dir")], env=clean_env(BENTOML_HOME=str(home)),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    tag = re.search(r"as (anomaly_vae:\w+)", r.stdout).group(1)
    assert (home / "models" / "anomaly_vae" / tag.split(":")[1] / "model.safetensors").is_file()
    return home, load_detector(home / "model-dir"), tag


@pytest.fixture(scope="module")
def served(stored_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Server]]:
    home, _, _ = stored_model
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    server = Server([str(BIN / "bentoml"), "serve", "--host", "127.0.0.1", "--port", str(port)], ROOT,
                    clean_env(BENTOML_HOME=str(home), ANOMALY_VAE_WORKERS="2"), log)
    try:
        server.wait_for(f"http://127.0.0.1:{port}/readyz")
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.stop()


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", headers={"Connection": "close"}, timeout=10).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def post_score(url: str, instances: list[Any]) -> httpx.Response:
    # a new connection per request, so that both workers' accept() calls get some
    return httpx.post(f"{url}/score", json={"instances": instances}, headers={"Connection": "close"}, timeout=60)


def test_served_scores_are_exact_and_metrics_add_up_over_two_workers(served, stored_model, rows) -> None:
    url, server = served
    _, det, tag = stored_model
    normal, _ = rows
    sample = normal.iloc[1200:1500]
    expected = det.anomaly_score(sample)
    records = sample.to_dict("records")
    before = scrape(url)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: post_score(url, records[i:i + 2]), range(0, 300, 2)))
    for i, r in zip(range(0, 300, 2), answers):
        assert r.status_code == 200, r.text
        assert np.array_equal(r.json()["scores"], expected[i:i + 2])
        assert r.json()["model_version"] == tag.split(":")[1]
    log = server.log.read_text()
    workers = set(re.findall(r"entry_service:anomaly_vae:(\d+)\].*path=/score,", log))
    assert workers == {"1", "2"}, "both workers should have answered some of 150 new connections"
    ks = ks_2samp(expected, det.calibration_scores_, method="asymp").statistic
    scored = 'anomaly_vae_samples_scored_total{endpoint="score"}'
    for _ in range(6):  # whichever worker answers the scrape, the totals are those of both
        m = scrape(url)
        assert m[scored] - before.get(scored, 0) == 300
        assert m["anomaly_vae_score_drift_window_samples"] == 300
        assert m["anomaly_vae_score_drift_ks"] == pytest.approx(ks, abs=1e-12)
        assert m["anomaly_vae_threshold_nats"] == det.threshold_


def test_bad_input_never_takes_the_server_down(served, rows) -> None:
    url, server = served
    normal, _ = rows
    good = normal.iloc[:1].to_dict("records")
    nan_body = json.dumps({"instances": [[0.0] * 21]}).replace("0.0", "NaN", 1).encode()
    cases = [
        ({"content": b"\x80\x04K\x01.", "headers": {"content-type": "application/vnd.bentoml+pickle"}}, 415),
        ({"content": b"[" * 100, "headers": {"content-type": "application/json"}}, 400),
        ({"content": nan_body, "headers": {"content-type": "application/json"}}, 422),
        ({"json": {"instances": [{"f00": "x"}]}}, 422),
        ({"content": b"0" * (33 << 20), "headers": {"content-type": "application/json"}}, 413),
    ]
    for kwargs, status in cases:
        r = httpx.post(f"{url}/score", timeout=60, **kwargs)
        assert r.status_code == status, r.text
        assert post_score(url, good).status_code == 200
    r = httpx.post(f"{url}/score_csv", data={"file": "http://127.0.0.1:1/x.csv"}, files={"x": ("x", b"1")}, timeout=60)
    assert r.status_code == 422 and "never fetched from URLs" in r.text
    assert not re.search(r"status=5\d\d", server.log.read_text())


def test_triton_client_scores_over_the_open_inference_protocol_json_and_binary(served, stored_model, rows) -> None:
    """Triton's own HTTP client (tritonclient.http) against the real server: health, metadata, and
    inference with JSON and binary tensors, per column and as a matrix, scores equal to the Python API."""
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    url, server = served
    _, det, tag = stored_model
    normal, anomalous = rows
    batch = pd.concat([normal.iloc[1200:1400], anomalous.iloc[:100]])
    expected = det.anomaly_score(batch)
    client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("anomaly_vae")
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        meta = client.get_model_metadata("anomaly_vae")
        assert meta["versions"] == [tag.split(":")[1]]
        assert [i["name"] for i in meta["inputs"]] == list(batch.columns)
        for binary in (False, True):
            columns = []
            for name in batch.columns:
                tensor = triton.InferInput(name, [len(batch)], "FP64")
                tensor.set_data_from_numpy(batch[name].to_numpy(np.float64), binary_data=binary)
                columns.append(tensor)
            matrix = triton.InferInput("input", list(batch.shape), "FP64")
            matrix.set_data_from_numpy(batch.to_numpy(np.float64), binary_data=binary)
            asked = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("score", "p_value", "is_anomaly")]
            for inputs in (columns, [matrix]):
                result = client.infer("anomaly_vae", inputs, outputs=asked, model_version=meta["versions"][0],
                                      request_id="batch-1")
                np.testing.assert_array_equal(result.as_numpy("score"), expected)
                np.testing.assert_array_equal(result.as_numpy("p_value"), det.p_values(batch))
                np.testing.assert_array_equal(result.as_numpy("is_anomaly"), det.predict(batch) == -1)
                assert result.get_response()["id"] == "batch-1"
        only = client.infer("anomaly_vae", [matrix], outputs=[triton.InferRequestedOutput("score")])
        assert only.as_numpy("p_value") is None
        np.testing.assert_array_equal(only.as_numpy("score"), expected)
        wrong = triton.InferInput("input", [1, 3], "FP32")
        wrong.set_data_from_numpy(np.zeros((1, 3), np.float32))
        with pytest.raises(InferenceServerException, match=r"expected shape \[N, 21\]") as err:
            client.infer("anomaly_vae", [wrong])
        assert err.value.status() == "422"
    finally:
        client.close()
    assert not re.search(r"status=5\d\d", server.log.read_text())


@pytest.fixture(scope="module")
def prometheus(served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.skip("prometheus is not installed (Debian package 'prometheus'; .ci/run installs it)")
    url, _ = served
    work = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(MONITORING / "alerts.yml")],
        "scrape_configs": [{"job_name": "anomaly-vae", "static_configs": [{"targets": [url.removeprefix("http://")]}]}],
    }
    (work / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    server = Server([exe, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
                     f"--web.listen-address=127.0.0.1:{port}"], work, clean_env(), work / "prometheus.log")
    try:
        server.wait_for(f"http://127.0.0.1:{port}/-/ready", timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def promql(prom: str, query: str, at: float | None = None) -> list[dict[str, Any]]:
    params = {"query": query, **({"time": f"{at:.3f}"} if at is not None else {})}
    body = httpx.get(f"{prom}/api/v1/query", params=params, timeout=10).json()
    assert body["status"] == "success", (query, body)
    return body["data"]["result"]


def scalar(prom: str, query: str, at: float | None = None) -> float | None:
    result = promql(prom, query, at)
    return float(result[0]["value"][1]) if result else None


def wait_until(check, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"condition not met in {timeout} s")


def test_prometheus_measures_the_anomaly_rate_of_a_known_batch(served, prometheus, stored_model, rows) -> None:
    url, _ = served
    _, det, _ = stored_model
    normal, anomalous = rows
    total = 'sum(anomaly_vae_samples_scored_total{endpoint="score"})'  # other tests score over V2 too
    wait_until(lambda: scalar(prometheus, 'up{job="anomaly-vae"}') == 1)
    start = scrape(url)['anomaly_vae_samples_scored_total{endpoint="score"}']
    wait_until(lambda: scalar(prometheus, total) == start)
    t_before = time.time()
    time.sleep(2.5)  # a few scrapes of the counters before the batch, inside the window below

    batch = pd.concat([normal.iloc[1500:1650], anomalous.iloc[:50]])
    flagged = int((det.anomaly_score(batch) > det.threshold_).sum())
    assert 0 < flagged < 200
    records = batch.to_dict("records")
    for i in range(0, 200, 20):
        assert post_score(url, records[i:i + 20]).status_code == 200
    wait_until(lambda: scalar(prometheus, total) == start + 200)
    t_after = time.time()
    # the counters' change between the two instants (increase() would extrapolate to the window's
    # edges, differently for a counter that starts near zero; over minutes that washes out)
    w = f"{int((t_after - t_before) * 1000)}ms"

    def change(series: str) -> str:
        return f"(sum({series}) - sum({series} offset {w}))"

    rate = scalar(prometheus, f"{change('anomaly_vae_anomalies_total')} / {change('anomaly_vae_samples_scored_total')}",
                  at=t_after)
    assert rate == pytest.approx(flagged / 200, abs=1e-9)
    at_threshold = 'anomaly_vae_score_nats_bucket{le="%r"}' % det.threshold_
    normal_share = scalar(prometheus, f"{change(at_threshold)} / {change('anomaly_vae_score_nats_count')}", at=t_after)
    assert normal_share == pytest.approx(1 - flagged / 200, abs=1e-9)  # the bucket boundary is the threshold


def test_alert_rules_and_dashboard_queries_run_in_prometheus(served, prometheus) -> None:
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    names = {r["name"] for g in groups for r in g["rules"]}
    assert {"AnomalyRateHigh", "ScoreDistributionDrift", "RequestsRejected", "AnomalyServiceDown"} <= names
    wait_until(lambda: all(r.get("health") == "ok" for g in httpx.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
                           for r in g["rules"]))
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    known = set(httpx.get(f"{prometheus}/api/v1/label/__name__/values", timeout=10).json()["data"])
    for expr in exprs:
        promql(prometheus, expr.replace("$__rate_interval", "1m"))  # valid PromQL
        for name in re.findall(r"\b((?:anomaly_vae|bentoml)_[a-z_]+)", expr):
            assert name in known, f"{name} (in the dashboard) is not a metric the service exports"


def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus'; .ci/run installs it)")
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"], ["test", "rules", "alerts_test.yml"]):
        r = subprocess.run([promtool, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "SUCCESS" in r.stdout + r.stderr


def test_bentoml_build_packs_a_bento_that_serves_on_its_own(stored_model, rows, tmp_path: Path) -> None:
    home, det, tag = stored_model
    env = clean_env(BENTOML_HOME=str(home))
    r = subprocess.run([str(BIN / "bentoml"), "build", "--output", "tag"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    bento = re.search(r"__tag__:(\S+)", r.stdout).group(1)
    archive = tmp_path / "anomaly_vae.bento"
    r = subprocess.run([str(BIN / "bentoml"), "export", bento, str(archive)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    with tarfile.open(archive) as t:
        names = {n.removeprefix("./") for n in t.getnames()}
    version = tag.split(":")[1]
    assert {f"models/anomaly_vae/{version}/model.json", f"models/anomaly_vae/{version}/model.safetensors",
            "src/service/app.py", "src/anomaly_vae/detector.py", "src/service/monitoring/alerts.yml"} <= names
    assert not any(n.endswith((".pkl", ".pickle")) for n in names)
    # every module of the core and the service, subpackages included (anomaly_vae/*.py packed only the top level)
    sources = {f"src/{p.relative_to(ROOT).as_posix()}" for d in ("anomaly_vae", "service") for p in (ROOT / d).rglob("*.py")}
    assert sources <= names, sorted(sources - names)

    # a fresh BentoML home with nothing but the imported Bento, served from another directory
    other = tmp_path / "elsewhere"
    other.mkdir()
    env2 = clean_env(BENTOML_HOME=str(tmp_path / "home2"))
    r = subprocess.run([str(BIN / "bentoml"), "import", str(archive)], env=env2, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    port = free_port()
    server = Server([str(BIN / "bentoml"), "serve", bento, "--host", "127.0.0.1", "--port", str(port)], other, env2,
                    tmp_path / "bento.log")
    try:
        server.wait_for(f"http://127.0.0.1:{port}/readyz")
        normal, _ = rows
        got = post_score(f"http://127.0.0.1:{port}", normal.iloc[:5].to_dict("records"))
        assert got.status_code == 200
        assert np.array_equal(got.json()["scores"], det.anomaly_score(normal.iloc[:5]))
        assert got.json()["model_version"] == version
    finally:
        server.stop()



# -- hardening: a second server, plain clients, slow clients, the OpenAPI document -------------
@pytest.fixture(scope="module")
def second_served(served, stored_model, rows, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[str, VAEAnomalyDetector]]:
    """Another model served from the same BentoML home while the first server runs (BentoML
    empties the home's metrics directory when a server starts), with a 2 s body timeout."""
    home, _, _ = stored_model
    normal, _ = rows
    work = tmp_path_factory.mktemp("second")
    det = VAEAnomalyDetector(epochs=5, alpha=0.05, random_state=1).fit(normal.iloc[:600])
    det.save(work / "model")
    port = free_port()
    server = Server([str(BIN / "bentoml"), "serve", "--host", "127.0.0.1", "--port", str(port)], ROOT,
                    clean_env(BENTOML_HOME=str(home), ANOMALY_VAE_MODEL=str(work / "model"),
                              ANOMALY_VAE_BODY_TIMEOUT_S="2"), work / "serve.log")
    try:
        server.wait_for(f"http://127.0.0.1:{port}/readyz")
        yield f"http://127.0.0.1:{port}", det
    finally:
        server.stop()


def test_two_services_do_not_share_metrics_dir(served, second_served, stored_model, rows) -> None:
    """The second server emptied the first one's metrics directory, and each then reported the
    other's files: the other model's threshold and version, the other's scores in its drift."""
    url, _ = served
    url2, det2 = second_served
    _, det, tag = stored_model
    normal, _ = rows
    scored = 'anomaly_vae_samples_scored_total{endpoint="score"}'
    before, before2 = scrape(url), scrape(url2)
    assert post_score(url, normal.iloc[:5].to_dict("records")).status_code == 200
    m, m2 = scrape(url), scrape(url2)
    assert m[scored] == before[scored] + 5 and m2[scored] == before2[scored] == 0
    assert m["anomaly_vae_score_drift_window_samples"] == before["anomaly_vae_score_drift_window_samples"] + 5
    assert m2["anomaly_vae_score_drift_window_samples"] == 0
    assert (m["anomaly_vae_threshold_nats"], m2["anomaly_vae_threshold_nats"]) == (det.threshold_, det2.threshold_)
    versions = [{k for k in x if k.startswith("anomaly_vae_model_info")} for x in (m, m2)]
    assert all(len(v) == 1 for v in versions) and tag.split(":")[1] in next(iter(versions[0]))
    assert versions[0] != versions[1]


def test_a_plain_client_reads_the_413_of_an_oversized_body(served) -> None:
    """Python's urllib sends the whole body before it reads the answer (no Expect: 100-continue):
    it got `Connection reset by peer` instead of the 413."""
    url, server = served
    request = urllib.request.Request(f"{url}/score", data=b" " * (48 << 20), method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=60)
    assert err.value.code == 413
    assert json.loads(err.value.read())["reason"] == "too_large"
    assert post_score(url, [[0.0] * 21]).status_code == 200


def test_slow_body_connections_are_dropped_after_the_body_timeout(second_served) -> None:
    """Connections that sent their headers and 5 body bytes were held for as long as the client
    liked (1,000 of them for 75 s)."""
    url, _ = second_served
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        t0 = time.monotonic()
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"ins")
        answer = b""
        while chunk := sock.recv(65536):  # until the server closes the connection
            answer += chunk
        elapsed = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408 ") and b'"reason": "timeout"' in answer
    assert 2 <= elapsed < 15
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200


def test_schemathesis_finds_no_server_error_and_no_conformance_failure(served, tmp_path: Path) -> None:
    """The OpenAPI document and the service disagreed (400's detail, 413/415/422/503 missing,
    schema-valid requests refused). A bounded schemathesis run: /score with every check, schema-
    valid requests included; the upload routes without that one, since no schema says which bytes
    make a readable CSV file or image."""
    url, server = served
    checks = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
              "response_schema_conformance,negative_data_rejection")
    runs = [["--include-path", "/score", "--checks", checks + ",positive_data_acceptance"],
            ["--exclude-path", "/score", "--checks", checks]]
    for args in runs:
        r = subprocess.run([str(BIN / "schemathesis"), "run", f"{url}/docs.json", *args, "--max-examples", "40",
                            "--seed", "1", "--workers", "1", "--request-timeout", "60", "--no-color"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=540, env=clean_env())
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert not re.search(r"status=5\d\d", server.log.read_text())
