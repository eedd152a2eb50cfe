"""Proxy backends: run an engine's own OpenAI server as a child process and forward to it.

The engine listens on 127.0.0.1 on a free port. Requests are forwarded over
persistent keep-alive connections (``turnout.wire.client.EnginePool``, also used for the
health probes); streamed answers are passed through as
bytes in whole read buffers, cut only at SSE event boundaries, and parsed
only where an event carries usage (to count tokens); the engine's
``[DONE]`` is dropped (the app writes its own). The child runs in
its own process group, so :meth:`ProxyBackend.stop` ends it and whatever it
spawned.

Each engine module (``vllm``, ``sglang``, ``mlx``) subclasses
:class:`ProxyBackend` and says how to build the engine's command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Iterable
from typing import Any, ClassVar

from turnout.aio import wait_for
from turnout.freeport import free_port
from turnout.procgroup import terminate_async
from turnout.shim.backends.base import Backend, Health, State, Stream
from turnout.shimargs import ShimArgs
from turnout.wire.client import EngineConnectionError, EnginePool, EngineProtocolError, EngineResponse
from turnout.wire.errors import OpenAIError, from_engine
from turnout.wire.relay import idle_timeout_from_env, relay_response, stream_error
from turnout.wire.sse import Usage

log = logging.getLogger("turnout.shim.proxy")

START_TIMEOUT_ENV = "TURNOUT_ENGINE_START_TIMEOUT"
DEFAULT_START_TIMEOUT = 1800.0
STOP_GRACE_SECONDS = 15.0
PROBE_ENV = "TURNOUT_ENGINE_PROBE_SECONDS"
PROBE_INTERVAL = 5.0
PROBE_FAILURES = 3


def local_model_ref(model: str) -> str:
    """What an engine's ``--model`` takes: a path for ``file://``, a hub id for ``hf://``."""
    for scheme in ("file://", "hf://"):
        if model.startswith(scheme):
            return model[len(scheme):]
    return model


def engine_flags(engine_args: dict[str, Any], *, reserved: Iterable[str] = (),
                 negate_false: bool = True) -> list[str]:
    """Turn ``{"max_model_len": 4096, "enforce_eager": true}`` into ``--max-model-len 4096 --enforce-eager``.

    ``true`` gives a bare flag; ``false`` gives ``--no-<flag>`` when
    ``negate_false`` (argparse ``BooleanOptionalAction``, as vLLM uses) and is
    left out otherwise; ``null`` is left out; lists give the flag followed by
    each item; objects are passed as compact JSON. Keys the shim sets itself
    (``reserved``) are refused, so the operator cannot render a conflicting
    command line.
    """
    taken = {r.replace("_", "-").lstrip("-") for r in reserved}
    flags: list[str] = []
    for key in sorted(engine_args, key=lambda k: k.lstrip("-").replace("_", "-")):
        value = engine_args[key]
        name = key.lstrip("-").replace("_", "-")
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"engine_args key {key!r} is not a valid flag name")
        if name in taken:
            raise ValueError(f"engine_args may not set {key!r}: the shim sets it from its own arguments")
        flag = f"--{name}"
        if value is None:
            continue
        if value is True:
            flags.append(flag)
        elif value is False:
            if negate_false:
                flags.append(f"--no-{name}")
        elif isinstance(value, list):
            flags.append(flag)
            flags.extend(_scalar(v) for v in value)
        else:
            flags += [flag, _scalar(value)]
    return flags


def _scalar(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def engine_python(env_var: str) -> str:
    """The Python that runs the engine: ``$<env_var>`` or the shim's own interpreter."""
    return os.environ.get(env_var) or sys.executable


def _set_parent_death_signal() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: the engine dies with the shim
    except OSError:
        pass


class ProxyBackend(Backend):
    """Starts ``command()`` as a child, waits for ``health_path``, forwards requests."""

    #: engine name, for messages and logs
    engine: ClassVar[str] = ""
    #: environment variable naming the Python interpreter that has the engine installed
    python_env: ClassVar[str] = ""
    #: the engine's readiness endpoint (200 when it can serve)
    health_path: ClassVar[str] = "/health"
    #: the engine serves ``/v1/responses`` itself (vLLM, SGLang); otherwise the shim translates to chat
    serves_responses: ClassVar[bool] = False
    #: flags the shim sets itself; engine_args may not set them
    reserved_flags: ClassVar[tuple[str, ...]] = ("host", "port", "model", "served-model-name")

    def __init__(self, args: ShimArgs, *, start_timeout: float | None = None) -> None:
        super().__init__(args)
        self.capabilities = self.capabilities_for(args.model_type)
        if start_timeout is None:
            start_timeout = float(os.environ.get(START_TIMEOUT_ENV, DEFAULT_START_TIMEOUT))
        self.start_timeout = start_timeout
        self.probe_interval = float(os.environ.get(PROBE_ENV, PROBE_INTERVAL))
        self.idle_timeout = idle_timeout_from_env()
        self._state = State.LOADING
        self._message = f"starting {self.engine}"
        self.proc: asyncio.subprocess.Process | None = None
        self.port: int | None = None
        self.pool: EnginePool | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._active: set[EngineResponse] = set()
        self._stopped = False
        self._final = False  # DEAD for good: the engine process exited
        self._card: dict[str, Any] = {}

    # -- what each engine module provides --------------------------------------------

    @abstractmethod
    def command(self, port: int) -> list[str]:
        """The engine's server command line, listening on 127.0.0.1:``port``."""

    def capabilities_for(self, model_type: str) -> frozenset[str]:
        return {"llm": frozenset({"chat", "completions"}),
                "embedding": frozenset({"embeddings"}),
                "rerank": frozenset({"rerank"})}[model_type]

    #: the engine's runtime LoRA endpoints (load, unload), each taking ``{"lora_name", "lora_path"}``; None when
    #: the engine cannot change its adapters while it runs
    lora_endpoints: ClassVar[tuple[str, str] | None] = None

    async def load_adapter(self, name: str, path: str) -> None:
        if self.lora_endpoints is None:
            await super().load_adapter(name, path)
            return
        await self._engine_post(self.lora_endpoints[0], {"lora_name": name, "lora_path": path})

    async def unload_adapter(self, name: str) -> None:
        if self.lora_endpoints is None:
            await super().unload_adapter(name)
            return
        await self._engine_post(self.lora_endpoints[1], {"lora_name": name})

    async def _engine_post(self, path: str, body: dict[str, Any]) -> None:
        """POST a control request to the engine; its error answer (a 4xx the engine explains) raised."""
        pool = self.pool
        if pool is None or self._state is not State.READY:
            raise self._unavailable(self._message or "not started")
        try:
            resp = await pool.request("POST", path, json.dumps(body).encode())
            try:
                raw = await resp.read()
            finally:
                resp.close()
        except EngineProtocolError as exc:
            raise self._bad_answer(str(exc)) from exc
        except EngineConnectionError as exc:
            raise self._unavailable(str(exc)) from exc
        if resp.status >= 400:
            raise self.engine_error(path, resp.status, raw)

    def child_env(self) -> dict[str, str]:
        """Environment for the engine process."""
        return dict(os.environ)

    def to_engine(self, body: dict[str, Any]) -> dict[str, Any]:
        """Adapt a validated request body for the engine (default: unchanged)."""
        return body

    def rewrite_stream(self, data: bytes) -> bytes:
        """Adapt streamed bytes from the engine (default: unchanged)."""
        return data

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        self.port = free_port()
        cmd = self.command(self.port)
        log.info("starting %s: %s", self.engine, " ".join(cmd))
        self.pool = EnginePool("127.0.0.1", self.port)
        preexec = _set_parent_death_signal if sys.platform.startswith("linux") else None
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, env=self.child_env(), stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True, preexec_fn=preexec)
        self._tasks.append(asyncio.create_task(self._watch(), name=f"{self.engine}-watch"))
        if self.args.is_worker:
            # A headless rank of a multi-node group has no HTTP server: it is healthy while it runs.
            self._state, self._message = State.READY, ""
            log.info("%s runs headless as rank %s of %d; rank 0 serves the API", self.engine,
                     self.args.node_rank, self.args.nnodes)
            return
        await self._wait_healthy()
        self._card = await self._engine_card()
        self._state, self._message = State.READY, ""
        self._tasks.append(asyncio.create_task(self._probe(), name=f"{self.engine}-probe"))

    async def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        delay = 0.1
        while True:
            if self.proc.returncode is not None:
                raise RuntimeError(f"{self.engine} exited with code {self.proc.returncode} while starting; "
                                   "its log is above")
            if await self._healthy(5.0):
                return
            if time.monotonic() > deadline:
                await self._terminate()
                raise TimeoutError(f"{self.engine} did not become healthy within {self.start_timeout:.0f} s "
                                   f"(set {START_TIMEOUT_ENV} to wait longer)")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    async def _engine_card(self) -> dict[str, Any]:
        """What the engine says about its model that clients use (``max_model_len``), if it says it."""
        assert self.pool is not None
        try:
            r = await self.pool.request("GET", "/v1/models", timeout=10.0)
            data = json.loads(await wait_for(r.read(), 10.0)).get("data") or []
        except (EngineConnectionError, asyncio.TimeoutError, ValueError, AttributeError):
            return {}
        first = data[0] if data and isinstance(data[0], dict) else {}
        value = first.get("max_model_len")
        return {"max_model_len": value} if isinstance(value, int) else {}

    def model_card(self) -> dict[str, Any]:
        return dict(self._card)

    async def _watch(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        if self._stopped:
            return
        self._state = State.DEAD
        self._message = f"{self.engine} exited with code {code}"
        self._final = True  # a process that exited does not come back: the shim exits too
        log.error("%s exited with code %s", self.engine, code)
        # Streams whose socket the kernel closed end by themselves; give them a moment,
        # then close whatever is left so no client waits forever.
        await asyncio.sleep(1.0)
        await self._close_active()

    async def _close_active(self) -> None:
        for resp in list(self._active):
            resp.close()

    async def _probe(self) -> None:
        """Ask the engine's health endpoint now and then; a wedged engine is as good as dead."""
        interval = self.probe_interval
        failures = 0
        while True:
            await asyncio.sleep(interval)
            if self.proc is not None and self.proc.returncode is not None:
                return
            ok = await self._healthy(max(interval, 1.0))
            failures = 0 if ok else failures + 1
            if ok and self._state is State.DEAD:
                self._state, self._message = State.READY, ""
                log.warning("%s answers %s again", self.engine, self.health_path)
            elif failures >= PROBE_FAILURES and self._state is State.READY:
                self._state = State.DEAD
                self._message = f"{self.engine} stopped answering {self.health_path}"
                log.error("%s; ending %d in-flight streams", self._message, len(self._active))
                await self._close_active()

    async def _healthy(self, timeout: float) -> bool:
        """True when the engine's health endpoint answers 200 within ``timeout`` seconds."""
        pool = self.pool
        if pool is None:
            return False

        async def ask() -> int:
            resp = await pool.request("GET", self.health_path)
            try:
                await resp.read()
            finally:
                resp.close()  # no-op once read() released it
            return resp.status

        try:
            return await wait_for(ask(), timeout) == 200
        except (EngineConnectionError, asyncio.TimeoutError):
            return False

    def health(self) -> Health:
        return Health(self._state, self._message, final=self._final)

    async def stop(self) -> None:
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self._terminate()
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        if self._state is not State.DEAD:
            self._state, self._message = State.DEAD, f"{self.engine} stopped"

    async def _terminate(self) -> None:
        """SIGTERM the engine's process group, SIGKILL it after a grace period."""
        if self.proc is not None and not await terminate_async(self.proc, STOP_GRACE_SECONDS):
            log.warning("%s did not stop within %.0f s; killed it", self.engine, STOP_GRACE_SECONDS)

    # -- requests --------------------------------------------------------------------

    async def chat(self, body: dict[str, Any]) -> dict[str, Any] | Stream:
        return await self.forward("/v1/chat/completions", body)

    async def completions(self, body: dict[str, Any]) -> dict[str, Any] | Stream:
        return await self.forward("/v1/completions", body)

    async def responses(self, body: dict[str, Any]) -> dict[str, Any] | Stream:
        """``/v1/responses`` as the engine serves it (only where :attr:`serves_responses`)."""
        return await self.forward("/v1/responses", body, responses=True)

    async def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        result = await self.forward("/v1/embeddings", body)
        assert isinstance(result, dict)
        return result

    async def rerank(self, body: dict[str, Any]) -> dict[str, Any]:
        result = await self.forward("/v1/rerank", body)
        assert isinstance(result, dict)
        return result

    def _unavailable(self, detail: str) -> OpenAIError:
        if self._state is State.DEAD:
            detail = self._message or detail
        return OpenAIError(f"the {self.engine} engine is unavailable: {detail}", status=503,
                           type="service_unavailable", code="engine_unavailable", retry_after=10)

    async def forward(self, path: str, body: dict[str, Any], *, responses: bool = False) -> Any:
        """POST ``body`` to the engine; a dict for plain answers, a :class:`Stream` for SSE.

        ``responses``: a Responses API stream, which has no ``stream_options`` and ends without ``[DONE]``.
        """
        if self.args.is_worker:
            raise OpenAIError(
                f"this pod is rank {self.args.node_rank} of a {self.args.nnodes}-node {self.engine} group and "
                "serves no requests; send them to rank 0 (the deployment's Service)", status=503,
                type="service_unavailable", code="engine_worker")
        pool = self.pool
        if pool is None or self._state is not State.READY:
            raise self._unavailable(self._message or "not started")
        stream = bool(body.get("stream"))
        keep_usage = True
        if stream and not responses:
            opts = dict(body.get("stream_options") or {})
            keep_usage = bool(opts.get("include_usage"))
            opts["include_usage"] = True  # always count tokens; dropped below if not asked for
            body = {**body, "stream_options": opts}
        body = self.to_engine(body)
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            resp = await pool.request("POST", path, payload)
            if resp.status >= 400 or not stream:
                try:
                    raw = await resp.read()
                finally:
                    resp.close()  # no-op once read() released it
        except EngineProtocolError as exc:
            raise self._bad_answer(str(exc)) from exc
        except EngineConnectionError as exc:
            raise self._unavailable(str(exc)) from exc
        if resp.status >= 400 or not stream:
            if resp.status >= 400:
                raise self.engine_error(path, resp.status, raw)
            try:
                data = json.loads(raw)
            except ValueError as exc:
                raise self._bad_answer("not JSON") from exc
            data = self.from_engine_json(path, data)
            if not isinstance(data, dict):
                raise self._bad_answer("an unexpected shape")
            return data
        usage = Usage()
        return Stream(self._relay(resp, keep_usage, usage, require_done=not responses), usage)

    def _bad_answer(self, detail: str) -> OpenAIError:
        return OpenAIError(f"the {self.engine} engine answered something unusable: {detail}", status=502,
                           type="server_error", code="bad_engine_response")

    def engine_error(self, path: str, status: int, raw: bytes) -> OpenAIError:
        """The engine's error answer to a POST of ``path``, in the envelope (default: its status kept)."""
        return from_engine(status, raw)

    def from_engine_json(self, path: str, data: Any) -> Any:
        """Adapt a plain (non-streamed) answer from the engine to the OpenAI shape (default: unchanged)."""
        return data

    def _relay(self, resp: EngineResponse, keep_usage: bool, usage: Usage, *,
               require_done: bool = True) -> AsyncIterator[bytes]:
        """Engine SSE bytes in buffers cut at event boundaries, without the engine's ``[DONE]``."""
        rewrite = None if type(self).rewrite_stream is ProxyBackend.rewrite_stream else self.rewrite_stream
        return relay_response(resp, usage, keep_usage=keep_usage, rewrite=rewrite, require_done=require_done,
                              active=self._active,
                              on_error=self._lost, idle_timeout=self.idle_timeout)

    async def _lost(self, exc: EngineConnectionError) -> OpenAIError:
        """The error for a stream cut short; an engine that is exiting is told apart from a hiccup."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(asyncio.shield(self.proc.wait()), 1.0)
        if self._state is State.DEAD or (self.proc is not None and self.proc.returncode is not None):
            return OpenAIError(f"the {self.engine} engine failed while streaming: "
                               f"{self._message or exc}", status=503, type="service_unavailable",
                               code="engine_dead")
        return stream_error(self.engine, exc)
