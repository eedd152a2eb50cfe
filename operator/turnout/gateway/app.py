"""The gateway's ASGI app: one OpenAI endpoint in front of every model, raw ASGI on the hot path.

``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` and
``/v1/rerank`` are routed by the body's ``model`` to an endpoint of that model
(:mod:`turnout.gateway.routing`). The body is parsed once, to read ``model``
and the prompt prefix, and the original bytes are forwarded with the
client's ``Authorization`` header. Answers come back as bytes: plain ones
whole, streams through the shim's SSE relay (whole events per buffer, then
``[DONE]``). A client that goes away cancels the request: a held request
leaves the queue, a forwarded one closes its upstream connection.

A model with no ready endpoint holds the request (:meth:`GatewayApp._endpoint`):
at most ``queue_size`` requests per model wait (more: 429), a model scaled to
zero is woken once, and after ``hold_timeout`` seconds the answer is 503;
both with ``Retry-After``. An endpoint that refuses the connection (a pod
just removed) is skipped and the request, not yet sent, goes to another.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from turnout.aio import wait_for
from turnout.gateway.metrics import GatewayMetrics, ModelMetrics
from turnout.gateway.registry import Endpoint, Model
from turnout.gateway.routing import PREFIX_HASH, prompt_prefix
from turnout.gateway.source import KeyUnavailable, Source
from turnout.shim.backends._relay import (
    DEFAULT_IDLE_TIMEOUT,
    EngineConnectError,
    EngineConnectionError,
    relay_response,
    stream_error,
)
from turnout.shim.backends.base import Usage
from turnout.shim.errors import envelope_bytes, retry_after_header, sse_error_event

log = logging.getLogger("turnout.gateway")

# The ASGI callables (as starlette.types names them; starlette is not a dependency of the gateway).
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank"})
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"),
               (b"content-type", b"text/event-stream; charset=utf-8")]
#: upstream answer headers passed on to the client (besides content-type and content-length)
PASSED_HEADERS = ("retry-after", "www-authenticate")
DEFAULT_HOLD_TIMEOUT = 300.0
DEFAULT_QUEUE_SIZE = 100
DEFAULT_MAX_BODY = 32 * 1024 * 1024
#: seconds between two wake patches of one model that is still asleep (a patch lost, or undone)
WAKE_DEBOUNCE = 30.0
#: the Retry-After of a 503 for a request held past the timeout, and of a 429 for a full queue
RETRY_AFTER = 5


class Refusal(Exception):
    """An answer in the OpenAI envelope instead of a forwarded request."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 retry_after: float | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.param = status, code, param
        self.headers = {**retry_after_header(retry_after), **(headers or {})}
        #: the model refused, when known (its metrics count the refusal)
        self.model: Model | None = None


class GatewayApp:
    """The ASGI app over a :class:`~turnout.gateway.source.Source`."""

    def __init__(self, source: Source, *, metrics: GatewayMetrics | None = None,
                 api_key: Callable[[], bytes] | None = None, hold_timeout: float = DEFAULT_HOLD_TIMEOUT,
                 queue_size: int = DEFAULT_QUEUE_SIZE, max_body_bytes: int = DEFAULT_MAX_BODY,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> None:
        self.source = source
        self.registry = source.registry
        self.metrics = metrics or GatewayMetrics()
        self.api_key = api_key
        self.hold_timeout = hold_timeout
        self.queue_size = queue_size
        self.max_body_bytes = max_body_bytes
        self.idle_timeout = idle_timeout
        self._woken: dict[int, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # ----- ASGI entry ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path, method = scope["path"], scope["method"]
            if path in ROUTES:
                if method != "POST":
                    await _send_error(send, Refusal(405, f"method {method} is not allowed on {path}",
                                                    code="method_not_allowed"))
                    return
                await self._forward(scope, receive, send)
            elif method == "GET" and path in ("/health", "/healthz"):
                await _send(send, 200, b'{"status":"ok"}')
            elif method == "GET" and path == "/metrics":
                await _send(send, 200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST.encode())
            elif method == "GET" and (path == "/v1/models" or path.startswith("/v1/models/")):
                await self._models(scope, send, path[len("/v1/models/"):] if path != "/v1/models" else None)
            else:
                await _send_error(send, Refusal(404, f"no route {method} {path}", code="not_found"))
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.source.start()
                except Exception as exc:
                    log.error("the gateway's model source failed to start: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in list(self._tasks):
                    task.cancel()
                await self.source.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ----- GET /v1/models -----------------------------------------------------------------------

    async def _models(self, scope: Scope, send: Send, model_id: str | None) -> None:
        if self.api_key is not None and not hmac.compare_digest(_bearer(scope), self.api_key()):
            await _send_error(send, _unauthorized())
            return
        if model_id is None:
            data = [_card(m) for m in self.registry.models()]
            await _send(send, 200, _dumps({"object": "list", "data": data}))
            return
        model = self.registry.get(model_id)
        if model is None:
            await _send_error(send, self._unknown(model_id))
            return
        await _send(send, 200, _dumps(_card(model)))

    def _unknown(self, name: str) -> Refusal:
        known = ", ".join(repr(m.served) for m in self.registry.models()) or "none"
        return Refusal(404, f"model {name!r} does not exist; this gateway serves: {known}", param="model",
                       code="model_not_found")

    # ----- POST: the forwarding path ------------------------------------------------------------

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            raw = await self._read_body(scope, receive)
            if raw is None:
                return  # the client left while sending
            body, model = await self._admit(scope, raw)
        except Refusal as exc:
            await _send_error(send_status, exc)
            self._count(exc.model, status)
            return
        task = asyncio.current_task()
        assert task is not None
        state = _State()
        watcher = asyncio.ensure_future(_watch(receive, task, state))
        try:
            await self._serve(scope, send_status, model, body, raw, t0, state)
        except asyncio.CancelledError:
            if not state.disconnected:
                raise
            uncancel = getattr(task, "uncancel", None)
            if uncancel is not None:
                uncancel()
            if not status:
                status = 499
        except Refusal as exc:
            state.finished = True
            await _send_error(send_status, exc)
        finally:
            watcher.cancel()
            self._count(model, status or 500)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    raise Refusal(400, "invalid Content-Length header")
                if int(value) > self.max_body_bytes:
                    raise Refusal(413, f"request body of {int(value)} bytes is larger than the limit of "
                                  f"{self.max_body_bytes} bytes", code="request_too_large")
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            piece = message.get("body", b"")
            size += len(piece)
            if size > self.max_body_bytes:
                raise Refusal(413, f"request body is larger than the limit of {self.max_body_bytes} bytes",
                              code="request_too_large")
            parts.append(piece)
            if not message.get("more_body"):
                return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _admit(self, scope: Scope, raw: bytes) -> tuple[dict[str, Any], Model]:
        """The parsed body and its model, or a Refusal (400, 401, 404, 503)."""
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise Refusal(400, f"request body is not valid JSON: {exc}", code="invalid_request") from None
        if not isinstance(body, dict):
            raise Refusal(400, "request body is missing or not a JSON object", code="invalid_request")
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise Refusal(400, "model: a model name is required (GET /v1/models lists them)", param="model",
                          code="invalid_request")
        token = _bearer(scope)
        gateway_ok = self.api_key is None or hmac.compare_digest(token, self.api_key())
        model = self.registry.get(name)
        if model is None or model.api_key is None:
            if not gateway_ok:
                raise _unauthorized()
            if model is None:
                raise self._unknown(name)
            return body, model
        try:
            key = await self.source.api_key(model)
        except KeyUnavailable as exc:
            refusal = Refusal(503, f"cannot check the API key of {model.served!r}: {exc}",
                              code="api_key_unavailable", retry_after=RETRY_AFTER)
            refusal.model = model
            raise refusal from None
        if key is not None and not hmac.compare_digest(token, key):
            refusal = _unauthorized()
            refusal.model = model
            raise refusal
        return body, model

    async def _serve(self, scope: Scope, send: Send, model: Model, body: dict[str, Any], raw: bytes, t0: float,
                     state: _State) -> None:
        prefix = prompt_prefix(body, model.routing.prefix_chars) if model.routing.strategy == PREFIX_HASH else None
        auth = _authorization(scope)
        m = self.metrics.of(model.namespace, model.name, model.served)
        deadline = time.monotonic() + self.hold_timeout
        tried: list[Endpoint] = []
        while True:
            ep = await self._endpoint(model, prefix, tried, deadline)
            ep.in_flight += 1
            m.in_flight.inc()
            try:
                try:
                    resp = await ep.pool.request("POST", scope["path"], raw, headers=auth)
                except EngineConnectError as exc:
                    m.upstream_errors.inc()
                    log.info("%s: %s; trying another endpoint", model.served, exc)
                    tried.append(ep)
                    continue
                except EngineConnectionError as exc:
                    m.upstream_errors.inc()
                    raise Refusal(502, f"the model server of {model.served!r} failed: {exc}",
                                  code="upstream_failed") from None
                ctype = resp.headers.get("content-type", "")
                if resp.status == 200 and ctype.startswith("text/event-stream"):
                    await self._relay(send, resp, m, t0, state)
                    return
                try:
                    data = await resp.read()
                except EngineConnectionError as exc:
                    m.upstream_errors.inc()
                    raise Refusal(502, f"the model server of {model.served!r} broke off its answer: {exc}",
                                  code="upstream_failed") from None
                finally:
                    resp.close()
                headers = [(b"content-type", (ctype or "application/json").encode("latin-1")),
                           (b"content-length", str(len(data)).encode())]
                headers += [(h.encode(), resp.headers[h].encode("latin-1")) for h in PASSED_HEADERS
                            if h in resp.headers]
                state.finished = True
                await send({"type": "http.response.start", "status": resp.status, "headers": headers})
                await send({"type": "http.response.body", "body": data})
                return
            finally:
                ep.in_flight -= 1
                m.in_flight.dec()

    async def _endpoint(self, model: Model, prefix: str | None, tried: list[Endpoint], deadline: float) -> Endpoint:
        """An endpoint to send to; holds the request while the model has none (waking it from zero)."""
        ep = model.pick(prefix, tried)
        if ep is not None:
            return ep
        if model.queued >= self.queue_size:
            raise Refusal(429, f"{model.served!r} has no ready replica and {model.queued} requests are waiting "
                          "for one already; retry later", code="queue_full", retry_after=RETRY_AFTER)
        queue = self.metrics.of(model.namespace, model.name, model.served).queue_length
        model.queued += 1
        queue.inc()
        try:
            while ep is None:
                if model.asleep:
                    self._wake(model)
                else:
                    self._woken.pop(id(model), None)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Refusal(503, f"{model.served!r} has no ready replica after {self.hold_timeout:g} s"
                                  f"{' (it is starting from zero)' if model.replicas == 0 or tried else ''}; "
                                  "retry later", code="model_not_ready", retry_after=RETRY_AFTER)
                with suppress(asyncio.TimeoutError):
                    await wait_for(model.changed(), min(left, 1.0))
                ep = model.pick(prefix, tried)
        finally:
            model.queued -= 1
            queue.dec()
        return ep

    def _wake(self, model: Model) -> None:
        now = time.monotonic()
        last = self._woken.get(id(model))
        if last is not None and now - last < WAKE_DEBOUNCE:
            return
        self._woken[id(model)] = now
        log.info("waking %s/%s (scaled to zero) for a held request", model.namespace, model.name)
        task = asyncio.ensure_future(self._wake_task(model))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wake_task(self, model: Model) -> None:
        try:
            await self.source.wake(model)
        except Exception as exc:
            log.warning("waking %s/%s failed: %s", model.namespace, model.name, exc)
            self._woken.pop(id(model), None)

    async def _relay(self, send: Send, resp: Any, m: ModelMetrics, t0: float, state: _State) -> None:
        relay = relay_response(resp, Usage(), keep_usage=True, idle_timeout=self.idle_timeout)
        first = True
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            try:
                async for piece in relay:
                    if first:
                        first = False
                        m.ttft.observe(time.perf_counter() - t0)
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                tail = DONE
            except EngineConnectionError as exc:
                m.upstream_errors.inc()
                tail = sse_error_event(stream_error("upstream", exc)) + DONE
            state.finished = True
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        finally:
            with suppress(Exception):
                await relay.aclose()  # it never suspends: a pending cancellation cannot cut it short

    def _count(self, model: Model | None, status: int) -> None:
        if model is not None:
            self.metrics.of(model.namespace, model.name, model.served).answered(status)


class _State:
    __slots__ = ("disconnected", "finished")

    def __init__(self) -> None:
        self.disconnected = False
        self.finished = False


async def _watch(receive: Receive, task: asyncio.Task[Any], state: _State) -> None:
    """Cancel ``task`` when the client disconnects before its answer is finished."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not state.finished:
                state.disconnected = True
                task.cancel()
            return


def _bearer(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return b""


def _authorization(scope: Scope) -> bytes:
    """The client's Authorization header as a raw header line for upstream (empty when it sent none)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return b"Authorization: " + value + b"\r\n"
    return b""


def _unauthorized() -> Refusal:
    return Refusal(401, "missing or invalid API key: send 'Authorization: Bearer <key>'", code="invalid_api_key",
                   headers={"WWW-Authenticate": "Bearer"})


def _card(model: Model) -> dict[str, Any]:
    return {"id": model.served, "object": "model", "created": model.created, "owned_by": "turnout",
            "ready_replicas": len(model.endpoints)}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


async def _send(send: Send, status: int, body: bytes, ctype: bytes = b"application/json",
                headers: dict[str, str] | None = None) -> None:
    raw = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, exc: Refusal) -> None:
    await _send(send, exc.status, envelope_bytes(str(exc), exc.status, code=exc.code, param=exc.param),
                headers=exc.headers)
