"""Prometheus metrics of the scoring service (prometheus-client), correct with several workers.

Counters and histograms go through prometheus-client's multiprocess mode, which BentoML switches
on for ``bentoml serve`` (``PROMETHEUS_MULTIPROC_DIR``): every worker writes its own file and any
worker's ``/metrics`` adds them up. The drift statistic cannot be added up that way (a KS distance
of the union is not a sum of per-worker values), so every worker keeps its recent scores in a
memory-mapped ring file in the same directory, and the worker that answers a scrape computes the
KS distance of all workers' recent scores together against the calibration scores.

BentoML gives every ``bentoml serve`` the same directory, ``$BENTOML_HOME/prometheus_multiproc_dir``,
and empties it when a server starts: a second server with the same home would delete the first
one's files, and each would then report the other's metrics (the other model's threshold, a false
drift alert). ``use_own_multiproc_dir`` gives each server a directory of its own.

Names follow Prometheus conventions (``_total`` counters, units in names); labels are bounded:
``endpoint`` is one of ``ENDPOINTS`` and ``reason`` one of ``REJECT_REASONS``.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_vae.instances import REASONS

log = logging.getLogger(__name__)

ENDPOINTS = ("score", "score_csv", "score_images", "v2_infer")
# every reason a request can be rejected for (4xx): the instance reasons of anomaly_vae.instances,
# and the ones of the request as a whole
REJECT_REASONS = (*REASONS, "bad_csv", "bad_image", "invalid_request", "too_large", "unsupported_media_type",
                  "timeout", "not_found")
_registering = threading.Lock()  # releasing names and registering new collectors is one step

def use_own_multiproc_dir() -> Path | None:
    """In a ``bentoml serve`` worker, point ``PROMETHEUS_MULTIPROC_DIR`` at a directory of this
    server's own (``own_multiproc_dir``), for BentoML's metrics and these. Call it before
    ``prometheus_client`` is imported. Anywhere else (a test's own directory, no directory) it
    does nothing. Returns the directory it chose."""
    shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not shared:
        return None
    from bentoml._internal.configuration.containers import BentoMLContainer

    if os.path.realpath(shared) != os.path.realpath(BentoMLContainer.prometheus_multiproc_dir.get()):
        return None
    if "prometheus_client" in sys.modules:  # it has read the variable already
        log.warning("prometheus_client was imported before the service: its metrics stay in %s, which another "
                    "`bentoml serve` with the same BENTOML_HOME would share", shared)
        return None
    # every worker of one server is a child of the server's process manager: the server is its parent
    own = own_multiproc_dir(Path(shared), os.getppid())
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(own)
    return own


def own_multiproc_dir(shared: Path, server_pid: int) -> Path:
    """``anomaly_vae_metrics/server-PID-START`` beside ``shared``: the directory of the server
    process ``server_pid`` (START, its start time, tells a reused process id apart). Directories
    of servers that are no longer running are removed here."""
    root = shared.parent / "anomaly_vae_metrics"
    root.mkdir(parents=True, exist_ok=True)
    for d in root.iterdir():
        m = re.fullmatch(r"server-(\d+)-(\d+)", d.name)
        if m and _start_time(int(m.group(1))) not in (int(m.group(2)), -1):
            shutil.rmtree(d, ignore_errors=True)
    own = root / f"server-{server_pid}-{_start_time(server_pid)}"
    own.mkdir(exist_ok=True)
    return own


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (1/100 s since the epoch); None if there is none, -1 if it
    cannot be told."""
    import psutil

    try:
        return round(psutil.Process(pid).create_time() * 100)
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:
        return -1


def score_buckets(calibration_scores: np.ndarray, threshold: float) -> list[float]:
    """Histogram bucket upper bounds: calibration-score quantiles below the threshold (rounded to 4
    significant digits), the threshold itself exactly, then steps of the threshold's distance from
    the median above it, so both the normal bulk and how far anomalies go are visible."""
    cal = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    levels = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
    below = {float(f"{q:.4g}") for q in np.quantile(cal, levels)}
    median = float(np.median(cal))
    step = threshold - median if threshold > median else max(abs(threshold), 1.0) * 0.1
    above = {float(f"{threshold + step * m:.4g}") for m in (0.5, 1, 2, 4, 8, 16, 32)}
    bounds = sorted(b for b in below | above if b != threshold and np.isfinite(b))
    return sorted({*(b for b in bounds if b < threshold), threshold, *(b for b in bounds if b > threshold)})


class DriftWindow:
    """The recent scores of this worker, (time, score) pairs in a ring of ``capacity``; in a file
    under ``directory`` when given, so that the scraping worker can read every worker's ring."""

    def __init__(self, capacity: int, directory: str | None) -> None:
        self.capacity = int(capacity)
        self.directory = directory
        self._pos = 0
        self._lock = threading.Lock()
        if directory:
            self.path = Path(directory) / f"anomaly_vae_window_{os.getpid()}.f64"
            self._ring = np.memmap(self.path, dtype=np.float64, mode="w+", shape=(self.capacity, 2))
        else:
            self.path = None
            self._ring = np.zeros((self.capacity, 2), dtype=np.float64)

    def add(self, scores: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float64)[-self.capacity:]
        n = len(scores)
        if n == 0:
            return
        with self._lock:
            idx = (self._pos + np.arange(n)) % self.capacity
            self._ring[idx, 1] = scores  # the score first, then its time: a reader never sees a time without its score
            self._ring[idx, 0] = time.time()
            self._pos = (self._pos + n) % self.capacity

    def recent(self, seconds: float) -> np.ndarray:
        """Scores of the last ``seconds``, from every worker's ring (or this one's)."""
        since = time.time() - seconds
        if self.path is None:
            rings = [self._ring.copy()]
        else:
            rings = []
            for f in glob.glob(str(Path(self.directory) / "anomaly_vae_window_*.f64")):
                try:
                    rings.append(np.fromfile(f, dtype=np.float64).reshape(-1, 2))
                except (OSError, ValueError):  # a worker's file being created right now
                    continue
        if not rings:
            return np.zeros(0)
        both = np.concatenate(rings)
        return both[both[:, 0] >= since, 1]


# the names this module registers in prometheus-client's registry (counters add _total, histograms _bucket ...)
METRIC_NAMES = ("anomaly_vae_samples_scored", "anomaly_vae_anomalies", "anomaly_vae_requests_rejected",
                "anomaly_vae_score_nats", "anomaly_vae_batch_rows", "anomaly_vae_threshold_nats", "anomaly_vae_alpha",
                "anomaly_vae_calibration_samples", "anomaly_vae_model_info")


def _release_names(registry: Any) -> None:
    """Unregister whatever collectors hold ``METRIC_NAMES`` in ``registry``: those of an earlier
    ``ServiceMetrics`` of this process that was not unregistered (two test clients' lifespans over
    one ASGI app). prometheus-client has no public lookup of a collector by name; without its
    ``_names_to_collectors`` nothing is released, and a clash is prometheus-client's own ValueError."""
    held = getattr(registry, "_names_to_collectors", None)
    if not isinstance(held, dict):
        return
    names = {n + suffix for n in METRIC_NAMES for suffix in ("", "_total", "_created", "_bucket", "_count", "_sum")}
    for collector in {id(c): c for name, c in list(held.items()) if name in names}.values():
        try:
            registry.unregister(collector)
        except KeyError:
            pass


class ServiceMetrics:
    """The service's metrics, registered in prometheus-client's registry. One at a time per process:
    a new one (a new model in tests) takes the names over from the one before, unless that one
    was unregistered already (``unregister``, ``Scorer.close``)."""

    def __init__(self, calibration_scores: np.ndarray, threshold: float, alpha: float | None, info: dict[str, str],
                 window_seconds: float = 600.0, window_size: int = 10000) -> None:
        import prometheus_client as pc  # here, not at import: BentoML sets the multiprocess dir first

        self.calibration = np.sort(np.asarray(calibration_scores, dtype=np.float64))
        self.threshold_value = float(threshold)
        self.window_seconds = float(window_seconds)
        reg = pc.REGISTRY
        with _registering:
            _release_names(reg)
            self.scored = pc.Counter("anomaly_vae_samples_scored", "Samples (rows or images) scored",
                                     ["endpoint"], registry=reg)
            self.anomalies = pc.Counter("anomaly_vae_anomalies", "Samples flagged as anomalous (score above the "
                                        "threshold)", ["endpoint"], registry=reg)
            self.rejected = pc.Counter("anomaly_vae_requests_rejected", "Requests answered 4xx, by reason",
                                       ["endpoint", "reason"], registry=reg)
            self.score = pc.Histogram("anomaly_vae_score_nats", "Anomaly scores (nats, higher = more anomalous); "
                                      "buckets from the calibration scores, one boundary exactly at the threshold",
                                      buckets=score_buckets(self.calibration, self.threshold_value), registry=reg)
            self.batch_rows = pc.Histogram("anomaly_vae_batch_rows", "Rows per forward pass (adaptive batching of "
                                           "concurrent requests)", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
                                           registry=reg)
            self.threshold = pc.Gauge("anomaly_vae_threshold_nats", "Anomaly threshold: a score above it is flagged",
                                      multiprocess_mode="livemostrecent", registry=reg)
            self.alpha = pc.Gauge("anomaly_vae_alpha", "Target false-alarm rate the threshold was calibrated for "
                                  "(NaN when the threshold was not chosen by alpha)",
                                  multiprocess_mode="livemostrecent", registry=reg)
            self.calibration_samples = pc.Gauge("anomaly_vae_calibration_samples", "Number of calibration scores",
                                                multiprocess_mode="livemostrecent", registry=reg)
            self.info = pc.Gauge("anomaly_vae_model_info", "The model being served (value 1)", sorted(info),
                                 multiprocess_mode="livemostrecent", registry=reg)
            self._collectors = [self.scored, self.anomalies, self.rejected, self.score, self.batch_rows,
                                self.threshold, self.alpha, self.calibration_samples, self.info]
        self.threshold.set(self.threshold_value)
        self.alpha.set(float("nan") if alpha is None else float(alpha))
        self.calibration_samples.set(len(self.calibration))
        self.info.labels(**info).set(1)
        self._children = {}
        for e in ENDPOINTS:  # every series exists from the start, so rate() and alerts see zeros
            self._children[e] = (self.scored.labels(e), self.anomalies.labels(e))
            for r in REJECT_REASONS:
                self.rejected.labels(e, r)
        self.window = DriftWindow(window_size, os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

    def unregister(self) -> None:
        import prometheus_client as pc

        for c in self._collectors:
            try:
                pc.REGISTRY.unregister(c)
            except KeyError:
                pass

    def observe(self, endpoint: str, scores: np.ndarray, flagged: np.ndarray) -> None:
        """Count scored samples and anomalies, and add the scores to the histogram and the window.
        Call it once the answer exists: a request that fails records nothing. A non-finite score
        (the core never gives one) is counted but kept out of the histogram, its sum and the
        drift window, where one NaN or infinity would spoil them until a restart."""
        scores = np.asarray(scores, dtype=np.float64)
        if len(scores) == 0:
            return
        scored, anomalies = self._children[endpoint]
        scored.inc(len(scores))
        anomalies.inc(int(np.count_nonzero(flagged)))
        finite = np.isfinite(scores)
        if not finite.all():
            log.warning("%d non-finite score(s) kept out of the score histogram and the drift window",
                        int((~finite).sum()))
            scores = scores[finite]
        self._observe_histogram(scores)
        self.window.add(scores)

    def _observe_histogram(self, scores: np.ndarray) -> None:
        buckets = getattr(self.score, "_buckets", None)
        upper = getattr(self.score, "_upper_bounds", None)
        total = getattr(self.score, "_sum", None)
        if buckets is None or upper is None or total is None or len(buckets) != len(upper):
            for s in scores:  # prometheus-client changed its internals: the slow, public way
                self.score.observe(float(s))
            return
        # one increment per bucket instead of one observe() per score (a 100k-row CSV would
        # otherwise spend longer on the histogram than on the model); the same counts as observe():
        # a score goes into the first bucket whose upper bound is >= it
        idx = np.searchsorted(np.asarray(upper, dtype=np.float64), scores, side="left")
        for b, n in zip(*np.unique(idx, return_counts=True)):
            buckets[int(b)].inc(int(n))
        total.inc(float(scores.sum()))

    def reject(self, endpoint: str, reason: str) -> None:
        self.rejected.labels(endpoint if endpoint in ENDPOINTS else "other",
                             reason if reason in REJECT_REASONS else "invalid_request").inc()

    def drift_text(self) -> str:
        """The drift gauges in the text exposition format, for appending to ``/metrics``."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import GaugeMetricFamily
        from scipy.stats import ks_2samp

        recent = self.window.recent(self.window_seconds)
        if len(recent) and len(self.calibration):
            test = ks_2samp(recent, self.calibration, method="asymp")
            stat, pvalue = float(test.statistic), float(test.pvalue)
        else:
            stat = pvalue = float("nan")
        families = [
            ("anomaly_vae_score_drift_ks", "Kolmogorov-Smirnov distance between the scores of the recent window "
             "(all workers) and the calibration scores; NaN when the window is empty", stat),
            ("anomaly_vae_score_drift_ks_pvalue", "Asymptotic p-value of the two-sample KS test of the recent window "
             "against the calibration scores", pvalue),
            ("anomaly_vae_score_drift_window_samples", "Scores in the recent window (all workers)", float(len(recent))),
            ("anomaly_vae_score_drift_window_seconds", "Length of the recent window", self.window_seconds),
        ]

        class _Drift:
            def collect(self) -> Any:
                for name, doc, value in families:
                    yield GaugeMetricFamily(name, doc, value=value)

        registry = CollectorRegistry()
        registry.register(_Drift())
        return generate_latest(registry).decode()
