"""The OpenAI-compatible app every image serves, built around one backend.

``create_app(backend, args)`` returns a FastAPI app; ``turnout-shim``
(``turnout.shim.__main__``) runs it with uvicorn. The backend is started
in the background by the app's lifespan, so ``/health`` answers 503 while
the model loads and the server is reachable from the first second.

The four POST endpoints are raw-ASGI routes (``routes.py``: one handler per
route, validation, admission, one disconnect watcher, streaming straight to
``send``); FastAPI serves the probes, ``/metrics`` and ``/v1/models``, turns
every other error into the OpenAI envelope, and documents all routes in
``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from turnout import sources
from turnout.shim.apikey import ApiKeyFile
from turnout.shim.backends.base import Backend, Health, State
from turnout.shim.lora import Adapters
from turnout.shim.metrics import ShimMetrics
from turnout.shim.middleware import ShimMiddleware
from turnout.shim.protocol import ChatCompletionRequest
from turnout.shim.routes import ENDPOINTS, Endpoint, Handler, Serving, describe_validation
from turnout.shimargs import ShimArgs
from turnout.wire.asgi import DEFAULT_BODY_TIMEOUT, dumps
from turnout.wire.errors import OpenAIError, envelope, retry_after_header

log = logging.getLogger("turnout.shim")

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
#: How often a running engine is checked for a death it cannot recover from (one function call).
ENGINE_WATCH_SECONDS = 1.0
MAX_BODY_ENV = "TURNOUT_MAX_BODY_BYTES"
BODY_TIMEOUT_ENV = "TURNOUT_BODY_TIMEOUT_SECONDS"


def body_timeout_from_env() -> float:
    """Seconds a request body may take to arrive (``$TURNOUT_BODY_TIMEOUT_SECONDS``, default 60)."""
    raw = os.environ.get(BODY_TIMEOUT_ENV)
    try:
        value = float(raw) if raw else DEFAULT_BODY_TIMEOUT
    except ValueError:
        raise ValueError(f"{BODY_TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{BODY_TIMEOUT_ENV} must be > 0, got {value:g}")
    return value


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
    #: the --lora-modules are still loading (the engine is up): not ready yet
    loading_adapters: bool = False


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


class LoadLoraAdapter(BaseModel):
    """Load a LoRA adapter (vLLM's runtime API): a local PEFT folder, served as ``lora_name``."""

    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_path: str


class UnloadLoraAdapter(BaseModel):
    """Unload a LoRA adapter once the requests using it are answered."""

    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_int_id: int | None = None  # vLLM's clients may send it; unused


def create_app(backend: Backend, args: ShimArgs, *, api_key: str | None = None,
               max_body_bytes: int | None = None, on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    """Build the app serving ``backend`` as ``args.served_model_name``.

    ``api_key`` is a fixed key; without one the key comes from
    ``args.api_key_file`` (when set) and follows that file as it is rotated;
    ``max_body_bytes`` defaults to ``$TURNOUT_MAX_BODY_BYTES`` or 4 MiB.
    ``on_fatal(message)`` is called once when the engine cannot serve any more: its start failed, or it
    died for good (:attr:`Health.final`, checked every second); ``turnout-shim`` then exits (see
    ``__main__``). Without it the app stays up and ``/health`` says the engine is dead.
    """
    key: str | ApiKeyFile | None = api_key
    if api_key is None and args.api_key_file:
        key = ApiKeyFile(args.api_key_file)
    if max_body_bytes is None:
        max_body_bytes = max_body_bytes_from_env()
    served = args.served_model_name
    metrics = ShimMetrics(args.engine, served, args.model_type)
    rt = _Runtime(created=int(time.time()), loading_adapters=bool(args.lora_modules) and not args.is_worker)
    adapters = Adapters(backend, served, enabled=args.enable_lora, max_loras=args.max_loras,
                        max_rank=args.max_lora_rank)

    def health() -> Health:
        if rt.start_error is not None:
            return Health(State.DEAD, f"engine failed to start: {rt.start_error}")
        state = backend.health()
        if rt.loading_adapters and state.state is State.READY:
            return Health(State.LOADING, "loading LoRA adapters")
        return state

    metrics.ready.set_function(lambda: 1.0 if health().state is State.READY else 0.0)

    async def start_backend() -> None:
        try:
            await fetch_model(backend)
            await backend.start()
            for module in () if args.is_worker else args.lora_modules:  # a worker rank serves no API
                await adapters.load(module.name, module.path)
            rt.loading_adapters = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            rt.start_error = str(exc) or type(exc).__name__
            log.error("%s failed to start: %s", args.engine, rt.start_error, exc_info=exc)
            if on_fatal is not None:
                on_fatal(f"{args.engine} failed to start: {rt.start_error}")
            return
        log.info("%s is ready; serving %s", args.engine, served)
        while on_fatal is not None:
            await asyncio.sleep(ENGINE_WATCH_SECONDS)
            state = backend.health()
            if state.state is State.DEAD and state.final:
                on_fatal(state.message or f"{args.engine} died")
                return

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
    app.state.adapters = adapters

    # -- errors: one handler per error class, all in the OpenAI envelope --------------

    @app.exception_handler(OpenAIError)
    async def _backend_error(_: Request, exc: OpenAIError) -> Response:
        return Response(dumps(exc.envelope()), status_code=exc.status, media_type="application/json",
                        headers=exc.answer_headers())

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        message, param = describe_validation(exc.errors())
        return JSONResponse(envelope(message, 400, param=param, code="invalid_request"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
            code = "not_found"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
            code = "method_not_allowed"
        else:
            message, code = str(exc.detail), None
        return JSONResponse(envelope(message, exc.status_code, code=code), status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc)
        return JSONResponse(envelope(f"internal error: {type(exc).__name__}", 500, code="internal_error"),
                            status_code=500)

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
        return Response(dumps({"object": "list", "data": [card, *adapters.cards(rt.created)]}),
                        media_type="application/json")

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Response:
        for card in adapters.cards(rt.created):
            if card["id"] == model_id:
                return Response(dumps(card), media_type="application/json")
        if model_id != served:
            raise OpenAIError(f"model '{model_id}' does not exist; this server serves {adapters.known()}",
                              status=404, param="model", code="model_not_found")
        card = {"id": served, "object": "model", "created": rt.created, "owned_by": "turnout",
                **backend.model_card()}
        return Response(dumps(card), media_type="application/json")

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(req: LoadLoraAdapter) -> Response:
        """Load a LoRA adapter; at ``--max-loras`` the least recently used idle one is unloaded first."""
        if health().state is not State.READY:
            raise OpenAIError(f"'{served}' is not ready to load adapters; retry shortly", status=503,
                              type="service_unavailable", code="model_loading", retry_after=5)
        new = await adapters.load(req.lora_name, req.lora_path)
        message = f"adapter {req.lora_name} {'loaded' if new else 'was already loaded'} from {req.lora_path}"
        return JSONResponse({"status": "ok", "message": message})

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(req: UnloadLoraAdapter) -> Response:
        """Unload a LoRA adapter; 404 when it is not loaded."""
        await adapters.unload(req.lora_name)
        return JSONResponse({"status": "ok", "message": f"adapter {req.lora_name} unloaded"})

    serving = Serving(backend, served, args.engine, args.model_type, metrics, health, max_body_bytes, adapters,
                      body_timeout_from_env())
    for ep in ENDPOINTS:
        app.router.routes.append(Route(ep.path, Handler(ep, serving), methods=["POST"]))
    _document(app, ENDPOINTS)
    app.add_middleware(ShimMiddleware, metrics=metrics, api_key=key, max_body_bytes=max_body_bytes,
                       max_queue=args.max_queue)
    return app


def _document(app: FastAPI, endpoints: tuple[Endpoint, ...]) -> None:
    """Add the raw-ASGI POST routes, with their request models, to ``/openapi.json``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        models = schema.setdefault("components", {}).setdefault("schemas", {})
        for ep in endpoints:
            name = ep.model.__name__
            model = ep.model.model_json_schema(ref_template="#/components/schemas/{model}")
            models.update(model.pop("$defs", {}))
            models[name] = model
            schema.setdefault("paths", {})[ep.path] = {"post": {
                "summary": (ep.model.__doc__ or ep.path).strip(),
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": f"#/components/schemas/{name}"}}}},
                "responses": {"200": {"description": "the answer, or a text/event-stream when streamed"}},
            }}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
