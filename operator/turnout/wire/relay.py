"""The SSE relay: an engine's streamed answer, as buffers of whole events, straight from the socket.

The connection's ``data_received`` runs the HTTP parser (:mod:`~turnout.wire.client`),
whose body callback cuts SSE events (:class:`~turnout.wire.sse.Cutter`) and queues the result;
the consumer task is woken only when there is something to relay, and one
buffer may carry many events. There are no per-token Python objects between
the socket and the client beyond the bytes themselves.

* **Back-pressure.** A slow client pauses reading from the engine once
  :data:`HIGH_WATER` bytes are queued, and reading resumes below
  :data:`LOW_WATER`.
* **Idle timeout.** An engine that sends nothing for
  ``TURNOUT_STREAM_IDLE_TIMEOUT`` seconds (default 300; 0 turns it off) once
  its stream has started ends the stream with :class:`EngineTimeoutError`
  (an SSE error event, code ``engine_stream_timeout``). Time spent paused for
  a slow client does not count.

Token counting for metrics: the backends always ask the engine for
``stream_options.include_usage`` and trust the usage event's numbers; only
when an engine sends none does :class:`~turnout.wire.sse.SSEStats`
fall back to the number of events relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Awaitable, Callable

from turnout.aio import wait_for
from turnout.wire.client import EngineConnectionError, EngineResponse, EngineTimeoutError
from turnout.wire.errors import OpenAIError
from turnout.wire.sse import Cutter, SSEStats, Usage

#: queued relay output (bytes) above which the engine connection stops being read, and below
#: which it is read again: a slow client slows the engine's socket, not the shim's memory
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024

IDLE_TIMEOUT_ENV = "TURNOUT_STREAM_IDLE_TIMEOUT"
DEFAULT_IDLE_TIMEOUT = 300.0


def idle_timeout_from_env() -> float:
    """Seconds a started stream may go without a byte from the engine (``0``: no limit)."""
    raw = os.environ.get(IDLE_TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_IDLE_TIMEOUT
    except ValueError:
        raise ValueError(f"{IDLE_TIMEOUT_ENV} must be a number of seconds, not {raw!r}") from None
    if value < 0:
        raise ValueError(f"{IDLE_TIMEOUT_ENV} must be >= 0, not {raw!r}")
    return value


def stream_error(engine: str, exc: EngineConnectionError) -> OpenAIError:
    """The error event for a stream the engine broke off, stalled or garbled."""
    if isinstance(exc, EngineTimeoutError):
        return OpenAIError(f"the {engine} engine stalled: {exc}", status=504, type="server_error",
                           code="engine_stream_timeout")
    return OpenAIError(f"lost the {engine} engine's stream: {exc}", status=502, type="server_error",
                       code="engine_stream_lost")


class SSERelay:
    """The SSE body of one engine response, as an async iterator of buffers of whole events.

    ``usage`` gets the engine's usage (or the event count) when the stream
    ends, however it ends. A stream that breaks off or ends without
    ``[DONE]`` raises :class:`EngineConnectionError`, or what ``on_error``
    makes of it, unless ``require_done`` is false (the Responses API's streams end
    with ``response.completed`` and no ``[DONE]``). :meth:`aclose` before the end closes the connection, which is
    how the engine learns that the client went away. ``active`` (a set) holds
    ``resp`` while it streams, so that the caller can close every stream at
    once (engine death).
    """

    def __init__(self, resp: EngineResponse, usage: Usage, *, keep_usage: bool,
                 rewrite: Callable[[bytes], bytes] | None = None, require_done: bool = True,
                 active: set[EngineResponse] | None = None,
                 on_error: Callable[[EngineConnectionError], Awaitable[BaseException]] | None = None,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> None:
        conn = resp.conn
        self.stats = SSEStats()
        self._resp = resp
        self._conn = conn
        self._usage = usage
        self._active = active
        self._on_error = on_error
        self._require_done = require_done
        self._cutter = Cutter(self.stats, keep_usage, rewrite)
        self._out: deque[bytes] = deque()
        self._queued = 0
        self._closed = False
        self._idle = idle_timeout
        self._timer: asyncio.TimerHandle | None = None
        if active is not None:
            active.add(resp)
        early, conn.early = conn.early, []
        conn.sink = self._feed
        for piece in early:
            self._feed(piece)
        if idle_timeout > 0:
            conn.last_read = conn.loop.time()
            self._timer = conn.loop.call_at(conn.last_read + idle_timeout, self._check_idle)

    def _feed(self, piece: bytes) -> bool:
        """The connection's body sink: True when there is something new for the consumer."""
        if self.stats.done:
            return False
        out = self._cutter.cut(piece)
        if out is not None:
            self._out.append(out)
            self._queued += len(out)
            if self._queued > HIGH_WATER:
                self._conn.pause()
            return True
        return self.stats.done

    def _check_idle(self) -> None:
        conn = self._conn
        now = conn.loop.time()
        if self._closed:
            return
        if conn.paused or now - conn.last_read < self._idle:
            base = now if conn.paused else conn.last_read
            self._timer = conn.loop.call_at(base + self._idle, self._check_idle)
            return
        self._timer = None
        conn._fail(EngineTimeoutError(f"no data for {self._idle:g} s (set {IDLE_TIMEOUT_ENV} to wait longer)"))

    def __aiter__(self) -> SSERelay:
        return self

    async def __anext__(self) -> bytes:
        out = self._out
        conn = self._conn
        while not out:
            if self._closed:
                raise StopAsyncIteration
            if self.stats.done:
                if not conn.complete and not conn.eof:
                    # [DONE] is the engine's last event: wait (briefly) for the body's end, so the
                    # connection can be reused
                    with contextlib.suppress(asyncio.TimeoutError):
                        await wait_for(self._body_end(), 1.0)
                self._finish()
                raise StopAsyncIteration
            try:
                broken = conn.broken()
                if broken is not None:
                    raise broken
                if conn.complete:
                    tail = self._cutter.tail()
                    if tail is None:
                        if not self._require_done:
                            self._finish()
                            raise StopAsyncIteration
                        raise EngineConnectionError("the stream ended without [DONE]")
                    out.append(tail)
                    self._queued += len(tail)
                    break
            except EngineConnectionError as exc:
                self._finish()
                if self._on_error is not None:
                    raise await self._on_error(exc) from exc
                raise
            await conn.wait()
        piece = out.popleft()
        self._queued -= len(piece)
        if conn.paused and self._queued < LOW_WATER:
            conn.resume()
        return piece

    async def _body_end(self) -> None:
        conn = self._conn
        while not conn.complete and not conn.eof and conn.failure is None:
            await conn.wait()

    def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        resp, stats = self._resp, self.stats
        if self._active is not None:
            self._active.discard(resp)
        if stats.prompt_tokens is not None:
            self._usage.prompt_tokens = stats.prompt_tokens
        self._usage.completion_tokens = stats.completion_tokens_or_events
        self._conn.sink = None
        self._out.clear()
        if stats.done and self._conn.complete:
            resp.release()
        else:
            resp.close()

    async def aclose(self) -> None:
        """End the relay: the connection goes back to the pool after a complete answer, else it is closed."""
        self._finish()


def relay_response(resp: EngineResponse, usage: Usage, *, keep_usage: bool,
                   rewrite: Callable[[bytes], bytes] | None = None, require_done: bool = True,
                   active: set[EngineResponse] | None = None,
                   on_error: Callable[[EngineConnectionError], Awaitable[BaseException]] | None = None,
                   idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> SSERelay:
    """The SSE body of ``resp`` relayed (see :class:`SSERelay`), then the connection back to the pool."""
    return SSERelay(resp, usage, keep_usage=keep_usage, rewrite=rewrite, require_done=require_done,
                    active=active, on_error=on_error, idle_timeout=idle_timeout)
