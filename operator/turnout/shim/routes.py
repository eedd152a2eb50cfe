"""The OpenAI POST endpoints: one raw-ASGI handler per route, the only path for every request to it.

``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/rerank`` and ``/v1/responses`` (``responses.py``) are Starlette routes whose endpoint is a :class:`Handler`: it
reads the body, validates it with the pydantic models of ``protocol.py``
(a bad body is a 400 in the OpenAI envelope, naming the field), admits it,
calls the backend under one disconnect watcher, and writes the answer
straight to ``send``: a JSON body, or the backend's stream as one
``http.response.body`` message per backend item, with no
``StreamingResponse`` or per-chunk task machinery.

A client that goes away cancels the handler's task: a plain call is
cancelled in the backend (counted in ``turnout_requests_cancelled_total``),
a stream is closed (``chunks.aclose()``, shielded).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import anyio
from pydantic import BaseModel, ValidationError
from starlette.types import Receive, Scope, Send

from turnout.shim import responses
from turnout.shim.backends.base import Backend, Health, State, Stream
from turnout.shim.lora import Adapters
from turnout.shim.metrics import ShimMetrics
from turnout.shim.middleware import ADAPTER_KEY, T0_KEY
from turnout.shim.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, RerankRequest
from turnout.shim.rerank import rerank_response
from turnout.shim.responses import ResponsesRequest
from turnout.wire.asgi import DEFAULT_BODY_TIMEOUT, DONE, SSE_HEADERS, dumps, read_body, send_error, send_json
from turnout.wire.disconnect import Disconnect
from turnout.wire.errors import OpenAIError, envelope, sse_error_event

log = logging.getLogger("turnout.shim")

@dataclass(frozen=True)
class Endpoint:
    """One POST route: its path, what it needs of the backend, its request model and its call."""

    path: str
    capability: str
    model: type[BaseModel]
    call: Callable[[Backend, dict[str, Any]], Awaitable[Any]]
    chat: bool = False
    #: the stream ends with ``data: [DONE]`` (chat, completions; not the Responses API's event stream)
    done: bool = True


ENDPOINTS = (
    Endpoint("/v1/chat/completions", "chat", ChatCompletionRequest, lambda b, body: b.chat(body), chat=True),
    Endpoint("/v1/completions", "completions", CompletionRequest, lambda b, body: b.completions(body)),
    Endpoint("/v1/embeddings", "embeddings", EmbeddingRequest, lambda b, body: b.embeddings(body)),
    Endpoint("/v1/rerank", "rerank", RerankRequest, lambda b, body: b.rerank(body)),
    Endpoint("/v1/responses", "chat", ResponsesRequest, responses.create, done=False),
)


@dataclass
class Serving:
    """What every handler shares: the backend, the served name, metrics, health and the body limit."""

    backend: Backend
    served: str
    engine: str
    model_type: str
    metrics: ShimMetrics
    health: Callable[[], Health]
    #: the largest request body (a larger ``Content-Length`` is refused by the middleware already)
    max_body_bytes: int
    #: the LoRA adapters a request may name as its ``model``
    adapters: Adapters
    #: seconds the body may take to arrive whole (then 408: slowloris)
    body_timeout: float = DEFAULT_BODY_TIMEOUT

    def admit(self, req: Any, capability: str) -> dict[str, Any]:
        """The request body for the backend, or an OpenAIError saying why it cannot be served."""
        served = self.served
        if req.model is not None and req.model != served and req.model not in self.adapters.names():
            raise OpenAIError(f"model '{req.model}' does not exist; this server serves {self.adapters.known()}",
                              status=404, param="model", code="model_not_found")
        caps = self.backend.capabilities
        if caps and capability not in caps:
            article = "an" if self.model_type in ("embedding", "llm") else "a"
            raise OpenAIError(f"'{served}' does not serve {capability} (it is {article} {self.model_type} model)",
                              status=404, code="unsupported")
        state = self.health()
        if state.state is State.LOADING:
            raise OpenAIError(f"'{served}' is loading; retry shortly", status=503,
                              type="service_unavailable", code="model_loading", retry_after=5)
        if state.state is State.DEAD:
            raise OpenAIError(f"the {self.engine} engine is not running: {state.message}", status=503,
                              type="service_unavailable", code="engine_dead", retry_after=10)
        body = req.body()
        body["model"] = self.adapters.acquire(req.model) or served  # held until the answer ends
        return body

    def count_usage(self, endpoint: str, usage: Any, adapter: str = "") -> None:
        if not isinstance(usage, dict):
            return
        p = usage.get("prompt_tokens", usage.get("input_tokens"))  # chat and completions; Responses
        c = usage.get("completion_tokens", usage.get("output_tokens"))
        if isinstance(p, int) and p > 0:
            self.metrics.prompt_tokens.labels(endpoint, adapter).inc(p)
        if isinstance(c, int) and c > 0:
            self.metrics.completion_tokens.labels(endpoint, adapter).inc(c)


class _Request(Disconnect):
    """One request's state, as the disconnect watcher and the handler see it."""

    __slots__ = ("streaming",)

    def __init__(self, receive: Receive) -> None:
        super().__init__(receive)
        self.streaming = False


class Handler:
    """The ASGI endpoint of one :class:`Endpoint`."""

    def __init__(self, endpoint: Endpoint, serving: Serving) -> None:
        self.endpoint = endpoint
        self.serving = serving

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ep, sv = self.endpoint, self.serving
        try:
            raw = await read_body(receive, sv.max_body_bytes, sv.body_timeout)
        except OpenAIError as exc:  # a chunked body past the limit, or one that trickles
            sv.metrics.rejected.labels("too_large" if exc.status == 413 else "body_timeout").inc()
            await send_error(send, exc)
            return
        if raw is None:
            return  # the client left while sending
        try:
            body = sv.admit(parse(raw, ep.model), ep.capability)
        except OpenAIError as exc:
            await send_error(send, exc)
            return
        model = body["model"]
        adapter = "" if model == sv.served else model
        scope[ADAPTER_KEY] = adapter
        try:
            async with _Request(receive) as state:
                await self._answer(scope, send, body, state)
        finally:
            sv.adapters.release(adapter or None)
        if state.cancelled and not state.streaming:  # a stream counts its own
            sv.metrics.cancelled.labels(ep.path).inc()
            with suppress(Exception):
                await send_json(send, 499, envelope("client closed the request", 499, code="client_closed"))

    async def _answer(self, scope: Scope, send: Send, body: dict[str, Any], state: _Request) -> None:
        ep, sv = self.endpoint, self.serving
        try:
            result = await ep.call(sv.backend, body)
        except OpenAIError as exc:
            state.finished = True
            await send_error(send, exc)
            return
        except Exception as exc:
            log.error("unhandled error", exc_info=exc)
            state.finished = True
            await send_json(send, 500, envelope(f"internal error: {type(exc).__name__}", 500, code="internal_error"))
            return
        if isinstance(result, Stream):
            state.streaming = True
            opts = body.get("stream_options") or {}
            await self._stream(send, result, scope.get(T0_KEY, time.perf_counter()),
                               bool(opts.get("include_usage")), state, body["model"])
            return
        model = body["model"]
        out = rerank_response(result, body, model) if ep.capability == "rerank" else result
        out["model"] = model
        sv.count_usage(ep.path, out.get("usage"), "" if model == sv.served else model)
        state.finished = True
        await send_json(send, 200, out)

    async def _stream(self, send: Send, stream: Stream, t0: float, include_usage: bool, state: _Request,
                      model: str) -> None:
        """The backend's stream as SSE: bytes as they are, dict chunks serialised, then ``[DONE]``."""
        ep, sv = self.endpoint, self.serving
        served, endpoint = model, ep.path
        adapter = "" if served == sv.served else served
        chunks = stream.chunks
        timed = False
        first_dict = True
        usage_seen = False
        last: dict[str, Any] | None = None
        try:
            try:
                await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
                async for item in chunks:
                    if not timed:
                        timed = True
                        sv.metrics.ttft.labels(endpoint, adapter).observe(time.perf_counter() - t0)
                    if isinstance(item, bytes):
                        await send({"type": "http.response.body", "body": item, "more_body": True})
                        continue
                    item["model"] = served
                    if item.get("usage"):
                        usage_seen = True
                        _fill_usage(stream, item["usage"])
                        if not include_usage and not item.get("choices"):
                            continue
                    if first_dict:
                        first_dict = False
                        if ep.chat:
                            _ensure_role(item)
                    last = item
                    await send({"type": "http.response.body", "body": b"data: " + dumps(item) + b"\n\n",
                                "more_body": True})
                tail = DONE if ep.done else b""
                if include_usage and not usage_seen and last is not None:
                    tail = b"data: " + dumps(_usage_chunk(last, stream, served)) + b"\n\n" + DONE
            except Exception as exc:
                if not isinstance(exc, OpenAIError):
                    log.error("error while streaming", exc_info=exc)
                tail = sse_error_event(exc) + (DONE if ep.done else b"")
            state.finished = True
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        finally:
            if not state.finished:
                sv.metrics.cancelled.labels(endpoint).inc()
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True), suppress(Exception):
                    await aclose()
            sv.count_usage(endpoint, {"prompt_tokens": stream.usage.prompt_tokens,
                                      "completion_tokens": stream.usage.completion_tokens}, adapter)


def parse(raw: bytes, model: type[BaseModel]) -> Any:
    """The validated request, or a 400 OpenAIError naming the first bad field."""
    try:
        obj = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError included
        raise OpenAIError(f"request body is not valid JSON: {exc}", code="invalid_request") from None
    if not isinstance(obj, dict):
        raise OpenAIError("request body is missing or not a JSON object", code="invalid_request")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        message, param = describe_validation(exc.errors())
        raise OpenAIError(message, param=param, code="invalid_request") from None


def describe_validation(errors: list[Any]) -> tuple[str, str | None]:
    """A message and ``param`` for pydantic's errors (FastAPI's carry a leading ``body`` in ``loc``)."""
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return f"request body is not valid JSON: {detail}".rstrip(": "), None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    if param is None and first.get("type") == "missing":
        return "request body is missing or not a JSON object", None
    return (f"{param}: {msg}" if param else msg) + more, param


def _ensure_role(chunk: dict[str, Any]) -> None:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        if isinstance(delta, dict) and "role" not in delta:
            delta["role"] = "assistant"


def _fill_usage(stream: Stream, usage: dict[str, Any]) -> None:
    p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(p, int):
        stream.usage.prompt_tokens = p
    if isinstance(c, int):
        stream.usage.completion_tokens = c


def _usage_chunk(last: dict[str, Any], stream: Stream, served: str) -> dict[str, Any]:
    p, c = stream.usage.prompt_tokens, stream.usage.completion_tokens
    return {"id": last.get("id", ""), "object": last.get("object", "chat.completion.chunk"),
            "created": last.get("created", int(time.time())), "model": served, "choices": [],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}}
