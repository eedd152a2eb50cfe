"""A lean HTTP/1.1 client for one loopback engine server, and an SSE relay on top of it.

The shim's data path is one extra hop on 127.0.0.1, so what it costs is
Python work per socket read. This module keeps that work per *read*, not per
token:

* :class:`EnginePool` keeps persistent keep-alive connections (raw asyncio
  streams, no per-request client objects); a pooled connection that the
  engine closed while idle is retried once on a fresh one, before any answer
  byte arrived, and connections idle longer than ``max_idle_s`` are dropped
  (uvicorn-based engines close idle ones after 5 s);
* :class:`EngineResponse` decodes ``Content-Length``, chunked and
  read-until-close bodies; :meth:`EngineResponse.iter_raw` yields everything
  one socket read brought (chunk framing removed) as one ``bytes``;
* :func:`relay_sse` turns those pieces into buffers cut only at SSE event
  boundaries (``\\n\\n``), so a buffer may carry many events; it finds
  ``[DONE]`` and usage with a bytes search on the buffer and parses only the
  one event that carries ``"usage"``.

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
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from modelplane.shim.backends.base import Usage

READ_SIZE = 256 * 1024
HEAD_LIMIT = 64 * 1024
DEFAULT_MAX_IDLE_S = 4.0
DEFAULT_MAX_POOLED = 256

_USAGE = b'"usage"'
_DONE = b"data: [DONE]"
_EOL = b"\r\n"


class EngineConnectionError(ConnectionError):
    """The engine could not be reached, or closed the connection before or while answering."""


class _Conn:
    __slots__ = ("idle_since", "reader", "reused", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0
        self.reused = False

    def usable(self, now: float, max_idle: float) -> bool:
        return (not self.writer.transport.is_closing() and not self.reader.at_eof()
                and now - self.idle_since < max_idle)

    def abort(self) -> None:
        self.writer.transport.abort()


class EngineResponse:
    """One answer from the engine; read it with :meth:`read` or :meth:`iter_raw`, then :meth:`release`."""

    def __init__(self, pool: EnginePool, conn: _Conn, status: int, headers: dict[str, str],
                 rest: bytes) -> None:
        self.status = status
        self.headers = headers
        self._pool = pool
        self._conn: _Conn | None = conn
        self._pending = rest
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

    async def iter_raw(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive: one item per socket read (chunk framing removed)."""
        conn = self._conn
        if conn is None:
            raise EngineConnectionError("the response was already released")
        reader = conn.reader
        data, self._pending = self._pending, b""
        while not self._complete:
            if not data:
                data = await reader.read(READ_SIZE)
                if not data:
                    if self._length is None and not self._chunked:
                        self._complete = True  # read-until-close body
                        return
                    raise EngineConnectionError("the engine closed the connection in the middle of an answer")
            if self._chunked:
                out = self._dechunk(data)
            elif self._length is not None:
                if len(data) >= self._length:
                    out, self._pending = data[:self._length], data[self._length:]
                    self._length = 0
                    self._complete = True
                else:
                    out = data
                    self._length -= len(data)
            else:
                out = data
            data = b""
            if out:
                yield out

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
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=READ_SIZE), self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise EngineConnectionError(f"cannot connect to {self.host}:{self.port}: "
                                        f"{type(exc).__name__}: {exc}") from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.opened += 1
        return _Conn(reader, writer)

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
        if self._closed or len(self._idle) >= self.max_pooled or conn.writer.transport.is_closing():
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
                conn.writer.write(raw)
                if timeout is None:
                    return await self._response(conn)
                return await asyncio.wait_for(self._response(conn), timeout)
            except (EngineConnectionError, OSError, asyncio.IncompleteReadError) as exc:
                conn.abort()
                if conn.reused and attempt == 0 and not isinstance(exc, _PartialHead):
                    continue  # the engine closed an idle keep-alive connection: try a fresh one
                raise EngineConnectionError(f"{type(exc).__name__}: {exc}") from exc
            except BaseException:
                conn.abort()
                raise
        raise AssertionError("unreachable")

    async def _response(self, conn: _Conn) -> EngineResponse:
        reader = conn.reader
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise _PartialHead("the engine closed the connection in the middle of its headers") from exc
            raise EngineConnectionError("the engine closed the connection without answering") from exc
        except asyncio.LimitOverrunError as exc:
            raise _PartialHead("the engine's response headers are too large") from exc
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
    """What :func:`relay_sse` saw: usage (when the engine sent it) and how many events it relayed."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    events: int = 0
    done: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def completion_tokens_or_events(self) -> int:
        """Completion tokens from the engine's usage, or the number of events relayed when it sent none."""
        return self.completion_tokens if self.completion_tokens is not None else self.events


async def relay_sse(pieces: AsyncIterator[bytes], stats: SSEStats, *, keep_usage: bool,
                    rewrite: Callable[[bytes], bytes] | None = None) -> AsyncIterator[bytes]:
    """Buffers of whole SSE events from ``pieces``, without the engine's ``[DONE]``.

    Usage-only events (``"choices":[]`` with ``"usage"``) are recorded in
    ``stats`` and dropped unless ``keep_usage``. Ends after ``[DONE]`` or when
    ``pieces`` ends (``stats.done`` tells which); bytes after the last event
    boundary at the end are yielded as they are.
    """
    buf = b""
    async for piece in pieces:
        buf = buf + piece if buf else piece
        end = buf.rfind(b"\n\n")
        if end < 0:
            continue
        if end + 2 == len(buf):
            out, buf = buf, b""
        else:
            out, buf = buf[:end + 2], buf[end + 2:]
        if _DONE in out or _USAGE in out:
            out = _filter(out, keep_usage, stats)
            if not out:
                if stats.done:
                    return
                continue
        stats.events += out.count(b"\n\n")
        yield rewrite(out) if rewrite is not None else out
        if stats.done:
            return
    if buf.strip():
        yield rewrite(buf) if rewrite is not None else buf


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


async def relay_response(resp: EngineResponse, usage: Usage, *, keep_usage: bool,
                         rewrite: Callable[[bytes], bytes] | None = None,
                         active: set[EngineResponse] | None = None) -> AsyncIterator[bytes]:
    """The SSE body of ``resp`` through :func:`relay_sse`, then the connection back to the pool.

    ``usage`` gets the engine's usage (or the event count, see
    :class:`SSEStats`) when the stream ends, however it ends. Raises
    :class:`EngineConnectionError` when the engine's stream breaks off or
    ends without ``[DONE]``. Closing this generator early closes the
    connection, which is how the engine learns that the client went away.
    ``active`` (a set) holds ``resp`` while it streams, so that the caller can
    close every stream at once (engine death).
    """
    stats = SSEStats()
    if active is not None:
        active.add(resp)
    try:
        async for out in relay_sse(resp.iter_raw(), stats, keep_usage=keep_usage, rewrite=rewrite):
            yield out
        if not stats.done:
            raise EngineConnectionError("the stream ended without [DONE]")
    finally:
        if active is not None:
            active.discard(resp)
        if stats.prompt_tokens is not None:
            usage.prompt_tokens = stats.prompt_tokens
        usage.completion_tokens = stats.completion_tokens_or_events
        if stats.done and not resp.complete:
            # [DONE] is the engine's last event: read the body's end so the connection can be reused,
            # without waiting long for an engine that lingers
            with contextlib.suppress(Exception):
                await asyncio.wait_for(_drain(resp), 1.0)
        if stats.done and resp.complete:
            resp.release()
        else:
            resp.close()


async def _drain(resp: EngineResponse) -> None:
    async for _ in resp.iter_raw():
        pass
