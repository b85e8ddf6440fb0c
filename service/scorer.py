"""The model being served and the work of serving it, apart from HTTP.

A ``Scorer`` holds the loaded detector, its threshold, alpha, version and card, the adaptive
batcher of this worker and the metrics. Every step of an answer is one method, each a call into the
core's public API:

* ``prepare`` / ``prepare_images``: the request's instances or image files into the model's input
  (``anomaly_vae.instances.instances_to_input``, ``anomaly_vae.io.load_images``), ``InputError``
  naming the instance or file;
* ``score``: the scores of a prepared input, batched with other requests' rows (``Overloaded``
  past capacity);
* ``judge``: p-values (``det.p_values_from_scores``) and flags (score above the threshold);
* ``record``: the scores and flags counted in the metrics, once the answer exists (a request
  that fails records nothing);
* ``score_csv``: an uploaded CSV file scored as ``anomaly-vae score`` scores it
  (``anomaly_vae.batch.score_file``).

The BentoML service (``service/app.py``) makes one per worker process and turns HTTP into these calls.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from anomaly_vae.exceptions import CalibrationError, InputError

from .batcher import MicroBatcher
from .metrics import ServiceMetrics
from .settings import Settings

__all__ = ["INLINE_INSTANCES", "CsvResult", "Scorer"]

log = logging.getLogger("anomaly_vae.service")
INLINE_INSTANCES = 256  # requests up to this size are prepared on the event loop, larger ones in a thread


@dataclass
class CsvResult:
    content: bytes  # the CSV `anomaly-vae score` writes
    summary: Any  # anomaly_vae.batch's summary: rows, scored, errors, anomalies, first_errors
    observed: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (scores, flags) per block


class Scorer:
    """One model, served. ``Scorer.load(settings)`` loads it; ``close()`` lets go of its batcher
    thread and its metrics."""

    def __init__(self, det: Any, settings: Settings, tag: str | None = None) -> None:
        card = det.model_card_
        self.det = det
        self.threshold = float(det.check_threshold())
        self.alpha: float | None = det.alpha_
        self.model_version = tag.split(":", 1)[1] if tag else "sha256:" + card["weights"]["sha256"][:12]
        self.card = {"model_version": self.model_version, "bentoml_tag": tag, "source": settings.model,
                     "backend": settings.backend, **card}
        self.metrics = ServiceMetrics(
            det.calibration_scores_, self.threshold, self.alpha,
            info={"model_version": self.model_version, "score": det.score_kind_, "input_kind": det.input_kind_,
                  "package_version": str(card.get("package_version"))},
            window_seconds=settings.drift_window_seconds, window_size=settings.drift_window_size)
        if settings.backend == "onnxruntime":  # one call that releases the GIL: it runs in the batcher's thread
            from anomaly_vae.onnx import onnxruntime_scorer

            score_fn, inline = onnxruntime_scorer(det, settings.torch_threads), False
        else:
            # a dense forward is many small torch ops: run in a second thread they fight the event
            # loop for the GIL (measured: 30% fewer requests/s), so they run on the loop; a conv
            # forward is long kernels that release it
            score_fn, inline = det.score_prepared, det.model_.kind == "dense"
        self._score_fn = score_fn
        self.batcher = MicroBatcher(score_fn, max_batch_rows=settings.max_batch_rows,
                                    on_batch=self.metrics.batch_rows.observe, inline=inline)
        try:
            self._warm_up()
        except BaseException:
            self.close()
            raise

    @classmethod
    def load(cls, settings: Settings) -> Scorer:
        """The model ``settings.model`` (a directory or a BentoML tag), ready to serve: its
        threshold usable, torch on ``settings.torch_threads`` threads, one forward pass done."""
        import torch

        from anomaly_vae import load_detector
        from anomaly_vae.artifact import resolve_model

        path, tag = resolve_model(settings.model)
        det = load_detector(path)
        try:
            det.check_threshold()
        except CalibrationError as err:
            raise CalibrationError(f"no usable threshold ({err}); recalibrate it with `anomaly-vae calibrate` "
                                   "before serving") from None
        det.set_params(n_threads=settings.torch_threads)
        torch.set_num_threads(settings.torch_threads)
        scorer = cls(det, settings, tag)
        log.info("serving %s (%s, version %s, %s backend): threshold %.6g nats, alpha %s", settings.model,
                 det.input_kind_, scorer.model_version, settings.backend, scorer.threshold, scorer.alpha)
        return scorer

    def _warm_up(self) -> None:
        x = np.zeros((1, *self.det.prepared_shape), dtype=np.float32)  # the means, and nothing missing
        if self.det.input_kind_ == "table":
            for start, _ in self.det.preprocessor_.categorical_groups():
                x[0, start] = 1.0  # one category each: a row preprocess() can give, as score_prepared checks
        self._score_fn(x)

    @property
    def input_kind(self) -> str:
        """``"table"`` or ``"image"``."""
        return str(self.det.input_kind_)

    def close(self) -> None:
        self.batcher.close()
        self.metrics.unregister()

    # -- the steps of an answer ---------------------------------------------------------------
    async def prepare(self, instances: list[Any]) -> np.ndarray:
        """The model's input for JSON ``instances``: (N, n_features_out) or (N, C, H, W) float32."""
        from anomaly_vae.instances import instances_to_input

        if len(instances) <= INLINE_INSTANCES:
            return instances_to_input(self.det, instances)
        return await anyio.to_thread.run_sync(instances_to_input, self.det, instances)

    async def prepare_images(self, files: list[Path], names: list[str]) -> np.ndarray:
        """The model's input for image files, (N, C, H, W) float32; errors name the file by ``names``."""
        from anomaly_vae.io import load_images

        pre = self.det.preprocessor_

        def read() -> np.ndarray:
            return pre.transform(load_images(files, (pre.height, pre.width), pre.channels, names=names))

        return await anyio.to_thread.run_sync(read)

    async def score(self, x: np.ndarray) -> np.ndarray:
        """Scores (N,) float64 of a prepared input, batched with other requests' rows."""
        return await self.batcher.score(x)

    def judge(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p-values, flags) of ``scores``; nothing is recorded (``record`` once the answer exists)."""
        if not np.isfinite(scores).all():  # the core never gives one: a bug, answered 500
            raise RuntimeError(f"the model gave {int((~np.isfinite(scores)).sum())} non-finite score(s)")
        return self.det.p_values_from_scores(scores), scores > self.threshold

    def record(self, endpoint: str, scores: np.ndarray, flagged: np.ndarray) -> None:
        """Count an answered request's scores and flags in the metrics of ``endpoint``."""
        self.metrics.observe(endpoint, scores, flagged)

    def reject(self, endpoint: str, reason: str) -> None:
        """Count a request of ``endpoint`` answered 4xx for ``reason``."""
        self.metrics.reject(endpoint, reason)

    def score_csv(self, upload: Path, id_column: str | None, sep: str | None, explain: int) -> CsvResult:
        """The uploaded CSV file scored as ``anomaly-vae score`` scores it; the upload is moved
        away and removed. Blocking: run it in a thread. ``InputError`` speaks of "the uploaded
        file", not of a temporary path; a file that is not CSV is a ``ValueError`` or ``UnicodeError``."""
        from anomaly_vae.batch import score_file

        work = Path(tempfile.mkdtemp(prefix="anomaly-vae-csv-"))
        try:
            data = work / "upload.csv"
            shutil.move(str(upload), data)
            result = CsvResult(b"", None)
            try:
                result.summary = score_file(self.det, data, work / "scores.csv", id_column=id_column, sep=sep,
                                            explain=explain, observe=lambda s, f: result.observed.append((s, f)))
            except InputError as err:
                raise InputError(str(err).replace(str(data), "the uploaded file"), reason=err.reason) from err
            result.content = (work / "scores.csv").read_bytes()
            return result
        finally:
            shutil.rmtree(work, ignore_errors=True)
