"""The service's OpenAPI document (``/docs.json``), made to say what the service answers.

BentoML writes the document from the endpoints' signatures. As it comes, it disagrees with the
service where clients and schema-based testers look: its 400 body has a ``detail`` string where
BentoML sends a list; 408, 413, 415, 422 and 503 are missing; optional fields are written as a
``null`` type, which OpenAPI 3.0 does not have; ``instances`` is any list, so most requests valid
against it are refused. ``agree`` takes BentoML's document and:

* documents every status the inference routes answer, with the one error body (``ERROR``);
* writes optional fields as OpenAPI 3.0 does (``nullable: true``) and file fields as binary strings;
* describes ``/score``'s instances for the model being served: its columns (a row as an object
  keyed by column name, or as a list in column order), or its image size, pixels integers 0-255
  or floats in [0, 1]. Numbers are bounded by float64, whose limits the service refuses past;
* marks the request bodies required (and at least one file for ``/score_images``);
* adds ``/model`` and the 503 of ``/readyz``.

``OpenAPIDocument`` is the middleware that answers ``GET /docs.json`` with it.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse

from .metrics import REJECT_REASONS

FLOAT_MAX = sys.float_info.max
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "what is wrong, naming the instance, column or file"},
        "reason": {"type": "string", "enum": list(REJECT_REASONS),
                   "description": "the kind of problem, as counted in anomaly_vae_requests_rejected_total"},
        "detail": {"type": "array", "items": {"type": "object"},
                   "description": "BentoML's own 400 answers: the problems pydantic found"},
    },
}
ERROR_STATUSES = {
    "400": "The body cannot be parsed (not JSON, a required field missing or of the wrong type), or the request "
           "has more than one Content-Type header",
    "408": "The body did not arrive within the body timeout (ANOMALY_VAE_BODY_TIMEOUT_S)",
    "413": "The body is over the size limit (ANOMALY_VAE_MAX_BODY_MB)",
    "415": "A Content-Type this route does not take",
    "422": "The body does not fit the model: `error` names the instance and column (or file), `reason` the kind",
    "500": "A server error: a bug, please report it with the server log",
    "503": "No model is loaded (see /readyz), or the worker is past its capacity (retry after Retry-After)",
}
API_ROUTES = ("/score", "/score_csv", "/score_images")


class OpenAPIDocument:
    """ASGI middleware: ``GET /docs.json`` answers ``agree(spec(), model())``."""

    def __init__(self, app: Any, spec: Callable[[], dict[str, Any]], model: Callable[[], Any]) -> None:
        self.app = app
        self.spec = spec
        self.model = model

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD") and scope.get("path") == "/docs.json":
            return await JSONResponse(agree(self.spec(), self.model()))(scope, receive, send)
        await self.app(scope, receive, send)


def agree(spec: dict[str, Any], det: Any | None) -> dict[str, Any]:
    """BentoML's document ``spec`` made to agree with the service; ``det`` is the model being
    served (None: instances are described in general)."""
    doc = _openapi30(json.loads(json.dumps(spec)))  # a copy, with status codes as the strings JSON has
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR
    errors = {code: {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
              for code, text in ERROR_STATUSES.items()}
    for route in API_ROUTES:
        post = doc["paths"][route]["post"]
        post["responses"] = {"200": post["responses"]["200"], **errors}
        post["requestBody"]["required"] = True
        # BentoML's copies in the paths lost the optional fields that its components kept
        for media in post["requestBody"]["content"].values():
            media["schema"] = copy.deepcopy(schemas.get(f"{post['x-bentoml-name']}__Input", media["schema"]))
        for media in post["responses"]["200"].get("content", {}).values():
            media["schema"] = copy.deepcopy(schemas.get(media["schema"].get("title"), media["schema"]))
    score = doc["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    score["properties"]["instances"].update(instances_schema(det))
    images = doc["paths"]["/score_images"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    images["properties"]["files"]["minItems"] = 1
    doc["paths"]["/readyz"]["get"]["responses"]["503"] = {"description": "No model is loaded: the log says why"}
    doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
    doc["paths"]["/model"] = {"get": {
        "tags": ["Service APIs"], "description": "The model card (model.json) with the served version",
        "responses": {"200": {"description": "The model card", "content": {"application/json": {"schema": {"type": "object"}}}},
                      "503": errors["503"]}}}
    schemas.update(V2_SCHEMAS)
    doc["paths"].update(_v2_paths(errors))
    return doc


_V2_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64",
             "BYTES"]
_V2_PARAMETERS = {"type": "object", "nullable": True, "description": "protocol parameters (binary_data_size, "
                  "binary_data, binary_data_output)"}
_V2_TENSOR = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string", "minLength": 1},
    "datatype": {"type": "string", "enum": _V2_TYPES},
    "shape": {"type": "array", "minItems": 1, "maxItems": 8, "items": {"type": "integer", "minimum": 0,
                                                                       "maximum": 2**31 - 1}},
    "parameters": _V2_PARAMETERS,
    "data": {"type": "array", "description": "the elements, flat in row-major order or nested as the shape"}}}
V2_SCHEMAS = {
    "V2InferRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "parameters": _V2_PARAMETERS,
        "inputs": {"type": "array", "minItems": 1, "items": _V2_TENSOR},
        "outputs": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "enum": ["score", "p_value", "is_anomaly"]}, "parameters": _V2_PARAMETERS}}}}},
    "V2InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "parameters": {"type": "object"},
        "outputs": {"type": "array", "items": _V2_TENSOR}}},
    "V2ModelMetadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                        "properties": {"name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
                                       "platform": {"type": "string"}, "parameters": {"type": "object"},
                                       "inputs": {"type": "array", "items": {"type": "object"}},
                                       "outputs": {"type": "array", "items": {"type": "object"}}}},
}


def _v2_paths(errors: dict[str, Any]) -> dict[str, Any]:
    """The Open Inference Protocol's routes (``service/v2_http.py``): JSON bodies only here; the
    binary tensor extension (``Inference-Header-Content-Length``) is the same request with raw bytes
    after the JSON header."""
    tags = ["Open Inference Protocol (V2)"]

    def ref(name: str, text: str) -> dict[str, Any]:
        return {"description": text, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}

    health = {"description": "true", "content": {"application/json": {"schema": {"type": "object"}}}}
    false = {"description": "false: no model is loaded (the error says why)",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    paths: dict[str, Any] = {
        "/v2": {"get": {"tags": tags, "description": "Server metadata", "responses": {"200": health}}},
        "/v2/health/live": {"get": {"tags": tags, "description": "Live", "responses": {"200": health}}},
        "/v2/health/ready": {"get": {"tags": tags, "description": "Ready", "responses": {"200": health, "400": false}}},
    }
    for base, params in (("/v2/models/{name}", [name]), ("/v2/models/{name}/versions/{version}", [name, version])):
        paths[base] = {"get": {"tags": tags, "description": "Model metadata", "parameters": params, "responses": {
            "200": ref("V2ModelMetadata", "the model's inputs, outputs and parameters"),
            "404": errors["422"] | {"description": "another model or version"}, "503": errors["503"]}}}
        paths[base + "/ready"] = {"get": {"tags": tags, "description": "Model ready", "parameters": params,
                                          "responses": {"200": health, "400": false,
                                                        "404": errors["422"] | {"description": "another model or version"}}}}
        paths[base + "/infer"] = {"post": {
            "tags": tags, "description": "Scores: outputs score (FP64), p_value (FP64), is_anomaly (BOOL)",
            "parameters": params,
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/V2InferRequest"}}}},
            "responses": {"200": ref("V2InferResponse", "the outputs asked, in the order asked"),
                          **{code: errors[code] for code in ("400", "408", "413", "415", "422", "500", "503")},
                          "404": errors["422"] | {"description": "another model or version"}}}}
    return paths


def instances_schema(det: Any | None) -> dict[str, Any]:
    """The JSON schema of ``/score``'s ``instances`` for the model ``det``."""
    if det is None:
        return {"type": "array", "minItems": 1, "items": {}}
    pre = det.preprocessor_
    if det.input_kind_ == "image":
        return {"type": "array", "minItems": 1, "items": _image_schema(pre.height, pre.width)}
    number = {"type": "number", "minimum": -FLOAT_MAX, "maximum": FLOAT_MAX}
    values = {col["name"]: ({**number, "nullable": True} if col["type"] == "numeric" else
                            {"anyOf": [{"type": "string"}, number], "nullable": True})
              for col in pre.columns}
    # other keys are ignored, as extra columns are on every face (anomaly_vae.instances)
    as_object = {"type": "object", "required": list(values), "properties": values,
                 "description": "a row keyed by column name (null = missing value; other keys are ignored)"}
    if all(col["type"] == "numeric" for col in pre.columns):
        item = {**number, "nullable": True}
    else:  # OpenAPI 3.0 has no per-position types: numeric columns take numbers or null only
        item = {"anyOf": [{"type": "string"}, number], "nullable": True}
    as_list = {"type": "array", "minItems": len(values), "maxItems": len(values), "items": item,
               "description": f"a row as a list in the model's column order: {', '.join(values)}"}
    return {"type": "array", "minItems": 1, "items": {"anyOf": [as_list, as_object]}}


def _image_schema(height: int, width: int) -> dict[str, Any]:
    """An image as nested lists: (H, W), (H, W, C) or (C, H, W) with C 1 or 3, all of its pixels
    integers 0-255 or all floats in [0, 1]."""

    def nested(sizes: tuple[int, ...], pixel: dict[str, Any]) -> dict[str, Any]:
        schema = pixel
        for n in reversed(sizes):
            schema = {"type": "array", "minItems": n, "maxItems": n, "items": schema}
        return schema

    layouts = [(height, width), *((height, width, c) for c in (1, 3)), *((c, height, width) for c in (1, 3))]
    pixels = [{"type": "integer", "minimum": 0, "maximum": 255}, {"type": "number", "minimum": 0, "maximum": 1}]
    return {"anyOf": [nested(sizes, pixel) for pixel in pixels for sizes in layouts]}


def _openapi30(node: Any) -> Any:
    """JSON-schema spellings BentoML uses that OpenAPI 3.0 lacks, in its own: an optional value
    (``anyOf [X, {type: null}]``) is X with ``nullable: true``, a file is a binary string."""
    if isinstance(node, list):
        return [_openapi30(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _openapi30(v) for k, v in node.items()}
    options = node.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        del node["anyOf"]
        if len(rest) == 1:
            node.update(rest[0])
        else:
            node["anyOf"] = rest
        node["nullable"] = True
    if node.get("type") == "file":
        node.update(type="string", format="binary")
    return node
