"""A lean HTTP/1.1 client for one loopback engine server, and an SSE relay on top of it.

The shim's data path is one extra hop on 127.0.0.1, so what it costs is
Python work per socket read. This module keeps that work per *read*, not per
token, and out of the consumer's way:

* :class:`EnginePool` keeps persistent keep-alive connections (each an
  ``asyncio.Protocol``, :class:`_Conn`, no stream reader and no per-request
  client objects); a pooled connection that the engine closed while idle is
  retried once on a fresh one, before any answer byte arrived, and
  connections idle longer than ``max_idle_s`` are dropped (uvicorn-based
  engines close idle ones after 5 s);
* :class:`EngineResponse` decodes ``Content-Length``, chunked and
  read-until-close bodies; :meth:`EngineResponse.iter_raw` yields everything
  one socket read brought (chunk framing removed) as one ``bytes``;
* :class:`SSERelay` (from :func:`relay_response`) decodes the body and cuts it
  into buffers of whole SSE events (``\\n\\n``) inside the protocol's
  ``data_received``, so a buffer may carry many events and the consumer task
  is woken only when there is something to relay; it finds ``[DONE]`` and
  usage with a bytes search and parses only the one event that carries
  ``"usage"``. A slow client pauses reading from the engine (high/low water
  marks); with ``TURNOUT_STREAM_COALESCE_MS`` set (default 0: off), a
  stream faster than one token per interval is relayed a few tokens at a
  time, one wake per interval (it measured no gain on llama.cpp at 1-8
  streams on 2 CPUs, so it is off unless asked for).

Token counting for metrics: the proxy always asks the engine for
``stream_options.include_usage`` and trusts the usage event's numbers; only
when an engine sends none does :class:`SSEStats` fall back to the number of
events relayed (each ``\\n\\n``-terminated event counted with
``bytes.count``; the role-only first chunk of a chat stream counts too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from turnout.shim.backends.base import Usage

READ_SIZE = 256 * 1024
HEAD_LIMIT = 64 * 1024
DEFAULT_MAX_IDLE_S = 4.0
DEFAULT_MAX_POOLED = 256

_USAGE = b'"usage"'
_DONE = b"data: [DONE]"
_EOL = b"\r\n"


class EngineConnectionError(ConnectionError):
    """The engine could not be reached, or closed the connection before or while answering."""


class _Conn(asyncio.Protocol):
    """One connection to the engine, as an asyncio protocol.

    Bytes go to ``sink`` (a response body's decoder) from ``data_received``
    itself, so a socket read costs one callback and no stream-reader
    buffering; the consumer is woken (``waiter``) only when the sink says it
    produced something. With no sink attached (response headers), bytes
    collect in ``buf``.
    """

    __slots__ = ("buf", "eof", "failure", "idle_since", "loop", "paused", "reused", "sink", "transport",
                 "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.sink: Callable[[bytes], bool] | None = None
        self.eof = False
        self.failure: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.idle_since = 0.0
        self.reused = False

    # -- protocol callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:
            self.buf += data
            self._wake()
            return
        try:
            if sink(data):
                self._wake()
        except EngineConnectionError as exc:
            self.failure = exc
            self.sink = None
            self.abort()
            self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake()

    # -- consumer side -------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        """Until the next wake (bytes for the consumer, end of stream, failure)."""
        waiter = self.waiter = self.loop.create_future()
        await waiter

    def attach(self, sink: Callable[[bytes], bool], first: bytes = b"") -> None:
        """Send what comes next to ``sink``, starting with ``first`` and what arrived meanwhile."""
        pending = first + bytes(self.buf) if self.buf else first
        self.buf.clear()
        self.sink = sink
        if pending:
            try:
                sink(pending)
            except EngineConnectionError as exc:
                self.failure = exc
                self.sink = None
                self.abort()

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            with contextlib.suppress(Exception):
                self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            with contextlib.suppress(Exception):
                self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def usable(self, now: float, max_idle: float) -> bool:
        return not self.closing() and not self.eof and not self.buf and now - self.idle_since < max_idle

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class EngineResponse:
    """One answer from the engine; read it with :meth:`read` or :meth:`iter_raw`, then :meth:`release`."""

    def __init__(self, pool: EnginePool, conn: _Conn, status: int, headers: dict[str, str],
                 rest: bytes) -> None:
        self.status = status
        self.headers = headers
        self._pool = pool
        self._conn: _Conn | None = conn
        self._first = rest      # body bytes that came with the headers
        self._pending = b""     # partial chunk framing, or bytes after the body's end
        self._complete = False
        te = headers.get("transfer-encoding", "").lower()
        self._chunked = "chunked" in te
        cl = headers.get("content-length")
        self._length = int(cl) if cl is not None and not self._chunked else None
        self._keep_alive = headers.get("connection", "").lower() != "close" and (
            self._chunked or self._length is not None)
        # chunked decoding state
        self._left = 0          # data bytes left in the current chunk
        self._crlf = False      # a chunk's trailing CRLF is still to be skipped
        if status in (204, 304) or (self._length == 0):
            self._complete = True

    @property
    def complete(self) -> bool:
        """True once the whole body has been read."""
        return self._complete

    def _decode(self, data: bytes) -> bytes:
        """The body bytes in one socket read (framing removed); marks the body complete at its end."""
        if self._complete:
            self._pending += data
            return b""
        if self._chunked:
            return self._dechunk(data)
        if self._length is not None:
            if len(data) >= self._length:
                out, self._pending = data[:self._length], data[self._length:]
                self._length = 0
                self._complete = True
                return out
            self._length -= len(data)
        return data

    def _ended(self, conn: _Conn) -> None:
        """The engine closed the connection: a read-until-close body is complete, anything else broken."""
        if conn.failure is not None:
            raise conn.failure
        if not self._complete:
            if self._length is None and not self._chunked:
                self._complete = True
                return
            raise EngineConnectionError("the engine closed the connection in the middle of an answer")

    async def iter_raw(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive: one item per socket read (chunk framing removed)."""
        conn = self._conn
        if conn is None:
            raise EngineConnectionError("the response was already released")
        parts: list[bytes] = []

        def sink(data: bytes) -> bool:
            piece = self._decode(data)
            if piece:
                parts.append(piece)
            return bool(piece) or self._complete

        first, self._first = self._first, b""
        conn.attach(sink, first)
        try:
            while True:
                if parts:
                    batch, parts[:] = parts[:], []
                    for piece in batch:
                        yield piece
                    continue
                if self._complete:
                    return
                if conn.failure is not None or conn.eof:
                    self._ended(conn)
                    return
                await conn.wait()
        finally:
            conn.sink = None

    def _dechunk(self, data: bytes) -> bytes:
        """Strip chunked framing from ``data`` (plus what was left over); keeps partial framing for later."""
        buf = self._pending + data if self._pending else data
        self._pending = b""
        pos, end = 0, len(buf)
        out: list[bytes] = []
        while True:
            if self._left:
                take = min(self._left, end - pos)
                if take <= 0:
                    break
                out.append(buf[pos:pos + take])
                pos += take
                self._left -= take
                if self._left:
                    break
                self._crlf = True
            if self._crlf:
                if end - pos < 2:
                    break
                pos += 2
                self._crlf = False
            nl = buf.find(_EOL, pos)
            if nl < 0:
                if end - pos > HEAD_LIMIT:
                    raise EngineConnectionError("the engine sent a malformed chunk header")
                break
            try:
                size = int(buf[pos:nl].split(b";", 1)[0], 16)
            except ValueError as exc:
                raise EngineConnectionError("the engine sent a malformed chunk header") from exc
            if size == 0:
                # last chunk: skip optional trailers up to the empty line
                if buf.startswith(_EOL, nl + 2):
                    pos = nl + 4
                else:
                    blank = buf.find(b"\r\n\r\n", nl + 2)
                    if blank < 0:
                        break  # wait for the rest of the trailers
                    pos = blank + 4
                self._complete = True
                break
            pos = nl + 2
            self._left = size
        if not self._complete:
            self._pending = buf[pos:] if pos < end else b""
        else:
            self._pending = b""
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    async def read(self) -> bytes:
        """The whole body; releases the connection back to the pool."""
        parts = [piece async for piece in self.iter_raw()]
        self.release()
        return b"".join(parts)

    def release(self) -> None:
        """Give the connection back to the pool if the answer was read to its end, else close it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._complete and self._keep_alive and not self._pending:
            self._pool._put(conn)
        else:
            conn.abort()

    def close(self) -> None:
        """Close the connection now (the engine sees the client go away); safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()


class EnginePool:
    """Keep-alive connections to ``http://host:port``; :meth:`request` sends one request on one of them."""

    def __init__(self, host: str, port: int, *, connect_timeout: float = 10.0,
                 max_idle_s: float = DEFAULT_MAX_IDLE_S, max_pooled: int = DEFAULT_MAX_POOLED) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.max_idle_s = max_idle_s
        self.max_pooled = max_pooled
        self._idle: list[_Conn] = []
        self._closed = False
        self._host_header = f"{host}:{port}".encode()
        self.opened = 0  # connections opened so far (tests and benchmarks read it)

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(loop), self.host, self.port), self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise EngineConnectionError(f"cannot connect to {self.host}:{self.port}: "
                                        f"{type(exc).__name__}: {exc}") from exc
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.opened += 1
        return conn

    def _get(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable(now, self.max_idle_s):
                conn.reused = True
                return conn
            conn.abort()
        return None

    def _put(self, conn: _Conn) -> None:
        conn.sink = None
        conn.resume()
        if self._closed or len(self._idle) >= self.max_pooled or conn.closing() or conn.eof or conn.buf:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def request(self, method: str, path: str, body: bytes | None = None, *,
                      content_type: bytes = b"application/json",
                      timeout: float | None = None) -> EngineResponse:
        """Send one request; returns once the status line and headers arrived.

        ``timeout`` bounds the wait for the headers (``None``: no bound).
        """
        if self._closed:
            raise EngineConnectionError("the engine connection pool is closed")
        head = [f"{method} {path} HTTP/1.1\r\n".encode(), b"Host: ", self._host_header, _EOL]
        if body is not None:
            head += [b"Content-Type: ", content_type, b"\r\nContent-Length: ", str(len(body)).encode(), _EOL]
        head.append(_EOL)
        raw = b"".join(head) + (body or b"")
        for attempt in (0, 1):
            conn = self._get() if attempt == 0 else None
            if conn is None:
                conn = await self._connect()
            try:
                conn.write(raw)
                if timeout is None:
                    return await self._response(conn)
                return await asyncio.wait_for(self._response(conn), timeout)
            except (EngineConnectionError, OSError) as exc:
                conn.abort()
                if conn.reused and attempt == 0 and not isinstance(exc, _PartialHead):
                    continue  # the engine closed an idle keep-alive connection: try a fresh one
                raise EngineConnectionError(f"{type(exc).__name__}: {exc}") from exc
            except BaseException:
                conn.abort()
                raise
        raise AssertionError("unreachable")

    async def _response(self, conn: _Conn) -> EngineResponse:
        buf = conn.buf
        scanned = 0
        while True:
            end = buf.find(b"\r\n\r\n", max(0, scanned - 3))
            if end >= 0:
                break
            if len(buf) > HEAD_LIMIT:
                raise _PartialHead("the engine's response headers are too large")
            if conn.eof:
                if buf:
                    raise _PartialHead("the engine closed the connection in the middle of its headers")
                raise EngineConnectionError("the engine closed the connection without answering")
            scanned = len(buf)
            await conn.wait()
        raw = bytes(buf[:end])
        del buf[:end + 4]
        lines = raw.split(_EOL)
        parts = lines[0].split(b" ", 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError) as exc:
            raise _PartialHead(f"the engine sent a malformed status line {lines[0][:100]!r}") from exc
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        return EngineResponse(self, conn, status, headers, b"")

    async def close(self) -> None:
        """Close every idle connection; connections in use are closed by their responses."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.abort()


class _PartialHead(EngineConnectionError):
    """The engine started answering, so the request must not be retried."""


# -- SSE -------------------------------------------------------------------------------------


@dataclass
class SSEStats:
    """What a relay saw: usage (when the engine sent it) and how many events it relayed."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    events: int = 0
    done: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def completion_tokens_or_events(self) -> int:
        """Completion tokens from the engine's usage, or the number of events relayed when it sent none."""
        return self.completion_tokens if self.completion_tokens is not None else self.events


class _Cutter:
    """Cuts body pieces into buffers of whole SSE events, without the engine's ``[DONE]``.

    Usage-only events (``"choices":[]`` with ``"usage"``) are recorded in the
    stats and dropped unless ``keep_usage``; ``stats.done`` says ``[DONE]`` was
    seen; :meth:`tail` gives what followed the last event boundary at the end.
    """

    __slots__ = ("buf", "keep_usage", "rewrite", "stats")

    def __init__(self, stats: SSEStats, keep_usage: bool, rewrite: Callable[[bytes], bytes] | None) -> None:
        self.stats = stats
        self.keep_usage = keep_usage
        self.rewrite = rewrite
        self.buf = b""

    def cut(self, piece: bytes) -> bytes | None:
        """The whole events that ``piece`` completes (filtered and rewritten), or None."""
        buf = self.buf
        if buf:
            piece = buf + piece
        end = piece.rfind(b"\n\n")
        if end < 0:
            self.buf = piece
            return None
        if end + 2 == len(piece):
            out, self.buf = piece, b""
        else:
            out, self.buf = piece[:end + 2], piece[end + 2:]
        if _DONE in out or _USAGE in out:
            out = _filter(out, self.keep_usage, self.stats)
            if not out:
                return None
        self.stats.events += out.count(b"\n\n")
        return self.rewrite(out) if self.rewrite is not None else out

    def tail(self) -> bytes | None:
        """Bytes after the last event boundary when the body ended (yielded as they are), or None."""
        buf, self.buf = self.buf, b""
        if not buf.strip():
            return None
        return self.rewrite(buf) if self.rewrite is not None else buf


def _filter(data: bytes, keep_usage: bool, stats: SSEStats) -> bytes:
    """Drop ``[DONE]`` (and what follows it) and, unless asked for, usage-only events; record usage."""
    kept: list[bytes] = []
    for event in data.split(b"\n\n"):
        if not event:
            continue
        payload = event[5:].strip() if event.startswith(b"data:") else event.strip()
        if payload == b"[DONE]":
            stats.done = True
            break
        if _USAGE in event:
            try:
                obj = json.loads(payload)
            except ValueError:
                obj = None
            if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
                u = obj["usage"]
                if isinstance(u.get("prompt_tokens"), int):
                    stats.prompt_tokens = u["prompt_tokens"]
                if isinstance(u.get("completion_tokens"), int):
                    stats.completion_tokens = u["completion_tokens"]
                if not keep_usage and not obj.get("choices"):
                    continue
        kept.append(event + b"\n\n")
    return b"".join(kept)


#: tokens that arrive closer together than this are relayed together: after a relayed buffer that
#: came less than this after the one before it, the engine's socket is left unread until this long
#: after that buffer, so a fast stream costs one wake per interval rather than one per token; a
#: stream slower than one token per interval (a human-paced chat, at ~50 tokens/s, is) is relayed
#: one token at a time, as it arrives. 0 (the default) turns it off.
COALESCE_ENV = "TURNOUT_STREAM_COALESCE_MS"
DEFAULT_COALESCE_MS = 0.0


def coalesce_seconds() -> float:
    """The coalescing interval from ``TURNOUT_STREAM_COALESCE_MS`` (milliseconds), in seconds."""
    raw = os.environ.get(COALESCE_ENV, "")
    try:
        ms = float(raw) if raw.strip() else DEFAULT_COALESCE_MS
    except ValueError:
        raise ValueError(f"{COALESCE_ENV} must be a number of milliseconds, not {raw!r}") from None
    return max(0.0, ms) / 1000.0


#: queued relay output (bytes) above which the engine connection stops being read, and below
#: which it is read again: a slow client slows the engine's socket, not the shim's memory
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024


class SSERelay:
    """The SSE body of one engine response, as an async iterator of buffers of whole events.

    The connection's ``data_received`` decodes the body and cuts events
    (:class:`_Cutter`) as bytes arrive, and queues the result; ``__anext__``
    only waits when the queue is empty, so a token costs one protocol callback
    and one coroutine step, with no stream reader or generator layers between
    the socket and the consumer.

    ``usage`` gets the engine's usage (or the event count, see
    :class:`SSEStats`) when the stream ends, however it ends. A stream that
    breaks off or ends without ``[DONE]`` raises :class:`EngineConnectionError`,
    or what ``on_error`` makes of it. :meth:`aclose` before the end closes the
    connection, which is how the engine learns that the client went away.
    ``active`` (a set) holds ``resp`` while it streams, so that the caller can
    close every stream at once (engine death).
    """

    def __init__(self, resp: EngineResponse, usage: Usage, *, keep_usage: bool,
                 rewrite: Callable[[bytes], bytes] | None = None,
                 active: set[EngineResponse] | None = None,
                 on_error: Callable[[EngineConnectionError], Awaitable[BaseException]] | None = None,
                 coalesce_s: float = 0.0) -> None:
        conn = resp._conn
        if conn is None:
            raise EngineConnectionError("the response was already released")
        self.stats = SSEStats()
        self._resp = resp
        self._conn = conn
        self._usage = usage
        self._active = active
        self._on_error = on_error
        self._cutter = _Cutter(self.stats, keep_usage, rewrite)
        self._out: deque[bytes] = deque()
        self._queued = 0
        self._closed = False
        self._coalesce = coalesce_s
        self._last = 0.0  # loop time of the last relayed buffer
        self._fast = False  # the last two buffers came within about one interval of each other
        if active is not None:
            active.add(resp)
        first, resp._first = resp._first, b""
        conn.attach(self._feed, first)

    def _feed(self, data: bytes) -> bool:
        """The connection's sink: True when there is something new for the consumer."""
        resp = self._resp
        piece = resp._decode(data)
        if self.stats.done:
            return resp._complete
        if piece:
            out = self._cutter.cut(piece)
            if out is not None:
                self._out.append(out)
                self._queued += len(out)
                if self._queued > HIGH_WATER:
                    self._conn.pause()
                return True
            if self.stats.done:
                return True
        return resp._complete

    def __aiter__(self) -> SSERelay:
        return self

    async def __anext__(self) -> bytes:
        out = self._out
        conn = self._conn
        while not out:
            if self._closed:
                raise StopAsyncIteration
            stats = self.stats
            if stats.done:
                if not self._resp._complete and not conn.eof:
                    # [DONE] is the engine's last event: wait (briefly) for the body's end, so the
                    # connection can be reused
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._body_end(), 1.0)
                self._finish()
                raise StopAsyncIteration
            try:
                if self._resp._complete:
                    tail = self._cutter.tail()
                    if tail is None:
                        raise EngineConnectionError("the stream ended without [DONE]")
                    out.append(tail)
                    self._queued += len(tail)
                    break
                if conn.failure is not None or conn.eof:
                    self._resp._ended(conn)
                    continue
            except EngineConnectionError as exc:
                self._finish()
                if self._on_error is not None:
                    raise await self._on_error(exc) from exc
                raise
            if self._fast:
                # a fast stream: let the next tokens gather in the socket until the interval is over
                self._fast = False
                delay = self._last + self._coalesce - conn.loop.time()
                if delay > 0:
                    conn.pause()
                    try:
                        await asyncio.sleep(delay)
                    finally:
                        conn.resume()
                continue
            await conn.wait()
        piece = out.popleft()
        self._queued -= len(piece)
        if conn.paused and self._queued < LOW_WATER:
            conn.resume()
        if self._coalesce:
            now = conn.loop.time()
            # a gap up to 1.5 intervals: tokens came as fast as they were let through
            self._fast = now - self._last < 1.5 * self._coalesce
            self._last = now
        return piece

    async def _body_end(self) -> None:
        conn = self._conn
        while not self._resp._complete and not conn.eof:
            await conn.wait()

    def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        resp, stats = self._resp, self.stats
        if self._active is not None:
            self._active.discard(resp)
        if stats.prompt_tokens is not None:
            self._usage.prompt_tokens = stats.prompt_tokens
        self._usage.completion_tokens = stats.completion_tokens_or_events
        self._conn.sink = None
        self._out.clear()
        if stats.done and resp._complete:
            resp.release()
        else:
            resp.close()

    async def aclose(self) -> None:
        """End the relay: the connection goes back to the pool after a complete answer, else it is closed."""
        self._finish()


def relay_response(resp: EngineResponse, usage: Usage, *, keep_usage: bool,
                   rewrite: Callable[[bytes], bytes] | None = None,
                   active: set[EngineResponse] | None = None,
                   on_error: Callable[[EngineConnectionError], Awaitable[BaseException]] | None = None,
                   coalesce_s: float | None = None) -> SSERelay:
    """The SSE body of ``resp`` relayed (see :class:`SSERelay`), then the connection back to the pool.

    ``coalesce_s`` defaults to ``TURNOUT_STREAM_COALESCE_MS`` (see :data:`COALESCE_ENV`).
    """
    return SSERelay(resp, usage, keep_usage=keep_usage, rewrite=rewrite, active=active, on_error=on_error,
                    coalesce_s=coalesce_seconds() if coalesce_s is None else coalesce_s)
