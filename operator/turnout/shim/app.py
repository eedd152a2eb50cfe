"""The OpenAI-compatible app every image serves, built around one backend.

``create_app(backend, args)`` returns a FastAPI app; ``turnout-shim``
(``turnout.shim.__main__``) runs it with uvicorn. The backend is started
in the background by the app's lifespan, so ``/health`` answers 503 while
the model loads and the server is reachable from the first second.

``POST /v1/chat/completions`` and ``/v1/completions`` (the streamed hot
path) are answered by a raw ASGI handler (``FastRoutes``) inside
``ShimMiddleware``: it validates with the same pydantic models and writes
the backend's stream straight to ``send``, one message per backend item,
with no ``StreamingResponse`` or per-chunk task machinery. A request that
does not validate is handed, body and all, to the FastAPI routes, so every
error answer is theirs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from turnout import sources
from turnout.shim.apikey import ApiKeyFile
from turnout.shim.backends.base import Backend, BackendError, Health, State, Stream
from turnout.shim.errors import envelope, retry_after_header, sse_error_event
from turnout.shim.metrics import ShimMetrics
from turnout.shim.middleware import T0_KEY, ShimMiddleware
from turnout.shim.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    RerankRequest,
)
from turnout.shimargs import ShimArgs

log = logging.getLogger("turnout.shim")

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_BODY_ENV = "TURNOUT_MAX_BODY_BYTES"
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: the raw headers of a streamed answer, as ``StreamingResponse`` writes them for SSE_HEADERS
_SSE_RAW_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"),
                    (b"content-type", b"text/event-stream; charset=utf-8")]


def max_body_bytes_from_env() -> int:
    raw = os.environ.get(MAX_BODY_ENV)
    if not raw:
        return DEFAULT_MAX_BODY_BYTES
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{MAX_BODY_ENV} must be a number of bytes, got {raw!r}") from exc
    if value < 1:
        raise ValueError(f"{MAX_BODY_ENV} must be >= 1, got {value}")
    return value


@dataclass
class _Runtime:
    start_error: str | None = None
    created: int = 0


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


async def fetch_model(backend: Backend) -> None:
    """Turn a remote or built-in ``--model`` into a local path before the engine starts.

    Runs while ``/health`` answers 503 (loading), so a long download shows as a
    pod that is starting rather than one that refuses connections.
    """
    args = backend.args
    source = sources.parse(args.model)
    if source.scheme == "file":
        return
    log.info("fetching model %s", args.model)
    path = await asyncio.to_thread(sources.locate, args.model, quantization=args.quantization)
    log.info("model %s is at %s", args.model, path)
    backend.args = dataclasses.replace(args, model=str(path))


def create_app(backend: Backend, args: ShimArgs, *, api_key: str | None = None,
               max_body_bytes: int | None = None) -> FastAPI:
    """Build the app serving ``backend`` as ``args.served_model_name``.

    ``api_key`` is a fixed key; without one the key comes from
    ``args.api_key_file`` (when set) and follows that file as it is rotated;
    ``max_body_bytes`` defaults to ``$TURNOUT_MAX_BODY_BYTES`` or 4 MiB.
    """
    key: str | ApiKeyFile | None = api_key
    if api_key is None and args.api_key_file:
        key = ApiKeyFile(args.api_key_file)
    if max_body_bytes is None:
        max_body_bytes = max_body_bytes_from_env()
    served = args.served_model_name
    metrics = ShimMetrics(args.engine, served, args.model_type)
    rt = _Runtime(created=int(time.time()))

    def health() -> Health:
        if rt.start_error is not None:
            return Health(State.DEAD, f"engine failed to start: {rt.start_error}")
        return backend.health()

    metrics.ready.set_function(lambda: 1.0 if health().state is State.READY else 0.0)

    async def start_backend() -> None:
        try:
            await fetch_model(backend)
            await backend.start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            rt.start_error = str(exc) or type(exc).__name__
            log.error("%s failed to start: %s", args.engine, rt.start_error, exc_info=exc)
        else:
            log.info("%s is ready; serving %s", args.engine, served)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # pay one-off first-use costs now rather than in the first streams' latency: anyio imports
        # its asyncio backend on the first cancel scope (~15 ms), pydantic builds validators lazily
        with anyio.CancelScope():
            pass
        with suppress(ValidationError):
            ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": ""}]}).body()
        task = asyncio.create_task(start_backend(), name="backend-start")
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            await backend.stop()

    app = FastAPI(title="turnout-shim", version="0.1.0", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.backend = backend
    app.state.metrics = metrics
    app.state.health = health

    # -- errors: one handler per error class, all in the OpenAI envelope --------------

    @app.exception_handler(BackendError)
    async def _backend_error(_: Request, exc: BackendError) -> Response:
        return Response(_dumps(exc.envelope()), status_code=exc.status, media_type="application/json",
                        headers=retry_after_header(exc.retry_after))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        message, param = _describe_validation(exc)
        return JSONResponse(envelope(message, 400, param=param, code="invalid_request"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
            code = "not_found"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
            code = "method_not_allowed"
        elif exc.status_code == 413:
            message, code = str(exc.detail), "request_too_large"
        else:
            message, code = str(exc.detail), None
        return JSONResponse(envelope(message, exc.status_code, code=code), status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc)
        return JSONResponse(envelope(f"internal error: {type(exc).__name__}", 500, code="internal_error"),
                            status_code=500)

    # -- helpers -------------------------------------------------------------------

    def admit(req: Any, capability: str) -> dict[str, Any]:
        if req.model is not None and req.model != served:
            raise BackendError(f"model '{req.model}' does not exist; this server serves '{served}'",
                               status=404, param="model", code="model_not_found")
        if backend.capabilities and capability not in backend.capabilities:
            raise BackendError(f"'{served}' does not serve {capability} (it is a {args.model_type} model)",
                               status=404, code="unsupported")
        state = health()
        if state.state is State.LOADING:
            raise BackendError(f"'{served}' is loading; retry shortly", status=503,
                               type="service_unavailable", code="model_loading", retry_after=5)
        if state.state is State.DEAD:
            raise BackendError(f"the {args.engine} engine is not running: {state.message}", status=503,
                               type="service_unavailable", code="engine_dead", retry_after=10)
        body = req.body()
        body["model"] = served
        return body

    def count_usage(endpoint: str, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(p, int) and p > 0:
            metrics.prompt_tokens.labels(endpoint).inc(p)
        if isinstance(c, int) and c > 0:
            metrics.completion_tokens.labels(endpoint).inc(c)

    async def call(request: Request, endpoint: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run a backend call; cancel it if the client goes away before it returns."""
        task = asyncio.ensure_future(fn())
        watcher = asyncio.ensure_future(_wait_disconnect(request))
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if not task.done():
            task.cancel()
            with suppress(BaseException):
                await task
            metrics.cancelled.labels(endpoint).inc()
            raise BackendError("client closed the request", status=499, code="client_closed")
        return task.result()

    def answer(request: Request, endpoint: str, result: dict[str, Any] | Stream, body: dict[str, Any],
               chat: bool) -> Response:
        if isinstance(result, Stream):
            opts = body.get("stream_options") or {}
            include_usage = bool(opts.get("include_usage"))
            gen = relay(result, endpoint, request.scope.get(T0_KEY, time.perf_counter()), include_usage, chat)
            return StreamingResponse(gen, media_type="text/event-stream", headers=SSE_HEADERS)
        result["model"] = served
        count_usage(endpoint, result.get("usage"))
        return Response(_dumps(result), media_type="application/json")

    async def relay(stream: Stream, endpoint: str, t0: float, include_usage: bool,
                    chat: bool) -> AsyncIterator[bytes]:
        chunks = stream.chunks
        first = True
        usage_seen = False
        last: dict[str, Any] | None = None
        finished = False
        try:
            try:
                async for item in chunks:
                    if first:
                        metrics.ttft.labels(endpoint).observe(time.perf_counter() - t0)
                    if isinstance(item, bytes):
                        first = False
                        yield item
                        continue
                    item["model"] = served
                    if item.get("usage"):
                        usage_seen = True
                        _fill_usage(stream, item["usage"])
                        if not include_usage and not item.get("choices"):
                            continue
                    if first:
                        first = False
                        if chat:
                            _ensure_role(item)
                    last = item
                    yield b"data: " + _dumps(item) + b"\n\n"
                if include_usage and not usage_seen and last is not None:
                    yield b"data: " + _dumps(_usage_chunk(last, stream, served)) + b"\n\n"
            except Exception as exc:
                if not isinstance(exc, BackendError):
                    log.error("error while streaming", exc_info=exc)
                yield sse_error_event(exc)
            finished = True  # before the last yield: a consumer may stop at DONE (the fast path does)
            yield DONE
        finally:
            if not finished:
                metrics.cancelled.labels(endpoint).inc()
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True), suppress(Exception):
                    await aclose()
            count_usage(endpoint, {"prompt_tokens": stream.usage.prompt_tokens,
                                   "completion_tokens": stream.usage.completion_tokens})

    # -- the streamed hot path: raw ASGI for POST chat/completions ---------------------

    fast_routes: dict[str, tuple[str, Any, bool, Callable[[dict[str, Any]], Awaitable[Any]]]] = {
        "/v1/chat/completions": ("chat", ChatCompletionRequest, True, lambda b: backend.chat(b)),
        "/v1/completions": ("completions", CompletionRequest, False, lambda b: backend.completions(b)),
    }

    async def fast(app_: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /v1/chat/completions and /v1/completions without FastAPI's per-request and per-chunk layers.

        Valid requests are validated with the same pydantic models, admitted as
        the route would, and answered here: streamed answers are written as
        ``http.response.body`` messages straight from the backend's stream.
        Anything that does not validate is replayed to the FastAPI app, so
        error answers are exactly the routes' own.
        """
        endpoint: str = scope["path"]
        capability, model, chat, fn = fast_routes[endpoint]
        parts: list[bytes] = []
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                parts.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
        except StarletteHTTPException as exc:  # the middleware's body limit while reading
            await _send_body(send, exc.status_code, _dumps(envelope(
                str(exc.detail), exc.status_code, code="request_too_large" if exc.status_code == 413 else None)))
            return
        raw = parts[0] if len(parts) == 1 else b"".join(parts)
        req = None
        try:
            obj = json.loads(raw)
            if isinstance(obj, dict):
                req = model.model_validate(obj)
        except (ValueError, ValidationError):
            req = None
        if req is None:
            await app_(scope, _replay(raw, receive), send)
            return

        task = asyncio.current_task()
        assert task is not None
        state = {"disconnected": False, "finished": False}

        async def watch() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    if not state["finished"]:
                        state["disconnected"] = True
                        task.cancel()
                    return

        watcher = asyncio.ensure_future(watch())
        gen: AsyncIterator[bytes] | None = None
        try:
            try:
                body = admit(req, capability)
                result = await fn(body)
                if not isinstance(result, Stream):
                    result["model"] = served
                    count_usage(endpoint, result.get("usage"))
                    state["finished"] = True
                    await _send_body(send, 200, _dumps(result))
                    return
                opts = body.get("stream_options") or {}
                gen = relay(result, endpoint, scope.get(T0_KEY, time.perf_counter()),
                            bool(opts.get("include_usage")), chat)
                await send({"type": "http.response.start", "status": 200, "headers": _SSE_RAW_HEADERS})
                async for piece in gen:
                    if piece is DONE:  # relay()'s last item: end the response in the same write
                        break
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                state["finished"] = True
                await send({"type": "http.response.body", "body": DONE, "more_body": False})
            except BackendError as exc:
                state["finished"] = True
                await _send_body(send, exc.status, _dumps(exc.envelope()), retry_after_header(exc.retry_after))
            except asyncio.CancelledError:
                if not state["disconnected"]:
                    raise
                uncancel = getattr(task, "uncancel", None)  # Python >= 3.11 counts cancellations
                if uncancel is not None:
                    uncancel()
                if gen is None:  # a plain call, or a stream not started: relay() counts its own
                    metrics.cancelled.labels(endpoint).inc()
                    with suppress(Exception):
                        await _send_body(send, 499, _dumps(envelope("client closed the request", 499,
                                                                    code="client_closed")))
            except Exception as exc:
                log.error("unhandled error", exc_info=exc)
                if gen is None:
                    await _send_body(send, 500, _dumps(envelope(f"internal error: {type(exc).__name__}", 500,
                                                                code="internal_error")))
        finally:
            watcher.cancel()
            if gen is not None:
                with anyio.CancelScope(shield=True):
                    await gen.aclose()  # type: ignore[attr-defined]

    # -- routes --------------------------------------------------------------------

    @app.get("/health")
    async def get_health() -> Response:
        state = health()
        if state.state is State.READY:
            return Response(b'{"status":"ok"}', media_type="application/json")
        code = "model_loading" if state.state is State.LOADING else "engine_dead"
        body = {"status": state.state.value,
                **envelope(state.message or state.state.value, 503, type="service_unavailable", code=code)}
        return JSONResponse(body, status_code=503, headers=retry_after_header(5))

    @app.get("/live")
    async def get_live() -> Response:
        """For a liveness probe: 200 while loading or ready, 503 once the engine is dead."""
        state = health()
        if state.state is not State.DEAD:
            return Response(b'{"status":"%s"}' % state.state.value.encode(), media_type="application/json")
        body = {"status": "dead", **envelope(state.message or "dead", 503, type="service_unavailable",
                                                code="engine_dead")}
        return JSONResponse(body, status_code=503)

    @app.get("/metrics")
    async def get_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models() -> Response:
        card = {"id": served, "object": "model", "created": rt.created, "owned_by": "turnout",
                **backend.model_card()}
        return Response(_dumps({"object": "list", "data": [card]}), media_type="application/json")

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Response:
        if model_id != served:
            raise BackendError(f"model '{model_id}' does not exist; this server serves '{served}'",
                               status=404, param="model", code="model_not_found")
        card = {"id": served, "object": "model", "created": rt.created, "owned_by": "turnout",
                **backend.model_card()}
        return Response(_dumps(card), media_type="application/json")

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
        endpoint = "/v1/chat/completions"
        body = admit(req, "chat")
        result = await call(request, endpoint, lambda: backend.chat(body))
        return answer(request, endpoint, result, body, chat=True)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Response:
        endpoint = "/v1/completions"
        body = admit(req, "completions")
        result = await call(request, endpoint, lambda: backend.completions(body))
        return answer(request, endpoint, result, body, chat=False)

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest, request: Request) -> Response:
        endpoint = "/v1/embeddings"
        body = admit(req, "embeddings")
        result = await call(request, endpoint, lambda: backend.embeddings(body))
        return answer(request, endpoint, result, body, chat=False)

    @app.post("/v1/rerank")
    async def rerank(req: RerankRequest, request: Request) -> Response:
        endpoint = "/v1/rerank"
        body = admit(req, "rerank")
        result = await call(request, endpoint, lambda: backend.rerank(body))
        out = normalise_rerank(result, body, served)
        count_usage(endpoint, out.get("usage"))
        return Response(_dumps(out), media_type="application/json")

    # FastRoutes sits inside ShimMiddleware (auth, limits, admission, request metrics apply to it)
    app.add_middleware(FastRoutes, handler=fast, paths=frozenset(fast_routes))
    app.add_middleware(ShimMiddleware, metrics=metrics, api_key=key, max_body_bytes=max_body_bytes,
                       max_queue=args.max_queue)
    return app


class FastRoutes:
    """Sends ``POST`` to ``paths`` to ``handler(app, scope, receive, send)``; everything else to the app."""

    def __init__(self, app: ASGIApp, *, handler: Callable[[ASGIApp, Scope, Receive, Send], Awaitable[None]],
                 paths: frozenset[str]) -> None:
        self.app = app
        self.handler = handler
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            await self.handler(self.app, scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _replay(raw: bytes, receive: Receive) -> Receive:
    """A ``receive`` that first gives back the body already read, then the real one."""
    pending = [{"type": "http.request", "body": raw, "more_body": False}]

    async def again() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return again


async def _send_body(send: Send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    raw = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    raw += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


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


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
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
