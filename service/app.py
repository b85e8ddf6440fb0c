"""The BentoML scoring service: a thin adapter over ``anomaly_vae``.

Start it from the repository root with ``bentoml serve`` (see ``bentofile.yaml``). Settings, all
environment variables:

* ``ANOMALY_VAE_MODEL``: a model directory or a BentoML model tag (default ``anomaly_vae:latest``,
  put there by ``anomaly-vae export MODEL_DIR``);
* ``ANOMALY_VAE_WORKERS`` (1): worker processes; ``ANOMALY_VAE_TORCH_THREADS`` (1) per worker;
* ``ANOMALY_VAE_MAX_BODY_MB`` (32): larger requests are answered 413;
* ``ANOMALY_VAE_BODY_TIMEOUT_S`` (30): a request body that has not arrived this long after its
  headers is answered 408 and its connection closed (raise it for large uploads over slow links);
* ``ANOMALY_VAE_MAX_BATCH_ROWS`` (1024): rows per forward pass of the adaptive batching;
* ``ANOMALY_VAE_DRIFT_WINDOW_SECONDS`` (600) and ``ANOMALY_VAE_DRIFT_WINDOW_SIZE`` (10000 per
  worker): the recent scores that the drift statistic compares with the calibration scores.

Status codes: 400 a body BentoML cannot parse (not JSON, no ``instances``) or more than one
Content-Type header; 422 a body that does not fit the model (width, columns, values, image size,
undecodable image, unreadable CSV rows, a file name over 240 bytes); 408 a body too slow to
arrive; 413 over the size limit; 415 a content type the route does not take; 503 no model or past
capacity. ``/docs.json`` describes exactly these (``service/openapi.py``).

Metrics go to a Prometheus multiprocess directory of this server's own (``service/metrics.py``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import bentoml
import numpy as np
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from anomaly_vae.exceptions import InputError

from . import metrics as service_metrics
from .batcher import MicroBatcher, Overloaded
from .guard import FILENAMES_KEY, REASON_KEY, RequestGuard, RouteRule
from .openapi import OpenAPIDocument

log = logging.getLogger("anomaly_vae.service")
service_metrics.use_own_multiproc_dir()  # before anything imports prometheus_client


class _ClientErrorLog(logging.Filter):
    """BentoML logs a request body it cannot parse (a client's mistake, answered 400) as an ERROR
    with a traceback; here it becomes one INFO line, so that server errors stand out in the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            record.msg, record.args = f"{record.getMessage()}: answered 400 ({exc.errors()[0]['msg'][:120]})", ()
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("bentoml._internal.server.http_app").addFilter(_ClientErrorLog())

MODEL_REF = os.environ.get("ANOMALY_VAE_MODEL", "anomaly_vae:latest")
WORKERS = int(os.environ.get("ANOMALY_VAE_WORKERS", "1"))
MAX_BODY_BYTES = int(float(os.environ.get("ANOMALY_VAE_MAX_BODY_MB", "32")) * 1024 * 1024)
BODY_TIMEOUT_S = float(os.environ.get("ANOMALY_VAE_BODY_TIMEOUT_S", "30"))
INLINE_INSTANCES = 256  # requests up to this size are prepared on the event loop, larger ones in a thread


def _store_reference(ref: str) -> Any:
    """The class-scope model reference (so that ``bentoml build`` packs the model), for a tag only."""
    if Path(ref).is_dir() or os.sep in ref or ref.startswith("."):
        return None
    return bentoml.models.BentoModel(ref)


class ScoreResponse(BaseModel):
    scores: list[float] = Field(description="anomaly score per instance, nats, higher = more anomalous")
    p_values: list[float] = Field(description="conformal p-value per instance (small = anomalous)")
    is_anomaly: list[bool] = Field(description="score above the threshold")
    threshold: float
    alpha: float | None = Field(description="target false-alarm rate of the threshold (null if not set by alpha)")
    model_version: str


class ImageResult(BaseModel):
    filename: str
    score: float
    p_value: float
    is_anomaly: bool


class ImagesResponse(BaseModel):
    results: list[ImageResult]
    threshold: float
    alpha: float | None
    model_version: str


INSTANCES_DOC = ("Rows or images to score. A table row is a list of values in the model's column order or an "
                 "object keyed by column name (null = missing value); an image is a nested list of pixels (H, W), "
                 "(H, W, C) or (C, H, W), integers 0-255 or floats in [0, 1].")


@bentoml.service(name="anomaly_vae", workers=WORKERS, traffic={"timeout": 120})
class AnomalyVAE:
    model_ref = _store_reference(MODEL_REF)

    def __init__(self) -> None:
        self._ready = False
        self.load_error: str | None = None
        _Instance.current = None
        ref = os.environ.get("ANOMALY_VAE_MODEL", MODEL_REF)
        try:
            self._load(ref)
        except Exception as err:  # the worker stays up, not ready, and says why (/readyz, /score, /model, log)
            from anomaly_vae.exceptions import AnomalyVAEError

            self.load_error = f"cannot serve model {ref}: {err}"
            (log.error if isinstance(err, AnomalyVAEError) else log.exception)(self.load_error)
            return
        _Instance.current = self
        self._ready = True

    def _load(self, ref: str) -> None:
        import torch

        from anomaly_vae import load_detector
        from anomaly_vae.artifact import resolve_model
        from anomaly_vae.exceptions import CalibrationError
        from anomaly_vae.instances import score_input

        path, tag = resolve_model(ref)
        det = load_detector(path)
        if not np.isfinite(det.threshold_):
            raise CalibrationError(f"no usable threshold ({det.calibration_error_}); recalibrate it with "
                                   "`anomaly-vae calibrate` before serving")
        threads = int(os.environ.get("ANOMALY_VAE_TORCH_THREADS", "1"))
        det.set_params(n_threads=threads)
        torch.set_num_threads(threads)
        self.det = det
        card = det.model_card_
        self.model_version = tag.split(":", 1)[1] if tag else "sha256:" + card["weights"]["sha256"][:12]
        self.card = {"model_version": self.model_version, "bentoml_tag": tag, "source": ref, **card}
        self.threshold = float(det.threshold_)
        self.alpha = det.alpha_
        self.calibration = np.sort(det.calibration_scores_)
        self.metrics = service_metrics.ServiceMetrics(
            self.calibration, self.threshold, self.alpha,
            info={"model_version": self.model_version, "score": det.score_kind, "input_kind": det.input_kind_,
                  "package_version": str(card.get("package_version"))},
            window_seconds=float(os.environ.get("ANOMALY_VAE_DRIFT_WINDOW_SECONDS", "600")),
            window_size=int(os.environ.get("ANOMALY_VAE_DRIFT_WINDOW_SIZE", "10000")))
        self.batcher = MicroBatcher(lambda x: score_input(det, x),
                                    max_batch_rows=int(os.environ.get("ANOMALY_VAE_MAX_BATCH_ROWS", "1024")),
                                    on_batch=self.metrics.batch_rows.observe,
                                    # a dense forward is many small torch ops: run in a second thread they
                                    # fight the event loop for the GIL (measured: 30% fewer requests/s), so
                                    # they run on the loop; a conv forward is long kernels that release it
                                    inline=det.model_.kind == "dense")
        self._warm_up()
        log.info("serving %s (%s, version %s): threshold %.6g nats, alpha %s", ref, det.input_kind_,
                 self.model_version, self.threshold, self.alpha)

    def _warm_up(self) -> None:
        from anomaly_vae.instances import score_input

        pre = self.det.preprocessor_
        shape = (1, pre.channels, pre.height, pre.width) if self.det.input_kind_ == "image" else (1, pre.n_features_out)
        score_input(self.det, np.zeros(shape, dtype=np.float32))

    def __is_ready__(self) -> bool:
        return self._ready

    def __metrics__(self, content: str) -> str:
        return content + self.metrics.drift_text() if self._ready else content

    # -- helpers ------------------------------------------------------------------------------
    def _reject(self, ctx: bentoml.Context, status: int, reason: str, message: str) -> Response:
        ctx.response.status_code = status
        ctx.request.scope[REASON_KEY] = reason  # counted by the guard
        return JSONResponse({"error": message, "reason": reason}, status_code=status)

    def _unavailable(self, ctx: bentoml.Context) -> Response:
        ctx.response.status_code = 503
        return JSONResponse({"error": self.load_error}, status_code=503)

    def _overloaded(self, ctx: bentoml.Context, err: Exception) -> Response:
        ctx.response.status_code = 503
        return JSONResponse({"error": f"the service is over capacity: {err}; retry later"}, status_code=503,
                            headers={"Retry-After": "1"})

    def _judge(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """p-values and flags of ``scores``; not yet recorded in the metrics (``metrics.observe``
        once the answer is ready: a request that fails records nothing)."""
        from anomaly_vae.calibration import conformal_p_values

        if not np.isfinite(scores).all():  # the core never gives one: a bug, answered 500
            raise RuntimeError(f"the model gave {int((~np.isfinite(scores)).sum())} non-finite score(s)")
        return conformal_p_values(scores, self.calibration), scores > self.threshold

    # -- endpoints ----------------------------------------------------------------------------
    @bentoml.api(route="/score")
    async def score(self, ctx: bentoml.Context,
                    instances: Annotated[list[Any], Field(description=INSTANCES_DOC)]) -> ScoreResponse:
        """Score rows or images, answered in request order. Concurrent requests are batched together."""
        from anomaly_vae.instances import instances_to_input

        if not self._ready:
            return self._unavailable(ctx)
        try:
            if len(instances) <= INLINE_INSTANCES:
                x = instances_to_input(self.det, instances)
            else:
                x = await anyio.to_thread.run_sync(instances_to_input, self.det, instances)
        except InputError as err:
            return self._reject(ctx, 422, err.reason, str(err))
        try:
            scores = await self.batcher.score(x)
        except Overloaded as err:
            return self._overloaded(ctx, err)
        p, flagged = self._judge(scores)
        # the ScoreResponse fields, serialized here: validating our own floats again through
        # pydantic costs more than the model's forward for a single row
        body = json.dumps({"scores": scores.tolist(), "p_values": p.tolist(), "is_anomaly": flagged.tolist(),
                           "threshold": self.threshold, "alpha": self.alpha, "model_version": self.model_version},
                          allow_nan=False)
        self.metrics.observe("score", scores, flagged)
        return Response(body, media_type="application/json")

    @bentoml.api(route="/score_csv")
    async def score_csv(
        self, ctx: bentoml.Context,
        file: Annotated[Path, Field(description="the CSV file (delimiter sniffed unless sep is given)")],
        id_column: Annotated[str | None, Field(description="column copied to the output as the row id")] = None,
        sep: Annotated[str | None, Field(description="CSV delimiter, e.g. ';' (default: sniffed)")] = None,
        explain: Annotated[int, Field(ge=0, le=100, description="add the K features that contribute most")] = 0,
        on_error: Annotated[Literal["reject", "column"], Field(
            description="rows that cannot be scored: 'reject' answers 422 naming them; 'column' scores the others "
                        "and reports them in the error column, as the command line does")] = "reject",
    ) -> Annotated[Path, bentoml.validators.ContentType("text/csv")]:
        """Score an uploaded CSV file; the answer is the CSV `anomaly-vae score` writes for it."""
        if not self._ready:
            return self._unavailable(ctx)
        if self.det.input_kind_ != "table":
            return self._reject(ctx, 422, "bad_csv", "this model scores images: use /score_images")
        work = Path(tempfile.mkdtemp(prefix="anomaly-vae-csv-"))
        try:
            data = work / "upload.csv"
            shutil.move(str(file), data)
            observed: list[tuple[np.ndarray, np.ndarray]] = []
            try:
                summary = await anyio.to_thread.run_sync(self._score_file, data, work / "scores.csv", id_column,
                                                         sep, explain, observed)
            except InputError as err:
                reason = err.reason if err.reason in service_metrics.REJECT_REASONS else "bad_csv"
                return self._reject(ctx, 422, reason, str(err).replace(str(data), "the uploaded file"))
            except (ValueError, UnicodeError) as err:
                return self._reject(ctx, 422, "bad_csv", f"cannot read the uploaded file as CSV: {err}")
            if summary.errors and on_error == "reject":
                shown = "; ".join(f"{'row' if not id_column else id_column} {i}: {e}" for i, e in summary.first_errors)
                return self._reject(ctx, 422, "bad_csv", f"{summary.errors} of {summary.rows} rows could not be scored "
                                    f"({shown}); fix them, or send on_error=column to score the others")
            content = (work / "scores.csv").read_bytes()
            for scores, flagged in observed:
                self.metrics.observe("score_csv", scores, flagged)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        headers = {"X-Rows": str(summary.rows), "X-Rows-Scored": str(summary.scored),
                   "X-Rows-Failed": str(summary.errors), "X-Anomalies": str(summary.anomalies)}
        return Response(content, media_type="text/csv", headers=headers)

    def _score_file(self, data: Path, out: Path, id_column: str | None, sep: str | None, explain: int,
                    observed: list[tuple[np.ndarray, np.ndarray]]) -> Any:
        from anomaly_vae.batch import score_file

        return score_file(self.det, data, out, id_column=id_column, sep=sep, explain=explain,  # as `anomaly-vae score`
                          observe=lambda s, f: observed.append((s, f)))

    @bentoml.api(route="/score_images")
    async def score_images(
        self, ctx: bentoml.Context,
        files: Annotated[list[Path], Field(description="image files (PNG, JPEG, BMP, TIFF, WebP), converted to the "
                                                        "model's channels and resized to its size")],
    ) -> ImagesResponse:
        """Score uploaded image files, one result per file in upload order."""
        if not self._ready:
            return self._unavailable(ctx)
        if self.det.input_kind_ != "image":
            return self._reject(ctx, 422, "bad_image", "this model scores tables: use /score or /score_csv")
        names = ctx.request.scope.get(FILENAMES_KEY, {}).get("files") or [p.name for p in files]
        if not files:
            return self._reject(ctx, 422, "empty", "no files: send at least one image as the form field 'files'")
        try:
            x = await anyio.to_thread.run_sync(self._load_images, files, names)
        except InputError as err:
            return self._reject(ctx, 422, "bad_image", str(err))
        try:
            scores = await self.batcher.score(x)
        except Overloaded as err:
            return self._overloaded(ctx, err)
        p, flagged = self._judge(scores)
        results = [ImageResult(filename=n, score=s, p_value=q, is_anomaly=a)
                   for n, s, q, a in zip(names, scores.tolist(), p.tolist(), flagged.tolist())]
        answer = ImagesResponse(results=results, threshold=self.threshold, alpha=self.alpha,
                                model_version=self.model_version)
        self.metrics.observe("score_images", scores, flagged)
        return answer

    def _load_images(self, files: list[Path], names: list[str]) -> np.ndarray:
        from anomaly_vae.io import load_images

        pre = self.det.preprocessor_
        return pre.transform(load_images(files, (pre.height, pre.width), pre.channels, names=names))


class _Instance:
    current: AnomalyVAE | None = None  # the service instance of this worker, once its model is loaded


async def model_card(request: Request) -> Response:
    """GET /model: the model card (model.json) with the served version."""
    svc = _Instance.current
    if svc is None:
        return JSONResponse({"error": "no model loaded; see /readyz and the service log"}, status_code=503)
    return JSONResponse(svc.card)


def _count_rejected(endpoint: str, reason: str) -> None:
    m = service_metrics.current()
    if m is not None:
        m.reject(endpoint, reason)


AnomalyVAE.mount_asgi_app(Starlette(routes=[Route("/model", model_card, methods=["GET"])]), path="/")
AnomalyVAE.add_asgi_middleware(
    RequestGuard,
    rules={"/score": RouteRule("application/json"),
           "/score_csv": RouteRule("multipart/form-data", file_fields=("file",)),
           "/score_images": RouteRule("multipart/form-data", file_fields=("files",))},
    max_body_bytes=MAX_BODY_BYTES, count=_count_rejected, body_timeout_s=BODY_TIMEOUT_S)
AnomalyVAE.add_asgi_middleware(OpenAPIDocument, spec=lambda: AnomalyVAE.openapi_spec.asdict(),
                               model=lambda: _Instance.current and _Instance.current.det)
