"""The OpenAI POST endpoints: one raw-ASGI handler per route, the only path for every request to it.

``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` and
``/v1/rerank`` are Starlette routes whose endpoint is a :class:`Handler`: it
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

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import anyio
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from turnout.shim.backends.base import Backend, BackendError, Health, State, Stream
from turnout.shim.errors import envelope, retry_after_header, sse_error_event
from turnout.shim.metrics import ShimMetrics
from turnout.shim.middleware import T0_KEY
from turnout.shim.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, RerankRequest

log = logging.getLogger("turnout.shim")

DONE = b"data: [DONE]\n\n"
#: the headers of a streamed answer
SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"),
               (b"content-type", b"text/event-stream; charset=utf-8")]


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Endpoint:
    """One POST route: its path, what it needs of the backend, its request model and its call."""

    path: str
    capability: str
    model: type[BaseModel]
    call: Callable[[Backend, dict[str, Any]], Awaitable[Any]]
    chat: bool = False


ENDPOINTS = (
    Endpoint("/v1/chat/completions", "chat", ChatCompletionRequest, lambda b, body: b.chat(body), chat=True),
    Endpoint("/v1/completions", "completions", CompletionRequest, lambda b, body: b.completions(body)),
    Endpoint("/v1/embeddings", "embeddings", EmbeddingRequest, lambda b, body: b.embeddings(body)),
    Endpoint("/v1/rerank", "rerank", RerankRequest, lambda b, body: b.rerank(body)),
)


@dataclass
class Serving:
    """What every handler shares: the backend, the served name, metrics and health."""

    backend: Backend
    served: str
    engine: str
    model_type: str
    metrics: ShimMetrics
    health: Callable[[], Health]

    def admit(self, req: Any, capability: str) -> dict[str, Any]:
        """The request body for the backend, or a BackendError saying why it cannot be served."""
        served = self.served
        if req.model is not None and req.model != served:
            raise BackendError(f"model '{req.model}' does not exist; this server serves '{served}'",
                               status=404, param="model", code="model_not_found")
        caps = self.backend.capabilities
        if caps and capability not in caps:
            article = "an" if self.model_type in ("embedding", "llm") else "a"
            raise BackendError(f"'{served}' does not serve {capability} (it is {article} {self.model_type} model)",
                               status=404, code="unsupported")
        state = self.health()
        if state.state is State.LOADING:
            raise BackendError(f"'{served}' is loading; retry shortly", status=503,
                               type="service_unavailable", code="model_loading", retry_after=5)
        if state.state is State.DEAD:
            raise BackendError(f"the {self.engine} engine is not running: {state.message}", status=503,
                               type="service_unavailable", code="engine_dead", retry_after=10)
        body = req.body()
        body["model"] = served
        return body

    def count_usage(self, endpoint: str, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(p, int) and p > 0:
            self.metrics.prompt_tokens.labels(endpoint).inc(p)
        if isinstance(c, int) and c > 0:
            self.metrics.completion_tokens.labels(endpoint).inc(c)


class _Request:
    """One request's state, as the disconnect watcher and the handler see it."""

    __slots__ = ("disconnected", "finished", "streaming")

    def __init__(self) -> None:
        self.disconnected = False
        self.finished = False
        self.streaming = False


class Handler:
    """The ASGI endpoint of one :class:`Endpoint`."""

    def __init__(self, endpoint: Endpoint, serving: Serving) -> None:
        self.endpoint = endpoint
        self.serving = serving

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ep, sv = self.endpoint, self.serving
        try:
            raw = await _read_body(receive)
        except HTTPException as exc:  # the middleware's body limit, while reading
            await send_json(send, exc.status_code, envelope(
                str(exc.detail), exc.status_code, code="request_too_large" if exc.status_code == 413 else None))
            return
        if raw is None:
            return  # the client left while sending
        try:
            body = sv.admit(parse(raw, ep.model), ep.capability)
        except BackendError as exc:
            await send_error(send, exc)
            return
        task = asyncio.current_task()
        assert task is not None
        state = _Request()
        watcher = asyncio.ensure_future(_watch(receive, task, state))
        try:
            await self._answer(scope, send, body, state)
        except asyncio.CancelledError:
            if not state.disconnected:
                raise
            uncancel = getattr(task, "uncancel", None)  # Python >= 3.11 counts cancellations
            if uncancel is not None:
                uncancel()
            if not state.streaming:  # a stream counts its own
                sv.metrics.cancelled.labels(ep.path).inc()
                with suppress(Exception):
                    await send_json(send, 499, envelope("client closed the request", 499, code="client_closed"))
        finally:
            watcher.cancel()

    async def _answer(self, scope: Scope, send: Send, body: dict[str, Any], state: _Request) -> None:
        ep, sv = self.endpoint, self.serving
        try:
            result = await ep.call(sv.backend, body)
        except BackendError as exc:
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
                               bool(opts.get("include_usage")), state)
            return
        out = normalise_rerank(result, body, sv.served) if ep.capability == "rerank" else result
        out["model"] = sv.served
        sv.count_usage(ep.path, out.get("usage"))
        state.finished = True
        await send_json(send, 200, out)

    async def _stream(self, send: Send, stream: Stream, t0: float, include_usage: bool, state: _Request) -> None:
        """The backend's stream as SSE: bytes as they are, dict chunks serialised, then ``[DONE]``."""
        ep, sv = self.endpoint, self.serving
        served, endpoint = sv.served, ep.path
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
                        sv.metrics.ttft.labels(endpoint).observe(time.perf_counter() - t0)
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
                tail = DONE
                if include_usage and not usage_seen and last is not None:
                    tail = b"data: " + dumps(_usage_chunk(last, stream, served)) + b"\n\n" + DONE
            except Exception as exc:
                if not isinstance(exc, BackendError):
                    log.error("error while streaming", exc_info=exc)
                tail = sse_error_event(exc) + DONE
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
                                      "completion_tokens": stream.usage.completion_tokens})


async def _watch(receive: Receive, task: asyncio.Task[Any], state: _Request) -> None:
    """Cancel ``task`` when the client disconnects before the answer is finished."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not state.finished:
                state.disconnected = True
                task.cancel()
            return


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client disconnected first."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return parts[0] if len(parts) == 1 else b"".join(parts)


def parse(raw: bytes, model: type[BaseModel]) -> Any:
    """The validated request, or a 400 BackendError naming the first bad field."""
    try:
        obj = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError included
        raise BackendError(f"request body is not valid JSON: {exc}", code="invalid_request") from None
    if not isinstance(obj, dict):
        raise BackendError("request body is missing or not a JSON object", code="invalid_request")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        message, param = describe_validation(exc.errors())
        raise BackendError(message, param=param, code="invalid_request") from None


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


async def send_json(send: Send, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    raw_body = dumps(body)
    raw = [(b"content-length", str(len(raw_body)).encode()), (b"content-type", b"application/json")]
    raw += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": raw_body})


async def send_error(send: Send, exc: BackendError) -> None:
    await send_json(send, exc.status, exc.envelope(), retry_after_header(exc.retry_after))


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


def normalise_rerank(result: dict[str, Any], body: dict[str, Any], served: str) -> dict[str, Any]:
    """The rerank answer in the shape Xinference, Jina and Cohere clients read."""
    documents: list[str] = body["documents"]
    items = []
    for r in result.get("results") or ():
        index = r["index"]
        score = r.get("relevance_score", r.get("score"))
        items.append({"index": index, "relevance_score": float(score)})
    items.sort(key=lambda r: r["relevance_score"], reverse=True)
    top_n = body.get("top_n")
    if top_n is not None:
        items = items[:top_n]
    if body.get("return_documents", True):
        for item in items:
            item["document"] = {"text": documents[item["index"]]}
    usage = result.get("usage") or {}
    tokens = usage.get("prompt_tokens", usage.get("total_tokens", 0))
    return {
        "id": result.get("id") or f"rerank-{uuid.uuid4().hex}",
        "model": served,
        "results": items,
        "usage": {"prompt_tokens": tokens, "total_tokens": usage.get("total_tokens", tokens)},
        "meta": {"api_version": None, "billed_units": None, "warnings": None,
                 "tokens": {"input_tokens": tokens, "output_tokens": 0}},
    }
