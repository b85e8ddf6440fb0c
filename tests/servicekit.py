"""The in-process service for tests: one ASGI app per process, a test client per model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

__all__ = ["metric", "serving"]

_APP: list[object] = []


@contextmanager
def serving(model_dir: Path) -> Iterator[TestClient]:
    """A test client whose lifespan loads ``model_dir``. The ASGI app is built once per process:
    BentoML registers its own request metrics when it builds one, and a second build in the same
    process would register them twice. Each client's lifespan makes a new service instance."""
    previous = os.environ.get("ANOMALY_VAE_MODEL")
    os.environ["ANOMALY_VAE_MODEL"] = str(model_dir)
    try:
        if not _APP:
            from service.app import AnomalyVAE

            _APP.append(AnomalyVAE.to_asgi())
        with TestClient(_APP[0], raise_server_exceptions=False) as client:
            yield client
    finally:
        if previous is None:
            os.environ.pop("ANOMALY_VAE_MODEL", None)
        else:
            os.environ["ANOMALY_VAE_MODEL"] = previous


def metric(client: TestClient, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError(f"{name} {labels} not in /metrics")
