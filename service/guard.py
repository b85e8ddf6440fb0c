"""ASGI middleware in front of the inference routes: it checks what BentoML would otherwise accept.

* **Content type**: ``/score`` takes ``application/json`` only, the upload routes
  ``multipart/form-data`` only; anything else is 415. BentoML would parse an unknown type as JSON,
  and its pickle type has had remote-code-execution bugs.
* **Body size**: over ``max_body_bytes`` is 413, from the Content-Length header before reading, or
  while reading a chunked body.
* **File fields are files**: BentoML downloads a file field sent as text when the text is a URL.
  Inputs are never fetched from URLs here, so such a field is 422. The original file names are
  kept in the request scope (``FILENAMES_KEY``) for the answer.
* **Counting**: every 4xx answer of these routes is counted in ``anomaly_vae_requests_rejected_total``
  with the reason the endpoint put in the scope (``REASON_KEY``), or one from the status.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

REASON_KEY = "anomaly_vae.reason"
FILENAMES_KEY = "anomaly_vae.filenames"

Scope = dict[str, Any]


class RouteRule:
    def __init__(self, media_type: str, file_fields: tuple[str, ...] = ()) -> None:
        self.media_type = media_type
        self.file_fields = file_fields


class RequestGuard:
    def __init__(self, app: Any, rules: dict[str, RouteRule], max_body_bytes: int,
                 count: Callable[[str, str], None]) -> None:
        self.app = app
        self.rules = rules
        self.max_body_bytes = int(max_body_bytes)
        self.count = count

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        rule = self.rules.get(scope.get("path", "")) if scope["type"] == "http" and scope.get("method") == "POST" else None
        if rule is None:
            return await self.app(scope, receive, send)
        endpoint = scope["path"].strip("/")
        headers = {k.lower(): v for k, v in scope.get("headers", []) if k.lower() in (b"content-type", b"content-length")}
        media_type = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        if media_type != rule.media_type:
            return await self._reject(send, endpoint, 415, "unsupported_media_type",
                                      f"{scope['path']} accepts Content-Type {rule.media_type}, got "
                                      f"{media_type or 'none'}")
        length = headers[b"content-length"].decode("latin-1") if b"content-length" in headers else None
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await self._reject(send, endpoint, 413, "too_large", self._too_large(length))
        body, disconnected = await self._read_body(receive)
        if disconnected:  # the client went away before sending its whole body: nobody to answer
            return
        if body is None:
            return await self._reject(send, endpoint, 413, "too_large", self._too_large(None))
        if rule.file_fields:
            problem = await self._check_files(scope, body, rule.file_fields)
            if problem is not None:
                return await self._reject(send, endpoint, 422, "invalid_request", problem)

        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status = 0

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        await self.app(scope, replay, send_status)
        if 400 <= status < 500:
            reason = scope.get(REASON_KEY) or {413: "too_large", 415: "unsupported_media_type"}.get(status,
                                                                                                 "invalid_request")
            self.count(endpoint, reason)

    def _too_large(self, length: str | None) -> str:
        got = f" (Content-Length {length})" if length is not None else ""
        return f"request body over the limit of {self.max_body_bytes} bytes{got}; send fewer rows per request"

    async def _read_body(self, receive: Any) -> tuple[bytes | None, bool]:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks), True
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None, False
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), False

    @staticmethod
    async def _check_files(scope: Scope, body: bytes, fields: tuple[str, ...]) -> str | None:
        from starlette.datastructures import Headers, UploadFile
        from starlette.formparsers import MultiPartException, MultiPartParser

        async def stream() -> Any:
            yield body
            yield b""

        try:
            # the same limits as BentoML's own parse of the form
            form = await MultiPartParser(Headers(scope=scope), stream(), max_files=1000, max_fields=1000).parse()
        except MultiPartException as err:
            return f"cannot parse the multipart body: {err}"
        try:
            names: dict[str, list[str]] = {}
            for key, value in form.multi_items():
                if key in fields:
                    if not isinstance(value, UploadFile):
                        return (f"form field {key!r} must be a file upload; inputs are never fetched from URLs or "
                                "read from text fields")
                    names.setdefault(key, []).append(value.filename or "")
            scope[FILENAMES_KEY] = names
        finally:
            await form.close()
        return None

    async def _reject(self, send: Any, endpoint: str, status: int, reason: str, message: str) -> None:
        body = json.dumps({"error": message, "reason": reason}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        self.count(endpoint, reason)
