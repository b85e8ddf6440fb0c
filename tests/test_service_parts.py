"""The service's parts without HTTP (JSON instances are ``tests/test_instances.py``): the adaptive batcher, the
request guard, the histogram buckets and the cross-worker drift window, the settings and the scorer."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ks_2samp

from service import metrics as service_metrics
from service.batcher import MicroBatcher, Overloaded
from service.guard import RequestGuard, RouteRule
from service.metrics import DriftWindow, score_buckets


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


# -- the request guard -----------------------------------------------------------------------
def guarded(headers: dict[str, str] | list[tuple[str, str]], chunks: list[bytes], slow: bool = False,
            **options) -> tuple[int, dict[str, str], list[str], int]:
    """One POST /score through a RequestGuard (limit 100 bytes) in front of an app that answers
    200: (status, answer headers, reasons counted, body chunks left unread). ``slow``: the
    client sends ``chunks`` and then nothing more."""
    counted: list[str] = []
    pending = [{"type": "http.request", "body": c, "more_body": slow or k < len(chunks) - 1}
               for k, c in enumerate(chunks)]

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> dict:
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)  # a client that stopped sending
        raise AssertionError("not reached")

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    items = headers.items() if isinstance(headers, dict) else headers
    scope = {"type": "http", "method": "POST", "path": "/score",
             "headers": [(k.lower().encode(), v.encode()) for k, v in items]}
    guard = RequestGuard(app, {"/score": RouteRule("application/json")}, max_body_bytes=100,
                         count=lambda endpoint, reason: counted.append(reason), **options)
    asyncio.run(guard(scope, receive, send))
    start = sent[0]
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, counted, len(pending)


JSON = {"content-type": "application/json"}


def test_a_slow_body_is_answered_408_after_the_body_timeout() -> None:
    """Connections that sent their headers and 5 body bytes were held as long as the client liked."""
    t0 = time.monotonic()
    status, headers, counted, _ = guarded({**JSON, "content-length": "50"}, [b"12345"], slow=True, body_timeout_s=0.3)
    assert status == 408 and headers["connection"] == "close" and counted == ["timeout"]
    assert 0.3 <= time.monotonic() - t0 < 5
    assert guarded({**JSON, "content-length": "10"}, [b"12345", b"67890"], body_timeout_s=0.3)[0] == 200


def test_an_early_answer_reads_the_body_first_so_that_a_plain_client_can_read_it() -> None:
    """A 413 answered from the Content-Length with the body unread made the server close a socket
    with data in it: a client without Expect: 100-continue got a reset instead of the 413."""
    status, headers, counted, left = guarded({**JSON, "content-length": "300"}, [b" " * 100] * 3)
    assert (status, left, counted) == (413, 0, ["too_large"]) and "connection" not in headers
    status, headers, _, left = guarded({"content-type": "text/csv"}, [b"a" * 50] * 2)  # 415, chunked
    assert (status, left) == (415, 0) and "connection" not in headers
    # a client that waits for 100 Continue has sent nothing: answered at once, nothing read
    status, headers, _, left = guarded({**JSON, "content-length": "300", "expect": "100-continue"}, [b" " * 100] * 3)
    assert (status, left, headers["connection"]) == (413, 3, "close")
    # past drain_bytes the body is not read: the answer, then the connection is closed
    status, headers, _, left = guarded({**JSON, "content-length": "300"}, [b" " * 100] * 3, drain_bytes=200)
    assert (status, left, headers["connection"]) == (413, 3, "close")
    status, headers, _, left = guarded(JSON, [b" " * 100] * 5, drain_bytes=250)  # chunked, over both
    assert status == 413 and left == 2 and headers["connection"] == "close"


def test_a_body_whose_last_message_crosses_the_limit_is_answered_at_once() -> None:
    """The guard drained after the message that crossed the limit even when it was the last one,
    and waited for more until the body deadline (30 s) before answering 413."""
    t0 = time.monotonic()
    status, headers, counted, left = guarded(JSON, [b" " * 60, b" " * 60], body_timeout_s=10)
    assert (status, left, counted) == (413, 0, ["too_large"]) and "connection" not in headers
    assert time.monotonic() - t0 < 5


def test_a_request_with_two_content_types_is_refused() -> None:
    """The guard read the last Content-Type header, Starlette and BentoML the first: a pickle
    body with a JSON type after it passed the guard."""
    for types in (["application/vnd.bentoml+pickle", "application/json"],
                  ["application/json", "application/vnd.bentoml+pickle"], ["application/json"] * 2):
        status, _, counted, _ = guarded([("content-type", t) for t in types], [b"{}"])
        assert (status, counted) == (400, ["invalid_request"])


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


def test_non_finite_scores_never_reach_the_histogram_or_the_drift_window() -> None:
    """One infinite score made anomaly_vae_score_nats_sum +Inf until a restart, one NaN made the
    drift KS NaN for the whole window."""
    from prometheus_client import REGISTRY

    cal = np.random.RandomState(0).normal(10, 2, 500)
    m = service_metrics.ServiceMetrics(cal, float(np.quantile(cal, 0.99)), 0.01, info={"model_version": "t"})
    try:
        def sample(name: str) -> float:
            return REGISTRY.get_sample_value(name) or 0.0  # other tests of this process observed scores too

        count, total = sample("anomaly_vae_score_nats_count"), sample("anomaly_vae_score_nats_sum")
        scores = np.array([9.0, np.inf, np.nan, -np.inf, 11.0])
        m.observe("score", scores, scores > m.threshold_value)
        assert sample("anomaly_vae_score_nats_count") - count == 2
        assert sample("anomaly_vae_score_nats_sum") - total == pytest.approx(20.0)
        assert sorted(m.window.recent(60)) == [9.0, 11.0]
        values = dict(line.split(" ") for line in m.drift_text().splitlines() if not line.startswith("#"))
        expected = ks_2samp([9.0, 11.0], cal, method="asymp").statistic
        assert float(values["anomaly_vae_score_drift_ks"]) == pytest.approx(expected, abs=1e-12)
    finally:
        m.unregister()


def test_two_services_do_not_share_metrics_dir(tmp_path: Path) -> None:
    """Each `bentoml serve` (the parent of its workers) gets its own directory beside BentoML's
    shared one, which every server start empties; directories of servers that stopped go."""
    import subprocess

    shared = tmp_path / "prometheus_multiproc_dir"
    shared.mkdir()
    mine = service_metrics.own_multiproc_dir(shared, os.getpid())
    assert mine == service_metrics.own_multiproc_dir(shared, os.getpid())  # every worker of one server
    other = service_metrics.own_multiproc_dir(shared, os.getppid())
    assert other != mine and other.parent == mine.parent != shared
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = mine.parent / f"server-{gone.pid}-{int(time.time() * 100)}"  # of a server that has stopped
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"x")
    reused = mine.parent / f"server-{os.getpid()}-12345"  # this process id, of a server long gone
    reused.mkdir()
    service_metrics.own_multiproc_dir(shared, os.getpid())
    assert not stale.exists() and not reused.exists() and mine.is_dir() and other.is_dir()


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


# -- settings ---------------------------------------------------------------------------------
def test_settings_defaults_and_every_variable() -> None:
    from service.settings import Settings

    assert Settings.from_env({}) == Settings()
    assert Settings().max_body_bytes == 32 * 1024 * 1024
    env = {"ANOMALY_VAE_MODEL": " models/cardio ", "ANOMALY_VAE_WORKERS": "3", "ANOMALY_VAE_TORCH_THREADS": "2",
           "ANOMALY_VAE_MAX_BODY_MB": "0.5", "ANOMALY_VAE_BODY_TIMEOUT_S": "2.5", "ANOMALY_VAE_MAX_BATCH_ROWS": "64",
           "ANOMALY_VAE_DRIFT_WINDOW_SECONDS": "60", "ANOMALY_VAE_DRIFT_WINDOW_SIZE": "500", "OTHER": "x",
           "ANOMALY_VAE_MODEL_NAME": "fraud-v2", "ANOMALY_VAE_BACKEND": "onnxruntime"}
    s = Settings.from_env(env)
    assert (s.model, s.workers, s.torch_threads, s.max_body_mb, s.body_timeout_s, s.max_batch_rows,
            s.drift_window_seconds, s.drift_window_size) == ("models/cardio", 3, 2, 0.5, 2.5, 64, 60.0, 500)
    assert (s.model_name, s.backend) == ("fraud-v2", "onnxruntime")
    assert s.max_body_bytes == 512 * 1024
    with pytest.raises(AttributeError):
        s.workers = 4  # frozen: read once, then passed around


@pytest.mark.parametrize("name, value, words", [
    ("WORKERS", "two", "ANOMALY_VAE_WORKERS must be a positive integer, got 'two'"),
    ("WORKERS", "0", "ANOMALY_VAE_WORKERS must be a positive integer, got '0'"),
    ("TORCH_THREADS", "1.5", "ANOMALY_VAE_TORCH_THREADS must be a positive integer, got '1.5'"),
    ("MAX_BATCH_ROWS", "-8", "ANOMALY_VAE_MAX_BATCH_ROWS must be a positive integer, got '-8'"),
    ("DRIFT_WINDOW_SIZE", "", "ANOMALY_VAE_DRIFT_WINDOW_SIZE must be a positive integer, got ''"),
    ("MAX_BODY_MB", "x", "ANOMALY_VAE_MAX_BODY_MB must be a positive number, got 'x'"),
    ("MAX_BODY_MB", "0", "ANOMALY_VAE_MAX_BODY_MB must be a positive number, got '0'"),
    ("BODY_TIMEOUT_S", "inf", "ANOMALY_VAE_BODY_TIMEOUT_S must be a positive number, got 'inf'"),
    ("DRIFT_WINDOW_SECONDS", "nan", "ANOMALY_VAE_DRIFT_WINDOW_SECONDS must be a positive number, got 'nan'"),
    ("MODEL", "  ", "ANOMALY_VAE_MODEL must not be empty"),
    ("MODEL_NAME", "a/b", "ANOMALY_VAE_MODEL_NAME must be 1 to 100 letters, digits"),
    ("MODEL_NAME", "..", "ANOMALY_VAE_MODEL_NAME must be 1 to 100 letters, digits"),
    ("BACKEND", "tensorrt", "ANOMALY_VAE_BACKEND must be one of torch, onnxruntime, got 'tensorrt'"),
])
def test_a_bad_setting_is_an_error_naming_the_variable_and_the_value(name, value, words) -> None:
    from service.settings import Settings, SettingsError

    with pytest.raises(SettingsError) as err:
        Settings.from_env({"ANOMALY_VAE_" + name: value})
    assert words in str(err.value)


def test_settings_are_read_in_one_place() -> None:
    """Every ANOMALY_VAE_* variable the service reads is a field of Settings, read by
    Settings.from_env; no other module of the service reads the environment for them."""
    import re

    from service.settings import Settings

    root = Path(__file__).resolve().parents[1] / "service"
    for path in root.glob("*.py"):
        if path.name != "settings.py":  # metrics.py reads and sets PROMETHEUS_MULTIPROC_DIR, BentoML's
            for line in path.read_text().splitlines():
                assert not re.search(r"environ\b|getenv", line) or "PROMETHEUS_MULTIPROC_DIR" in line, (path, line)
    documented = set(re.findall(r"ANOMALY_VAE_([A-Z_]+)", (root / "settings.py").read_text()))
    assert {f.upper() for f in Settings.__dataclass_fields__} == documented


# -- the scorer -------------------------------------------------------------------------------
def test_scorer_judges_with_the_core_and_records_apart(numeric, tmp_path: Path) -> None:
    """judge computes p-values and flags and records nothing; record counts; scores through the
    batcher are the Python API's."""
    from prometheus_client import REGISTRY

    from anomaly_vae import load_detector
    from service.scorer import Scorer
    from service.settings import Settings

    det, rows = numeric
    det.save(tmp_path / "model")
    scorer = Scorer(load_detector(tmp_path / "model"), Settings(max_batch_rows=16))
    try:
        def scored() -> float:
            return REGISTRY.get_sample_value("anomaly_vae_samples_scored_total", {"endpoint": "score"}) or 0.0

        async def run() -> np.ndarray:
            return await scorer.score(await scorer.prepare(rows.iloc[:40].values.tolist()))

        scores = asyncio.run(run())
        assert np.array_equal(scores, det.anomaly_score(rows.iloc[:40]))
        before = scored()
        p, flagged = scorer.judge(scores)
        assert np.array_equal(p, det.p_values(rows.iloc[:40])) and np.array_equal(flagged, scores > det.threshold_)
        assert scored() == before
        scorer.record("score", scores, flagged)
        assert scored() == before + 40
        with pytest.raises(RuntimeError, match="1 non-finite score"):
            scorer.judge(np.array([1.0, np.nan]))
        assert scorer.card["model_version"] == scorer.model_version and scorer.input_kind == "table"
    finally:
        scorer.close()


def test_a_new_metrics_object_takes_over_from_one_still_registered() -> None:
    """Two test clients' lifespans over one ASGI app: the second service's metrics must not clash
    with the first's (there is no module global that remembers the first any more)."""
    from prometheus_client import REGISTRY

    cal = np.random.RandomState(0).normal(10, 2, 500)
    first = service_metrics.ServiceMetrics(cal, 13.0, 0.01, info={"model_version": "a"})
    second = service_metrics.ServiceMetrics(cal, 14.0, 0.05, info={"model_version": "b"})
    try:
        assert REGISTRY.get_sample_value("anomaly_vae_threshold_nats") == 14.0
        first.unregister()  # the first one's owner letting go late leaves the second registered
        assert REGISTRY.get_sample_value("anomaly_vae_alpha") == 0.05
    finally:
        second.unregister()
    assert REGISTRY.get_sample_value("anomaly_vae_alpha") is None
