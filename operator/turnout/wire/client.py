"""HTTP/1.1 to one upstream (an engine for the shim, a shim for the gateway): keep-alive, framing by httptools.

The shim's data path is one extra hop on 127.0.0.1, so what it costs is
Python work per socket read. Each connection is an ``asyncio.Protocol``
(:class:`_Conn`) that feeds what it reads to an ``httptools`` (llhttp)
response parser; the parser hands body bytes, with chunk framing removed, to
a *sink* set by whoever reads the body (:class:`EngineResponse` for whole
answers, :class:`~turnout.wire.relay.SSERelay` for streams), inside
``data_received``. There is no stream reader and no per-request client object.

Malformed answers (a bad status line, header, ``Content-Length`` or chunk
size) raise :class:`EngineProtocolError`, which the backends turn into 502.

Retry rule (:func:`may_retry`): a request is sent again, once, on a fresh
connection only when it went out on a *reused* keep-alive connection that
the engine closed before sending a single byte back (it dropped the idle
connection as we took it). Nothing else is retried: not a timeout (which is
``asyncio.TimeoutError``, an ``OSError`` on Python 3.11+ and not on 3.10),
not a reset after bytes arrived, not a malformed answer, since the engine
may already be working on the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable

import httptools

from turnout.aio import wait_for

DEFAULT_MAX_IDLE_S = 4.0
DEFAULT_MAX_POOLED = 256
_EOL = b"\r\n"


class EngineConnectionError(ConnectionError):
    """The engine could not be reached, or closed the connection before or while answering."""


class EngineProtocolError(EngineConnectionError):
    """The engine answered something that is not valid HTTP/1.1."""


class EngineTimeoutError(EngineConnectionError):
    """The engine sent nothing for longer than the stream's idle timeout."""


class EngineConnectError(EngineConnectionError):
    """No connection to the engine could be opened: the request was not sent."""


class EngineClosedError(EngineConnectionError):
    """The engine closed the connection before sending any byte of an answer."""


def may_retry(exc: BaseException, *, reused: bool, received: int) -> bool:
    """Whether a failed request may be sent again on a fresh connection (see the module docstring)."""
    return reused and received == 0 and isinstance(exc, EngineClosedError)


class _Conn(asyncio.Protocol):
    """One connection to the engine; parses the answer in flight as bytes arrive."""

    __slots__ = ("_body", "_woken", "complete", "early", "eof", "failure", "head_done", "headers", "idle_since",
                 "keep_alive", "last_read", "loop", "parser", "paused", "received", "reused", "sink", "status",
                 "transport", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.sink: Callable[[bytes], bool] | None = None
        self.early: list[bytes] = []  # body bytes that arrived before a sink was attached
        self._body: list[bytes] = []  # body pieces of the read being parsed
        self.received = 0             # bytes of the current answer
        self.last_read = 0.0
        self.eof = False
        self.failure: EngineConnectionError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.idle_since = 0.0
        self.reused = False
        self._woken = False

    def begin(self) -> None:
        """Expect a new answer (before a request is written)."""
        self.parser = httptools.HttpResponseParser(self)
        self.status, self.headers, self.head_done, self.complete, self.keep_alive = 0, {}, False, False, False
        self.sink, self.early, self.received = None, [], 0

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.status = self.parser.get_status_code()
        self.head_done = self._woken = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)  # handed on once per read (data_received), not once per chunk

    def on_message_complete(self) -> None:
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it once the message is done
        self.complete = self._woken = True

    # -- protocol callbacks ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        parser = self.parser
        if parser is None or self.complete:
            self._fail(EngineProtocolError("the engine sent bytes with no request in flight"))
            return
        self.received += len(data)
        self._woken = False
        body = self._body
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(EngineProtocolError("the engine switched protocols"))
            return
        except httptools.HttpParserError as exc:
            self._fail(EngineProtocolError(f"the engine sent malformed HTTP: {exc}"))
            return
        finally:
            if body:
                piece = body[0] if len(body) == 1 else b"".join(body)
                body.clear()
                sink = self.sink
                if sink is None:
                    self.early.append(piece)
                    self._woken = True
                elif sink(piece):
                    self._woken = True
        if self._woken:
            self._wake()

    def eof_received(self) -> bool:
        self._ended()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended()

    def _ended(self) -> None:
        self.eof = True
        if self.head_done and not self.complete and "content-length" not in self.headers \
                and "chunked" not in self.headers.get("transfer-encoding", "").lower():
            self.complete = True  # a read-until-close body ends with the connection
        self._wake()

    def _fail(self, exc: EngineConnectionError) -> None:
        self.failure = exc
        self.sink = None
        self.abort()
        self._wake()

    # -- consumer side ---------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        """Until the next wake (headers, body bytes for the consumer, end of the answer, failure)."""
        waiter = self.waiter = self.loop.create_future()
        await waiter

    def broken(self) -> EngineConnectionError | None:
        """Why the answer in flight cannot go on, or None while it can."""
        if self.failure is not None:
            return self.failure
        if self.eof and not self.complete:
            if not self.head_done:
                if self.received:
                    return EngineProtocolError("the engine closed the connection in the middle of its headers")
                return EngineClosedError("the engine closed the connection without answering")
            return EngineConnectionError("the engine closed the connection in the middle of an answer")
        return None

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

    def usable(self, now: float, max_idle: float) -> bool:
        closing = self.transport is None or self.transport.is_closing()
        return not closing and not self.eof and self.failure is None and now - self.idle_since < max_idle

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class EngineResponse:
    """One answer from the engine; read it with :meth:`read` or :meth:`iter_raw`, then :meth:`release`."""

    def __init__(self, pool: EnginePool, conn: _Conn) -> None:
        self.status = conn.status
        self.headers = conn.headers
        self._pool = pool
        self._conn: _Conn | None = conn

    @property
    def conn(self) -> _Conn:
        if self._conn is None:
            raise EngineConnectionError("the response was already released")
        return self._conn

    @property
    def complete(self) -> bool:
        """True once the whole body has been read."""
        return self._conn is None or self._conn.complete

    async def iter_raw(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive: what each socket read brought, chunk framing removed."""
        conn = self.conn
        parts, conn.early = conn.early, []

        def sink(data: bytes) -> bool:
            parts.append(data)
            return True

        conn.sink = sink
        try:
            while True:
                if parts:
                    batch, parts[:] = parts[:], []
                    for piece in batch:
                        yield piece
                    continue
                if conn.complete:
                    return
                broken = conn.broken()
                if broken is not None:
                    raise broken
                await conn.wait()
        finally:
            conn.sink = None

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
        if conn.complete and conn.keep_alive and not conn.eof:
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

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await wait_for(
                loop.create_connection(lambda: _Conn(loop), self.host, self.port), self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise EngineConnectError(f"cannot connect to {self.host}:{self.port}: "
                                        f"{type(exc).__name__}: {exc}") from exc
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
        conn.parser = None
        conn.resume()
        conn.idle_since = time.monotonic()
        if self._closed or len(self._idle) >= self.max_pooled or not conn.usable(conn.idle_since, 1.0):
            conn.abort()
            return
        self._idle.append(conn)

    async def request(self, method: str, path: str, body: bytes | None = None, *,
                      content_type: bytes = b"application/json",
                      timeout: float | None = None, headers: bytes = b"") -> EngineResponse:
        """Send one request; returns once the status line and headers arrived.

        ``timeout`` bounds the wait for the headers (``None``: no bound); it
        raises ``asyncio.TimeoutError`` and is never retried. ``headers``: more
        header lines, each ending with CRLF, sent as they are.
        """
        if self._closed:
            raise EngineConnectError("the engine connection pool is closed")
        head = [f"{method} {path} HTTP/1.1\r\n".encode(), b"Host: ", self._host_header, _EOL, headers]
        if body is not None:
            head += [b"Content-Type: ", content_type, b"\r\nContent-Length: ", str(len(body)).encode(), _EOL]
        head.append(_EOL)
        raw = b"".join(head) + (body or b"")
        for attempt in (0, 1):
            conn = self._get() if attempt == 0 else None
            if conn is None:
                conn = await self._connect()
            conn.begin()
            conn.write(raw)
            try:
                if timeout is None:
                    await self._head(conn)
                else:
                    await wait_for(self._head(conn), timeout)
            except BaseException as exc:
                conn.abort()
                if attempt == 0 and may_retry(exc, reused=conn.reused, received=conn.received):
                    continue
                raise
            return EngineResponse(self, conn)
        raise AssertionError("unreachable")

    @staticmethod
    async def _head(conn: _Conn) -> None:
        while not conn.head_done:
            broken = conn.broken()
            if broken is not None:
                raise broken
            await conn.wait()

    async def close(self) -> None:
        """Close every idle connection; connections in use are closed by their responses."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.abort()
