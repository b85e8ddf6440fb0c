"""ASGI middleware in front of the inference routes: it checks what BentoML would otherwise accept.

* **Content type**: ``/score`` takes ``application/json`` only, the upload routes
  ``multipart/form-data`` only; anything else is 415. BentoML would parse an unknown type as JSON,
  and its pickle type has had remote-code-execution bugs. A request with more than one
  Content-Type header is 400: the guard and BentoML could read different ones.
* **Body size**: over ``max_body_bytes`` is 413, from the Content-Length header before reading, or
  while reading a chunked body.
* **Body time**: a body that has not arrived ``body_timeout_s`` after its headers is 408, and the
  connection is closed, so that slow clients cannot hold connections open.
* **Answers a plain client can read**: a client that sends its whole body before it reads the
  answer (no ``Expect: 100-continue``, as Python's urllib) would get a reset connection instead
  of a 4xx answered early, because closing a socket with unread data resets it. So before an
  early answer the rest of the body is read and dropped, up to ``drain_bytes`` and within the
  body time; past those the answer is sent and the connection closed.
* **File fields are files**: BentoML downloads a file field sent as text when the text is a URL.
  Inputs are never fetched from URLs here, so such a field is 422. A file name longer than
  ``MAX_FILENAME_BYTES`` is 422 too (BentoML stores an upload under a temporary name that ends
  with it, and file systems allow 255 bytes). The original file names are kept in the request
  scope (``FILENAMES_KEY``) for the answer.
* **Counting**: every 4xx answer of these routes is counted in ``anomaly_vae_requests_rejected_total``
  with the reason the endpoint put in the scope (``REASON_KEY``), or one from the status.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

import anyio

REASON_KEY = "anomaly_vae.reason"
FILENAMES_KEY = "anomaly_vae.filenames"
MAX_FILENAME_BYTES = 240  # 255, less the temporary file's own prefix

Scope = dict[str, Any]
Problem = tuple[int, str, str]  # status, reason, message


class RouteRule:
    """What a route takes: its media type(s) (``none`` among them: a request without Content-Type
    is let through, as Triton's client sends V2 requests), the form fields that must be files, and
    the endpoint name rejections are counted under (default: the path)."""

    def __init__(self, media_type: str | tuple[str, ...], file_fields: tuple[str, ...] = (),
                 endpoint: str | None = None) -> None:
        self.media_types = (media_type,) if isinstance(media_type, str) else tuple(media_type)
        self.file_fields = file_fields
        self.endpoint = endpoint


class RequestGuard:
    def __init__(self, app: Any, rules: dict[str, RouteRule], max_body_bytes: int,
                 count: Callable[[str, str], None], body_timeout_s: float = 30.0,
                 drain_bytes: int | None = None, pattern_rules: dict[str, RouteRule] | None = None) -> None:
        self.app = app
        self.rules = rules
        # paths with parameters (/v2/models/{name}/infer), as regular expressions matched in full
        self.pattern_rules = [(re.compile(p), r) for p, r in (pattern_rules or {}).items()]
        self.max_body_bytes = int(max_body_bytes)
        self.count = count
        self.body_timeout_s = float(body_timeout_s)
        # reading a few times the limit to say 413 politely costs little; gigabytes are not read
        self.drain_bytes = int(drain_bytes if drain_bytes is not None else 4 * self.max_body_bytes)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        rule = self._rule(scope)
        if rule is None:
            return await self.app(scope, receive, send)
        endpoint = rule.endpoint or scope["path"].strip("/")
        deadline = anyio.current_time() + self.body_timeout_s
        problem = self._check_headers(scope, rule)
        if problem is not None:
            read_all = False
            with anyio.CancelScope(deadline=deadline):
                read_all = await self._drain(scope, receive, 0)
            return await self._reject(send, endpoint, *problem, close=not read_all)
        body, size, disconnected, complete = None, 0, False, False
        with anyio.CancelScope(deadline=deadline) as body_time:
            body, size, disconnected, complete = await self._read_body(receive)
        if body_time.cancelled_caught:
            return await self._reject(send, endpoint, 408, "timeout",
                                      f"the request body did not arrive within {self.body_timeout_s:g} s", close=True)
        if disconnected:  # the client went away before sending its whole body: nobody to answer
            return
        if body is None:
            # the message that crossed the limit may have been the last: then there is nothing to
            # drain, and waiting for more held the answer until the body deadline (30 s)
            read_all = complete
            if not complete:
                with anyio.CancelScope(deadline=deadline):
                    read_all = await self._drain(scope, receive, size)
            return await self._reject(send, endpoint, 413, "too_large", self._too_large(None), close=not read_all)
        if rule.file_fields:
            problem = await self._check_files(scope, body, rule.file_fields)
            if problem is not None:
                return await self._reject(send, endpoint, *problem)
        await self._forward(scope, body, receive, send, endpoint)

    def _rule(self, scope: Scope) -> RouteRule | None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            return None
        path = scope.get("path", "")
        rule = self.rules.get(path)
        if rule is None:
            rule = next((r for p, r in self.pattern_rules if p.fullmatch(path)), None)
        return rule

    async def _forward(self, scope: Scope, body: bytes, receive: Any, send: Any, endpoint: str) -> None:
        """The request, with its body read already, to BentoML; a 4xx answer is counted."""
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

    def _check_headers(self, scope: Scope, rule: RouteRule) -> Problem | None:
        types = _header_values(scope, b"content-type")
        if len(types) > 1:
            return 400, "invalid_request", (f"{len(types)} Content-Type headers ({', '.join(types)[:200]}); "
                                            "send exactly one")
        media_type = types[0].split(";")[0].strip().lower() if types else "none"
        if media_type not in rule.media_types:
            return 415, "unsupported_media_type", (f"{scope['path'][:200]} accepts Content-Type "
                                                   f"{' or '.join(rule.media_types)}, got {media_type[:100]}")
        if any(v.strip().lower() != "identity" for v in _header_values(scope, b"content-encoding")):
            return 415, "unsupported_media_type", ("Content-Encoding is not accepted: send the body uncompressed "
                                                   "(it is limited in size before it is read)")
        length = _content_length(scope)
        if length is not None and (length < 0 or length > self.max_body_bytes):
            return 413, "too_large", self._too_large(_header_values(scope, b"content-length")[0])
        return None

    def _too_large(self, length: str | None) -> str:
        got = f" (Content-Length {length})" if length is not None else ""
        return f"request body over the limit of {self.max_body_bytes} bytes{got}; send fewer rows per request"

    async def _read_body(self, receive: Any) -> tuple[bytes | None, int, bool, bool]:
        """(body, or None when over the limit; bytes read; whether the client went away; whether
        the whole body was read)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, size, True, False
            chunk = message.get("body", b"")
            size += len(chunk)
            last = not message.get("more_body", False)
            if size > self.max_body_bytes:
                return None, size, False, last
            chunks.append(chunk)
            if last:
                return b"".join(chunks), size, False, True

    async def _drain(self, scope: Scope, receive: Any, size: int) -> bool:
        """Read and drop the rest of the body (``size`` bytes of it read already), up to
        ``drain_bytes``; whether all of it was read. A client that asked ``Expect: 100-continue``
        has sent nothing yet and sends nothing after a final answer: there is nothing to read."""
        if b"100-continue" in [v.lower() for v in _raw_values(scope, b"expect")]:
            return False
        length = _content_length(scope)
        if length is not None and not 0 <= length <= self.drain_bytes:
            return False
        while size <= self.drain_bytes:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
        return False

    @staticmethod
    async def _check_files(scope: Scope, body: bytes, fields: tuple[str, ...]) -> Problem | None:
        from starlette.datastructures import Headers, UploadFile
        from starlette.formparsers import MultiPartException, MultiPartParser

        async def stream() -> Any:
            yield body
            yield b""

        try:
            # the same limits as BentoML's own parse of the form
            form = await MultiPartParser(Headers(scope=scope), stream(), max_files=1000, max_fields=1000).parse()
        except MultiPartException as err:
            return 422, "invalid_request", f"cannot parse the multipart body: {err}"
        try:
            names: dict[str, list[str]] = {}
            for key, value in form.multi_items():
                if key in fields:
                    if not isinstance(value, UploadFile):
                        return 422, "invalid_request", (f"form field {key!r} must be a file upload; inputs are never "
                                                        "fetched from URLs or read from text fields")
                    name = value.filename or ""
                    size = len(os.path.basename(name).encode("utf-8", "surrogatepass"))
                    if size > MAX_FILENAME_BYTES:
                        return 422, "invalid_request", (f"form field {key!r}: the file name {name[:40]!r}... is {size} "
                                                        f"bytes long; rename the file to at most {MAX_FILENAME_BYTES} "
                                                        "bytes (UTF-8)")
                    names.setdefault(key, []).append(name)
            scope[FILENAMES_KEY] = names
        finally:
            await form.close()
        return None

    async def _reject(self, send: Any, endpoint: str, status: int, reason: str, message: str,
                      close: bool = False) -> None:
        body = json.dumps({"error": message, "reason": reason}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if close:  # the body was not read to its end: the connection cannot carry another request
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.count(endpoint, reason)


def _raw_values(scope: Scope, name: bytes) -> list[bytes]:
    return [v for k, v in scope.get("headers", []) if k.lower() == name]


def _header_values(scope: Scope, name: bytes) -> list[str]:
    return [v.decode("latin-1") for v in _raw_values(scope, name)]


def _content_length(scope: Scope) -> int | None:
    """The Content-Length, -1 if it is not a number (or given twice), None without one."""
    values = _header_values(scope, b"content-length")
    if not values:
        return None
    if len(values) > 1 or not values[0].strip().isdigit():
        return -1
    return int(values[0])
