"""The Open Inference Protocol's REST routes (KServe V2), as a Starlette app mounted on the service.

==========================================================  ===========================================
route                                                       answer
==========================================================  ===========================================
``GET /v2``                                                 server metadata: name, version, extensions
``GET /v2/health/live``                                     200 while the process runs
``GET /v2/health/ready``                                    200 with a model loaded, else 400
``GET /v2/models/{name}[/versions/{v}]``                    model metadata (``v2.model_metadata``)
``GET /v2/models/{name}[/versions/{v}]/ready``              200 with the model loaded, else 400
``POST /v2/models/{name}[/versions/{v}]/infer``             scores (``v2.parse_request``, ``v2.encode_response``)
==========================================================  ===========================================

``{name}`` is the served model's name (``ANOMALY_VAE_MODEL_NAME``, ``anomaly_vae`` by default) and
``{v}`` its version (``GET /v2/models/{name}`` lists it); another is 404. Health answers follow the
protocol (200 true, 4xx false); a model that could not be loaded says why in the error.

Inference goes through the same request guard as ``/score`` (body size and time limits, content
types ``application/json``, ``application/octet-stream`` or none, as Triton's client sends), the same
``Scorer`` (the worker's adaptive batcher, so V2 and ``/score`` rows share forward passes) and the
same metrics, under the endpoint ``v2_infer``. Errors are the protocol's ``{"error": ...}`` (with
this service's ``reason`` beside it): 400 not the protocol, 404 another model, 422 values the model
refuses, 503 no model or past capacity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from anomaly_vae import __version__
from anomaly_vae.exceptions import InputError

from . import v2
from .batcher import Overloaded
from .guard import REASON_KEY
from .scorer import Scorer

__all__ = ["ENDPOINT", "INFER_PATH", "LineBreakPaths", "routes"]

ENDPOINT = "v2_infer"  # the metrics' endpoint label
# the infer routes, for the request guard: /v2/models/{name}/infer and /v2/models/{name}/versions/{v}/infer
INFER_PATH = r"/v2/models/[^/]+(/versions/[^/]+)?/infer"
THREAD_BYTES = 1 << 20  # bodies larger than this are decoded in a thread, so the event loop keeps serving


class LineBreakPaths:
    """ASGI middleware: a /v2 path with a line break (``%0A``) is answered the protocol's JSON 404.
    The app these routes are mounted in matches paths with ``.*``, which stops at a line break, so
    such a path would get a plain-text 404 from outside it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith("/v2") and "\n" in path:
            return await JSONResponse({"error": "no such model or route: the path has a line break",
                                       "reason": "not_found"}, status_code=404)(scope, receive, send)
        await self.app(scope, receive, send)


def routes(get_scorer: Callable[[], Scorer | None], model_name: str, load_error: Callable[[], str | None]) -> list[Route]:
    """The V2 routes for the model ``model_name``; ``get_scorer`` finds this worker's scorer (None:
    no model), ``load_error`` says why there is none."""

    def error(status: int, message: str, request: Request | None = None, reason: str = "invalid_request") -> Response:
        if request is not None:
            request.scope[REASON_KEY] = reason
        return JSONResponse({"error": message, "reason": reason}, status_code=status)

    def not_loaded() -> Response:
        return JSONResponse({"error": load_error() or "no model loaded; see the service log"}, status_code=400)

    def find(request: Request) -> tuple[Scorer | None, Response | None]:
        """The scorer the path names, or the answer that says why not."""
        name, version = request.path_params["name"], request.path_params.get("version")
        if name != model_name:
            return None, error(404, f"no model named {name[:100]!r}: this server serves {model_name!r}", request,
                               "not_found")
        scorer = get_scorer()
        if scorer is None:
            return None, None
        if version is not None and version != scorer.model_version:
            return None, error(404, f"model {model_name!r} has no version {version[:100]!r}; it serves version "
                                    f"{scorer.model_version!r}", request, "not_found")
        return scorer, None

    def serving(request: Request) -> tuple[Scorer | None, Response | None]:
        """``find``, with no model loaded answered 503 (metadata and inference need the model)."""
        scorer, problem = find(request)
        if problem is None and scorer is None:
            problem = JSONResponse({"error": load_error() or "no model loaded"}, status_code=503)
        return scorer, problem

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "anomaly_vae", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def server_ready(request: Request) -> Response:
        return JSONResponse({"ready": True}) if get_scorer() is not None else not_loaded()

    async def model_ready(request: Request) -> Response:
        scorer, problem = find(request)
        if problem is not None:
            return problem
        return JSONResponse({"name": model_name, "ready": True}) if scorer is not None else not_loaded()

    async def metadata(request: Request) -> Response:
        scorer, problem = serving(request)
        if scorer is None:
            return problem
        return JSONResponse(v2.model_metadata(scorer.det, model_name, scorer.model_version, scorer.threshold,
                                              scorer.alpha))

    async def infer(request: Request) -> Response:
        scorer, problem = serving(request)
        if scorer is None:
            return problem
        body = await request.body()  # the guard has read it already, within its size and time limits
        header_length = request.headers.get("inference-header-content-length")

        def decode() -> tuple[v2.InferRequest, Any]:
            req = v2.parse_request(body, header_length)
            return req, v2.model_input(scorer.det, req)

        try:
            req, x = decode() if len(body) <= THREAD_BYTES else await anyio.to_thread.run_sync(decode)
        except v2.V2Error as err:
            return error(err.status, str(err), request, err.reason)
        except InputError as err:
            return error(422, str(err), request, err.reason)
        try:
            scores = await scorer.score(x)
        except Overloaded as err:
            return JSONResponse({"error": f"the service is over capacity: {err}; retry later"}, status_code=503,
                                headers={"Retry-After": "1"})
        p, flagged = scorer.judge(scores)
        results = {"score": scores, "p_value": p, "is_anomaly": flagged}
        content, headers = v2.encode_response(req, results, model_name, scorer.model_version,
                                              {"threshold": scorer.threshold, "alpha": scorer.alpha})
        scorer.record(ENDPOINT, scores, flagged)
        return Response(content, headers=headers)

    async def no_route(request: Request) -> Response:
        return error(404, f"no route {request.method} {request.url.path[:200]} in the Open Inference Protocol",
                     request, "not_found")

    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    return [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", server_ready, methods=["GET"]),
        *(r for base in (model, versioned) for r in (
            Route(base, metadata, methods=["GET"]),
            Route(base + "/ready", model_ready, methods=["GET"]),
            Route(base + "/infer", infer, methods=["POST"]),
        )),
        Route("/v2/{rest:path}", no_route, methods=["GET", "POST"]),  # JSON, not Starlette's plain-text 404
    ]

