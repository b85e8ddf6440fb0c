"""The BentoML scoring service: a thin adapter between HTTP and ``service.scorer.Scorer``.

Start it from the repository root with ``bentoml serve`` (see ``bentofile.yaml``). Its settings are
environment variables, listed and checked in ``service/settings.py``.

Status codes: 400 a body BentoML cannot parse (not JSON, no ``instances``) or more than one
Content-Type header; 422 a body that does not fit the model (width, columns, values, image size,
undecodable image, unreadable CSV rows, a file name over 240 bytes); 408 a body too slow to
arrive; 413 over the size limit; 415 a content type the route does not take; 503 no model or past
capacity. ``/docs.json`` describes exactly these (``service/openapi.py``).

Each worker process has one service instance, made by BentoML, and it owns that worker's
``Scorer``. What BentoML does not route to the instance (``GET /model``, the request guard's count
of rejected requests, ``/docs.json``) finds it with ``bentoml.get_current_service()``, BentoML's
documented way for mounted ASGI apps and middleware to reach the instance of their process: BentoML
sets it when its lifespan has created the instance and clears it at shutdown.

Metrics go to a Prometheus multiprocess directory of this server's own (``service/metrics.py``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import bentoml
from bentoml.exceptions import BentoMLException
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from anomaly_vae.exceptions import InputError

from . import metrics as service_metrics
from . import v2_http
from .batcher import Overloaded
from .guard import FILENAMES_KEY, REASON_KEY, RequestGuard, RouteRule
from .openapi import OpenAPIDocument
from .schemas import INSTANCES_DOC, ImageResult, ImagesResponse, ScoreResponse, score_body
from .scorer import Scorer
from .settings import Settings

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

SETTINGS = Settings.from_env()  # what BentoML fixes with the class: workers, the packed model, the guard's limits


def _store_reference(ref: str) -> Any:
    """The class-scope model reference (so that ``bentoml build`` packs the model), for a tag only."""
    if Path(ref).is_dir() or os.sep in ref or ref.startswith("."):
        return None
    return bentoml.models.BentoModel(ref)


@bentoml.service(name="anomaly_vae", workers=SETTINGS.workers, traffic={"timeout": 120})
class AnomalyVAE:
    model_ref = _store_reference(SETTINGS.model)

    def __init__(self) -> None:
        settings = Settings.from_env()  # read again: each test client's lifespan may serve another model
        self.scorer: Scorer | None = None
        self.load_error: str | None = None
        try:
            self.scorer = Scorer.load(settings)
        except Exception as err:  # the worker stays up, not ready, and says why (/readyz, /score, /model, log)
            from anomaly_vae.exceptions import AnomalyVAEError

            self.load_error = f"cannot serve model {settings.model}: {err}"
            (log.error if isinstance(err, AnomalyVAEError) else log.exception)(self.load_error)

    def __is_ready__(self) -> bool:
        return self.scorer is not None

    def __metrics__(self, content: str) -> str:
        return content if self.scorer is None else content + self.scorer.metrics.drift_text()

    def _unavailable(self, ctx: bentoml.Context) -> Response:
        ctx.response.status_code = 503
        return JSONResponse({"error": self.load_error}, status_code=503)

    # -- endpoints ----------------------------------------------------------------------------
    # /score writes its ScoreResponse body itself (schemas.score_body), so its function returns a
    # Response; output_spec gives BentoML the body's schema for /docs.json
    @bentoml.api(route="/score", output_spec=ScoreResponse)
    async def score(self, ctx: bentoml.Context,
                    instances: Annotated[list[Any], Field(description=INSTANCES_DOC)]) -> Response:
        """Score rows or images, answered in request order. Concurrent requests are batched together."""
        scorer = self.scorer
        if scorer is None:
            return self._unavailable(ctx)
        try:
            x = await scorer.prepare(instances)
        except InputError as err:
            return _reject(ctx, 422, err.reason, str(err))
        try:
            scores = await scorer.score(x)
        except Overloaded as err:
            return _overloaded(ctx, err)
        p, flagged = scorer.judge(scores)
        body = score_body(scores, p, flagged, scorer.threshold, scorer.alpha, scorer.model_version)
        scorer.record("score", scores, flagged)
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
        scorer = self.scorer
        if scorer is None:
            return self._unavailable(ctx)
        if scorer.input_kind != "table":
            return _reject(ctx, 422, "bad_csv", "this model scores images: use /score_images")
        try:
            result = await anyio.to_thread.run_sync(scorer.score_csv, file, id_column, sep, explain)
        except InputError as err:  # a specific reason, or bad_csv (an InputError's default says nothing more)
            specific = err.reason in service_metrics.REJECT_REASONS and err.reason != "invalid_input"
            return _reject(ctx, 422, err.reason if specific else "bad_csv", str(err))
        except (ValueError, UnicodeError) as err:
            return _reject(ctx, 422, "bad_csv", f"cannot read the uploaded file as CSV: {err}")
        summary = result.summary
        if summary.errors and on_error == "reject":
            shown = "; ".join(f"{'row' if not id_column else id_column} {i}: {e}" for i, e in summary.first_errors)
            return _reject(ctx, 422, "bad_csv", f"{summary.errors} of {summary.rows} rows could not be scored "
                           f"({shown}); fix them, or send on_error=column to score the others")
        for scores, flagged in result.observed:
            scorer.record("score_csv", scores, flagged)
        headers = {"X-Rows": str(summary.rows), "X-Rows-Scored": str(summary.scored),
                   "X-Rows-Failed": str(summary.errors), "X-Anomalies": str(summary.anomalies)}
        return Response(result.content, media_type="text/csv", headers=headers)

    @bentoml.api(route="/score_images", output_spec=ImagesResponse)
    async def score_images(
        self, ctx: bentoml.Context,
        files: Annotated[list[Path], Field(description="image files (PNG, JPEG, BMP, TIFF, WebP), converted to the "
                                                        "model's channels and resized to its size")],
    ) -> ImagesResponse | Response:
        """Score uploaded image files, one result per file in upload order."""
        scorer = self.scorer
        if scorer is None:
            return self._unavailable(ctx)
        if scorer.input_kind != "image":
            return _reject(ctx, 422, "bad_image", "this model scores tables: use /score or /score_csv")
        names = ctx.request.scope.get(FILENAMES_KEY, {}).get("files") or [p.name for p in files]
        if not files:
            return _reject(ctx, 422, "empty", "no files: send at least one image as the form field 'files'")
        try:
            x = await scorer.prepare_images(files, names)
        except InputError as err:
            return _reject(ctx, 422, "bad_image", str(err))
        try:
            scores = await scorer.score(x)
        except Overloaded as err:
            return _overloaded(ctx, err)
        p, flagged = scorer.judge(scores)
        results = [ImageResult(filename=n, score=s, p_value=q, is_anomaly=a)
                   for n, s, q, a in zip(names, scores.tolist(), p.tolist(), flagged.tolist())]
        answer = ImagesResponse(results=results, threshold=scorer.threshold, alpha=scorer.alpha,
                                model_version=scorer.model_version)
        scorer.record("score_images", scores, flagged)
        return answer


def _reject(ctx: bentoml.Context, status: int, reason: str, message: str) -> Response:
    ctx.response.status_code = status
    ctx.request.scope[REASON_KEY] = reason  # counted by the guard
    return JSONResponse({"error": message, "reason": reason}, status_code=status)


def _overloaded(ctx: bentoml.Context, err: Exception) -> Response:
    ctx.response.status_code = 503
    return JSONResponse({"error": f"the service is over capacity: {err}; retry later"}, status_code=503,
                        headers={"Retry-After": "1"})


# -- what BentoML does not route to the instance ------------------------------------------------
def _current_service() -> AnomalyVAE | None:
    """This worker's service instance: None before BentoML has made it and after its shutdown."""
    try:
        return bentoml.get_current_service()
    except BentoMLException:
        return None


def current_scorer() -> Scorer | None:
    """The scorer of this worker's service instance: None before BentoML has made the instance,
    after its shutdown, or when its model could not be loaded."""
    return getattr(_current_service(), "scorer", None)


async def model_card(request: Request) -> Response:
    """GET /model: the model card (model.json) with the served version."""
    scorer = current_scorer()
    if scorer is None:
        return JSONResponse({"error": "no model loaded; see /readyz and the service log"}, status_code=503)
    return JSONResponse(scorer.card)


def _count_rejected(endpoint: str, reason: str) -> None:
    scorer = current_scorer()
    if scorer is not None:
        scorer.reject(endpoint, reason)


def _served_model() -> Any:
    scorer = current_scorer()
    return None if scorer is None else scorer.det


def _load_error() -> str | None:
    return getattr(_current_service(), "load_error", None)


AnomalyVAE.mount_asgi_app(Starlette(routes=[Route("/model", model_card, methods=["GET"]),
                                            *v2_http.routes(current_scorer, SETTINGS.model_name, _load_error)]),
                          path="/")
AnomalyVAE.add_asgi_middleware(
    RequestGuard,
    rules={"/score": RouteRule("application/json"),
           "/score_csv": RouteRule("multipart/form-data", file_fields=("file",)),
           "/score_images": RouteRule("multipart/form-data", file_fields=("files",))},
    pattern_rules={v2_http.INFER_PATH: RouteRule(("application/json", "application/octet-stream", "none"),
                                                 endpoint=v2_http.ENDPOINT)},
    max_body_bytes=SETTINGS.max_body_bytes, count=_count_rejected, body_timeout_s=SETTINGS.body_timeout_s)
AnomalyVAE.add_asgi_middleware(v2_http.LineBreakPaths)
AnomalyVAE.add_asgi_middleware(OpenAPIDocument, spec=lambda: AnomalyVAE.openapi_spec.asdict(), model=_served_model)
