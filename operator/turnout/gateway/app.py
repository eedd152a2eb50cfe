"""The gateway's ASGI app: one OpenAI endpoint in front of every model, raw ASGI on the hot path.

``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/rerank`` and ``/v1/responses`` are routed by the body's ``model`` to an endpoint of that model
(:mod:`turnout.gateway.routing`). The body is parsed once, to read ``model``
and the prompt prefix, and the original bytes are forwarded with the
client's ``Authorization`` header. Answers come back as bytes: plain ones
whole, streams through the SSE relay of :mod:`turnout.wire` (whole events per buffer, then
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
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from turnout.aio import wait_for
from turnout.api import key_digest
from turnout.gateway.drain import Drain
from turnout.gateway.metrics import GatewayMetrics, ModelMetrics
from turnout.gateway.registry import Endpoint, Model
from turnout.gateway.routing import PREFIX_HASH, prompt_prefix
from turnout.gateway.source import KeyUnavailable, Source
from turnout.wire.asgi import (
    DEFAULT_BODY_TIMEOUT,
    DONE,
    SSE_HEADERS,
    Receive,
    Scope,
    Send,
    StatusSend,
    bearer,
    check_length,
    dumps,
    read_body,
    send_bytes,
    send_error,
    unauthorized,
)
from turnout.wire.client import EngineConnectError, EngineConnectionError
from turnout.wire.disconnect import Disconnect
from turnout.wire.errors import OpenAIError, sse_error_event
from turnout.wire.relay import DEFAULT_IDLE_TIMEOUT, relay_response, stream_error
from turnout.wire.sse import Usage

log = logging.getLogger("turnout.gateway")

ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/v1/responses"})
#: upstream answer headers passed on to the client (besides content-type and content-length)
PASSED_HEADERS = ("retry-after", "www-authenticate")
DEFAULT_HOLD_TIMEOUT = 300.0
DEFAULT_QUEUE_SIZE = 100
DEFAULT_MAX_BODY = 32 * 1024 * 1024
#: seconds between two wake patches of one model that is still asleep (a patch lost, or undone)
WAKE_DEBOUNCE = 30.0
#: the Retry-After of a 503 for a request held past the timeout, and of a 429 for a full queue
RETRY_AFTER = 5


class GatewayApp:
    """The ASGI app over a :class:`~turnout.gateway.source.Source`."""

    def __init__(self, source: Source, *, metrics: GatewayMetrics | None = None,
                 api_key: Callable[[], bytes] | None = None, hold_timeout: float = DEFAULT_HOLD_TIMEOUT,
                 queue_size: int = DEFAULT_QUEUE_SIZE, max_body_bytes: int = DEFAULT_MAX_BODY,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT, drain: Drain | None = None,
                 body_timeout: float = DEFAULT_BODY_TIMEOUT) -> None:
        self.source = source
        #: The open streams, ended with an error event at the shutdown deadline (turnout.gateway.drain).
        self.drain = drain or Drain()
        self.registry = source.registry
        self.metrics = metrics or GatewayMetrics()
        self.api_key = api_key
        self.hold_timeout = hold_timeout
        self.queue_size = queue_size
        self.max_body_bytes = max_body_bytes
        self.idle_timeout = idle_timeout
        self.body_timeout = body_timeout
        self._woken: dict[int, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # ----- ASGI entry ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path, method = scope["path"], scope["method"]
            if path in ROUTES:
                if method != "POST":
                    await send_error(send, OpenAIError(f"method {method} is not allowed on {path}", status=405,
                                                       code="method_not_allowed"))
                    return
                await self._forward(scope, receive, send)
            elif method == "GET" and path in ("/health", "/healthz"):
                await send_bytes(send, 200, b'{"status":"ok"}')
            elif method == "GET" and path == "/metrics":
                await send_bytes(send, 200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST.encode())
            elif method == "GET" and (path == "/v1/models" or path.startswith("/v1/models/")):
                await self._models(scope, send, path[len("/v1/models/"):] if path != "/v1/models" else None)
            else:
                await send_error(send, OpenAIError(f"no route {method} {path}", status=404, code="not_found"))
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
        if self.api_key is not None and not hmac.compare_digest(bearer(scope["headers"]), self.api_key()):
            await send_error(send, unauthorized())
            return
        if model_id is None:
            data = [_card(m) for m in self.registry.models()]
            await send_bytes(send, 200, dumps({"object": "list", "data": data}))
            return
        model = self.registry.get(model_id)
        if model is None:
            await send_error(send, self._unknown(model_id))
            return
        await send_bytes(send, 200, dumps(_card(model)))

    def _unknown(self, name: str) -> OpenAIError:
        known = ", ".join(repr(m.served) for m in self.registry.models()) or "none"
        return OpenAIError(f"model {name!r} does not exist; this gateway serves: {known}", status=404,
                           param="model", code="model_not_found")

    # ----- POST: the forwarding path ------------------------------------------------------------

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        answer = StatusSend(send)
        model: Model | None = None
        try:
            check_length(scope["headers"], self.max_body_bytes)
            raw = await read_body(receive, self.max_body_bytes, self.body_timeout)
            if raw is None:
                return  # the client left while sending
            body = _parse(raw)
            model = self.registry.get(body["model"])
            await self._authorize(scope, body["model"], model)
        except OpenAIError as exc:
            await send_error(answer.send, exc)
            # a refusal counts against a model only once the model's own key is in question
            self._count(model if model is not None and model.api_key is not None else None, answer.status)
            return
        assert model is not None
        try:
            async with Disconnect(receive) as watch:
                try:
                    await self._serve(scope, answer.send, model, body, raw, t0, watch)
                except OpenAIError as exc:
                    watch.finished = True
                    await send_error(answer.send, exc)
            if watch.cancelled and not answer.status:
                answer.status = 499
        finally:
            self._count(model, answer.status or 500)

    async def _authorize(self, scope: Scope, name: str, model: Model | None) -> None:
        """Refuse (401, 404, 503) a request the gateway's key or the model's own key does not admit."""
        token = bearer(scope["headers"])
        gateway_ok = self.api_key is None or hmac.compare_digest(token, self.api_key())
        if model is None or model.api_key is None:
            if not gateway_ok:
                raise unauthorized()
            if model is None:
                raise self._unknown(name)
            return
        try:
            digest = await self.source.api_key(model)
        except KeyUnavailable as exc:
            raise OpenAIError(f"cannot check the API key of {model.served!r}: {exc}", status=503,
                              code="api_key_unavailable", retry_after=RETRY_AFTER) from None
        if digest is not None and not hmac.compare_digest(key_digest(token), digest):
            raise unauthorized()

    async def _serve(self, scope: Scope, send: Send, model: Model, body: dict[str, Any], raw: bytes, t0: float,
                     watch: Disconnect) -> None:
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
                    raise OpenAIError(f"the model server of {model.served!r} failed: {exc}", status=502,
                                      code="upstream_failed") from None
                ctype = resp.headers.get("content-type", "")
                if resp.status == 200 and ctype.startswith("text/event-stream"):
                    await self._relay(send, resp, m, t0, watch, done=scope["path"] != "/v1/responses")
                    return
                try:
                    data = await resp.read()
                except EngineConnectionError as exc:
                    m.upstream_errors.inc()
                    raise OpenAIError(f"the model server of {model.served!r} broke off its answer: {exc}",
                                      status=502, code="upstream_failed") from None
                finally:
                    resp.close()
                headers = [(b"content-type", (ctype or "application/json").encode("latin-1")),
                           (b"content-length", str(len(data)).encode())]
                headers += [(h.encode(), resp.headers[h].encode("latin-1")) for h in PASSED_HEADERS
                            if h in resp.headers]
                watch.finished = True
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
            raise OpenAIError(f"{model.served!r} has no ready replica and {model.queued} requests are waiting "
                              "for one already; retry later", status=429, code="queue_full", retry_after=RETRY_AFTER)
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
                if left <= 0 and model.parent is not None and not model.asleep:
                    raise OpenAIError(f"no ready replica of {model.parent!r} holds the adapter {model.served!r} "
                                      f"after {self.hold_timeout:g} s (status.adapters of ModelDeployment "
                                      f"{model.namespace}/{model.name} says why); retry later", status=503,
                                      code="model_not_ready", retry_after=RETRY_AFTER)
                if left <= 0:
                    raise OpenAIError(f"{model.served!r} has no ready replica after {self.hold_timeout:g} s"
                                      f"{' (it is starting from zero)' if model.replicas == 0 or tried else ''}; "
                                      "retry later", status=503, code="model_not_ready", retry_after=RETRY_AFTER)
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

    async def _relay(self, send: Send, resp: Any, m: ModelMetrics, t0: float, watch: Disconnect, *,
                     done: bool = True) -> None:
        """The upstream stream; ``done``: it ends with ``[DONE]`` (not the Responses API's events)."""
        end = DONE if done else b""
        relay = relay_response(resp, Usage(), keep_usage=True, require_done=done, idle_timeout=self.idle_timeout,
                               active=self.drain.streams)
        first = True
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            try:
                async for piece in relay:
                    if first:
                        first = False
                        m.ttft.observe(time.perf_counter() - t0)
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                tail = end
            except EngineConnectionError as exc:
                if self.drain.ending:
                    tail = sse_error_event(self.drain.error()) + end
                else:
                    m.upstream_errors.inc()
                    tail = sse_error_event(stream_error("upstream", exc)) + end
            watch.finished = True
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        finally:
            with suppress(Exception):
                await relay.aclose()  # it never suspends: a pending cancellation cannot cut it short

    def _count(self, model: Model | None, status: int) -> None:
        if model is not None:
            self.metrics.of(model.namespace, model.name, model.served).answered(status)


def _parse(raw: bytes) -> dict[str, Any]:
    """The request body, which names its model, or a 400."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise OpenAIError(f"request body is not valid JSON: {exc}", code="invalid_request") from None
    if not isinstance(body, dict):
        raise OpenAIError("request body is missing or not a JSON object", code="invalid_request")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise OpenAIError("model: a model name is required (GET /v1/models lists them)", param="model",
                          code="invalid_request")
    return body


def _authorization(scope: Scope) -> bytes:
    """The client's Authorization header as a raw header line for upstream (empty when it sent none)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return b"Authorization: " + value + b"\r\n"
    return b""


def _card(model: Model) -> dict[str, Any]:
    card = {"id": model.served, "object": "model", "created": model.created, "owned_by": "turnout",
            "ready_replicas": len(model.endpoints)}
    if model.parent is not None:  # a LoRA adapter of the base model ``parent``, as vLLM lists it
        card.update(parent=model.parent, root=model.root)
    return card
