"""The service's settings: every ``ANOMALY_VAE_*`` environment variable it reads, read and checked here.

=====================================  ===========================  ==============================================
variable                               default                      meaning
=====================================  ===========================  ==============================================
``ANOMALY_VAE_MODEL``                  ``anomaly_vae:latest``       a model directory or a BentoML model tag (put
                                                                    one in the store with ``anomaly-vae export``)
``ANOMALY_VAE_MODEL_NAME``             ``anomaly_vae``              the model's name in the Open Inference Protocol
                                                                    routes (``/v2/models/{name}/infer``)
``ANOMALY_VAE_BACKEND``                ``torch``                    ``torch`` (scores exactly the Python API's) or
                                                                    ``onnxruntime`` (the model's ONNX graph: faster,
                                                                    scores within ``anomaly_vae.onnx.ONNX_RTOL``)
``ANOMALY_VAE_WORKERS``                1                            worker processes
``ANOMALY_VAE_TORCH_THREADS``          1                            torch threads per worker
``ANOMALY_VAE_MAX_BODY_MB``            32                           larger request bodies are answered 413
``ANOMALY_VAE_BODY_TIMEOUT_S``         30                           a body that has not arrived this long after its
                                                                    headers is answered 408 and its connection
                                                                    closed (raise it for large uploads over slow
                                                                    links)
``ANOMALY_VAE_MAX_BATCH_ROWS``         1024                         rows per forward pass of the adaptive batching
``ANOMALY_VAE_DRIFT_WINDOW_SECONDS``   600                          the recent scores that the drift statistic
``ANOMALY_VAE_DRIFT_WINDOW_SIZE``      10000 (per worker)           compares with the calibration scores
=====================================  ===========================  ==============================================

``Settings.from_env()`` reads them all at once, and a bad value is a ``SettingsError`` that names the
variable, the rule and the value. The service reads them twice: when ``service.app`` is imported, for
what BentoML fixes with the class (workers, the class-scope model reference that ``bentoml build``
packs, the request limits of the guard), and again when a worker creates its service instance, for
the model it loads and how it scores (so that each test client's lifespan can serve another model).
No other module of the service reads these variables. (``service/metrics.py`` reads and sets
``PROMETHEUS_MULTIPROC_DIR``, which is BentoML's and prometheus-client's, not a setting of ours.)
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["PREFIX", "Settings", "SettingsError"]

PREFIX = "ANOMALY_VAE_"
BACKENDS = ("torch", "onnxruntime")


class SettingsError(ValueError):
    """An ``ANOMALY_VAE_*`` environment variable with a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    model: str = "anomaly_vae:latest"  # the store's latest export: what `anomaly-vae export` puts there
    model_name: str = "anomaly_vae"  # the name V2 clients ask for; one path segment
    backend: str = "torch"  # exact scores by default; onnxruntime is opt-in (within a tolerance)
    workers: int = 1  # one process per core is the caller's choice, not ours
    torch_threads: int = 1  # dense forwards are small: more threads cost more than they give
    max_body_mb: float = 32.0  # ~100k table rows as JSON; larger batches belong to /score_csv or the CLI
    body_timeout_s: float = 30.0  # slow clients cannot hold connections open for long
    max_batch_rows: int = 1024  # one forward pass; a large request is cut so that single rows are not held up
    drift_window_seconds: float = 600.0  # ten minutes of recent scores for the drift statistic
    drift_window_size: int = 10000  # scores kept per worker for it

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """The settings in ``environ``; a variable that is not set keeps its default. Raises
        ``SettingsError`` naming the first variable with a bad value."""
        defaults = cls()

        def text(name: str, default: str) -> str:
            value = environ.get(PREFIX + name, default).strip()
            if not value:
                raise SettingsError(f"{PREFIX}{name} must not be empty; unset it for the default {default!r}")
            return value

        def integer(name: str, default: int) -> int:
            raw = environ.get(PREFIX + name)
            if raw is None:
                return default
            try:
                value = int(raw.strip())
            except ValueError:
                value = 0
            if value < 1:
                raise SettingsError(f"{PREFIX}{name} must be a positive integer, got {raw!r}")
            return value

        def number(name: str, default: float) -> float:
            raw = environ.get(PREFIX + name)
            if raw is None:
                return default
            try:
                value = float(raw.strip())
            except ValueError:
                value = math.nan
            if not (math.isfinite(value) and value > 0):
                raise SettingsError(f"{PREFIX}{name} must be a positive number, got {raw!r}")
            return value

        model_name = text("MODEL_NAME", defaults.model_name)
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", model_name) or model_name in (".", ".."):
            raise SettingsError(f"{PREFIX}MODEL_NAME must be 1 to 100 letters, digits, '_', '.' or '-' (a URL path "
                                f"segment), got {model_name!r}")
        backend = text("BACKEND", defaults.backend)
        if backend not in BACKENDS:
            raise SettingsError(f"{PREFIX}BACKEND must be one of {', '.join(BACKENDS)}, got {backend!r}")
        return cls(
            model=text("MODEL", defaults.model),
            model_name=model_name,
            backend=backend,
            workers=integer("WORKERS", defaults.workers),
            torch_threads=integer("TORCH_THREADS", defaults.torch_threads),
            max_body_mb=number("MAX_BODY_MB", defaults.max_body_mb),
            body_timeout_s=number("BODY_TIMEOUT_S", defaults.body_timeout_s),
            max_batch_rows=integer("MAX_BATCH_ROWS", defaults.max_batch_rows),
            drift_window_seconds=number("DRIFT_WINDOW_SECONDS", defaults.drift_window_seconds),
            drift_window_size=integer("DRIFT_WINDOW_SIZE", defaults.drift_window_size),
        )
