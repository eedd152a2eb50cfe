"""The shim's pure-ASGI middleware: auth, body limit, admission and request metrics.

It runs before FastAPI parses anything, so an unauthenticated or oversized
request costs almost nothing, and it adds no per-chunk work to streams (only
``http.response.start`` is looked at).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from turnout.shim.apikey import ApiKeyFile
from turnout.shim.errors import envelope_bytes, retry_after_header
from turnout.shim.metrics import ShimMetrics

#: scope key holding the request's start time (``time.perf_counter()``)
T0_KEY = "turnout.t0"

#: paths answered without a key and outside the admission queue
OPEN_PATHS = frozenset({"/health", "/live", "/metrics"})


class ShimMiddleware:
    """Checks every ``/v1/...`` request before the app sees it.

    * 401 without ``Authorization: Bearer <key>`` when a key is set
      (constant-time compare; a key file is followed as it is rotated:
      :mod:`turnout.shim.apikey`);
    * 413 when the body is larger than ``max_body_bytes`` (by
      ``Content-Length`` at once, or while reading a chunked body);
    * 429 with ``Retry-After`` once ``max_queue`` requests are admitted and
      not finished (a streamed request counts until its stream ends);
    * counts requests by endpoint and status, latency, and in-flight requests.
    """

    def __init__(self, app: ASGIApp, *, metrics: ShimMetrics, api_key: str | ApiKeyFile | None,
                 max_body_bytes: int, max_queue: int) -> None:
        self.app = app
        self.metrics = metrics
        if isinstance(api_key, str):
            fixed = api_key.encode()
            self._key: Callable[[], bytes] | None = (lambda: fixed) if fixed else None
        else:
            self._key = api_key.current if api_key is not None else None
        self.max_body_bytes = max_body_bytes
        self.max_queue = max_queue
        self.admitted = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        scope[T0_KEY] = t0
        path: str = scope["path"]
        endpoint = self.metrics.endpoint(path)
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        guarded = path not in OPEN_PATHS
        admitted = False
        try:
            if guarded:
                refusal = self._refuse(scope)
                if refusal is not None:
                    code, body, headers = refusal
                    await _send_json(send_status, code, body, headers)
                    return
                if scope["method"] == "POST":
                    scope["headers"] = _json_content_type(scope["headers"])
                self.admitted += 1
                admitted = True
                self.metrics.in_flight.inc()
                receive = self._limited(receive)
            await self.app(scope, receive, send_status)
        finally:
            if admitted:
                self.admitted -= 1
                self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)

    def _refuse(self, scope: Scope) -> tuple[int, bytes, dict[str, str]] | None:
        headers = scope["headers"]
        if self._key is not None and not self._authorized(headers):
            self.metrics.rejected.labels("unauthorized").inc()
            return 401, envelope_bytes(
                "missing or invalid API key: send 'Authorization: Bearer <key>'", 401,
                code="invalid_api_key"), {"WWW-Authenticate": "Bearer"}
        for name, value in headers:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return 400, envelope_bytes("invalid Content-Length header", 400), {}
                if length > self.max_body_bytes:
                    self.metrics.rejected.labels("too_large").inc()
                    return 413, envelope_bytes(
                        f"request body of {length} bytes is larger than the limit of "
                        f"{self.max_body_bytes} bytes", 413, code="request_too_large"), {}
                break
        if self.admitted >= self.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            return 429, envelope_bytes(
                f"the server is at its limit of {self.max_queue} concurrent requests; retry later",
                429, code="queue_full"), retry_after_header(1)
        return None

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        assert self._key is not None
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key())
        return False

    def _limited(self, receive: Receive) -> Receive:
        limit = self.max_body_bytes
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    self.metrics.rejected.labels("too_large").inc()
                    raise HTTPException(413, f"request body is larger than the limit of {limit} bytes")
            return message

        return limited_receive


def _json_content_type(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Treat bodies as JSON whatever the client declared (``curl -d`` sends a form type)."""
    out = [(k, v) for k, v in headers if k != b"content-type"]
    for k, v in headers:
        if k == b"content-type" and b"json" in v.lower():
            return headers
    out.append((b"content-type", b"application/json"))
    return out


async def _send_json(send: Send, status: int, body: bytes, headers: dict[str, Any]) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), str(v).encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
