"""The shim's pure-ASGI middleware: auth, body limit, admission and request metrics.

It runs before FastAPI parses anything, so an unauthenticated or oversized
request costs almost nothing, and it adds no per-chunk work to streams (only
``http.response.start`` is looked at).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from turnout.shim.apikey import ApiKeyFile
from turnout.shim.metrics import ShimMetrics
from turnout.wire.asgi import StatusSend, bearer, check_length, send_error, unauthorized
from turnout.wire.errors import OpenAIError

#: scope key holding the request's start time (``time.perf_counter()``)
T0_KEY = "turnout.t0"

#: scope key holding the LoRA adapter a request named as its model ("" for the base model), set by the endpoint
ADAPTER_KEY = "turnout.adapter"

#: paths answered without a key and outside the admission queue
OPEN_PATHS = frozenset({"/health", "/live", "/metrics"})


class ShimMiddleware:
    """Checks every ``/v1/...`` request before the app sees it.

    * 401 without ``Authorization: Bearer <key>`` when a key is set
      (constant-time compare; a key file is followed as it is rotated:
      :mod:`turnout.shim.apikey`);
    * 413 when the body's ``Content-Length`` is larger than ``max_body_bytes``
      (a chunked body is held to it as the endpoint reads it: :mod:`~turnout.shim.routes`);
    * 429 with ``Retry-After`` once ``max_queue`` requests are admitted and
      not finished (a streamed request counts until its stream ends);
    * counts requests by endpoint, status and LoRA adapter, latency, and in-flight requests.
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
        answer = StatusSend(send, 500)
        guarded = path not in OPEN_PATHS
        admitted = False
        try:
            if guarded:
                refusal = self._refuse(scope)
                if refusal is not None:
                    await send_error(answer.send, refusal)
                    return
                if scope["method"] == "POST":
                    scope["headers"] = _json_content_type(scope["headers"])
                self.admitted += 1
                admitted = True
                self.metrics.in_flight.inc()
            await self.app(scope, receive, answer.send)
        finally:
            if admitted:
                self.admitted -= 1
                self.metrics.in_flight.dec()
            adapter = scope.get(ADAPTER_KEY, "")
            self.metrics.requests.labels(endpoint, str(answer.status), adapter).inc()
            self.metrics.latency.labels(endpoint, adapter).observe(time.perf_counter() - t0)

    def _refuse(self, scope: Scope) -> OpenAIError | None:
        headers = scope["headers"]
        if self._key is not None and not hmac.compare_digest(bearer(headers), self._key()):
            self.metrics.rejected.labels("unauthorized").inc()
            return unauthorized()
        try:
            check_length(headers, self.max_body_bytes)
        except OpenAIError as exc:
            if exc.status == 413:
                self.metrics.rejected.labels("too_large").inc()
            return exc
        if self.admitted >= self.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            return OpenAIError(f"the server is at its limit of {self.max_queue} concurrent requests; retry later",
                               status=429, code="queue_full", retry_after=1)
        return None


def _json_content_type(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Treat bodies as JSON whatever the client declared (``curl -d`` sends a form type)."""
    out = [(k, v) for k, v in headers if k != b"content-type"]
    for k, v in headers:
        if k == b"content-type" and b"json" in v.lower():
            return headers
    out.append((b"content-type", b"application/json"))
    return out
