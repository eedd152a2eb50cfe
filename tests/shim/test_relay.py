"""The engine data path: HTTP/1.1 framing (``wire/client.py``), SSE cutting (``wire/sse.py``), the relay
(``wire/relay.py``), keep-alive and its retry rule, and the proxy backend's stream over them, against a
scripted engine socket (``asyncio.start_server``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.shim.backends.base import State, Stream
from turnout.shim.backends.vllm import VllmBackend
from turnout.shimargs import ShimArgs
from turnout.wire.client import (
    EngineClosedError,
    EngineConnectionError,
    EnginePool,
    EngineProtocolError,
    EngineResponse,
    _Conn,
    may_retry,
)
from turnout.wire.errors import OpenAIError
from turnout.wire.relay import HIGH_WATER, IDLE_TIMEOUT_ENV, LOW_WATER, idle_timeout_from_env, relay_response
from turnout.wire.sse import Cutter, SSEStats, Usage, event_data, split_events


def event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def token(i: int) -> bytes:
    return event({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                  "choices": [{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}]})


USAGE = event({"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [],
               "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
DONE = b"data: [DONE]\n\n"


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"


async def pieces_of(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


async def collect(parts: list[bytes], *, keep_usage: bool) -> tuple[list[bytes], SSEStats]:
    """What the relay's cutter makes of ``parts``: buffers of whole events, as relayed, and its stats."""
    stats = SSEStats()
    cutter = Cutter(stats, keep_usage, None)
    out: list[bytes] = []
    async for piece in pieces_of(*parts):
        cut = cutter.cut(piece)
        if cut is not None:
            out.append(cut)
        if stats.done:
            return out, stats
    tail = cutter.tail()
    return out + ([tail] if tail is not None else []), stats


# -- SSE cutting --------------------------------------------------------------------------------


async def test_events_split_across_reads_are_joined_at_event_boundaries() -> None:
    whole = token(0) + token(1) + token(2) + USAGE + DONE
    parts = [whole[:10], whole[10:len(token(0)) + 5], whole[len(token(0)) + 5:-3], whole[-3:]]
    out, stats = await collect(parts, keep_usage=False)
    assert all(b.endswith(b"\n\n") for b in out)  # never half an event
    assert b"".join(out) == token(0) + token(1) + token(2)  # usage dropped (not asked), [DONE] dropped
    assert (stats.prompt_tokens, stats.completion_tokens, stats.done) == (7, 3, True)


async def test_several_events_in_one_read_go_out_in_one_buffer() -> None:
    out, stats = await collect([token(0) + token(1) + token(2), token(3) + DONE], keep_usage=False)
    assert out == [token(0) + token(1) + token(2), token(3)]
    assert stats.events == 4 and stats.done
    # without usage from the engine, the event count stands in for completion tokens
    assert stats.completion_tokens is None and stats.completion_tokens_or_events == 4


async def test_usage_event_kept_when_asked_and_a_usage_chunk_with_choices_always_kept() -> None:
    with_choices = event({"id": "c1", "choices": [{"index": 0, "delta": {"content": "x"}}],
                          "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    out, stats = await collect([token(0) + USAGE, DONE], keep_usage=True)
    assert b"".join(out) == token(0) + USAGE and stats.completion_tokens == 3
    out, stats = await collect([with_choices + DONE], keep_usage=False)
    assert b"".join(out) == with_choices and stats.completion_tokens == 1


async def test_nothing_after_done_is_relayed() -> None:
    out, stats = await collect([token(0) + DONE + token(9)], keep_usage=False)
    assert b"".join(out) == token(0) and stats.done


async def test_stream_without_done_reports_it_and_keeps_a_trailing_partial_event() -> None:
    out, stats = await collect([token(0), b"data: {\"half"], keep_usage=False)
    assert out == [token(0), b"data: {\"half"] and not stats.done


# -- HTTP framing -------------------------------------------------------------------------------


class _Transport(asyncio.Transport):
    """Stands in for the engine socket's transport: the protocol is fed by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.paused = False

    def is_closing(self) -> bool:
        return self.closed

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def _conn() -> _Conn:
    conn = _Conn(asyncio.get_running_loop())
    conn.connection_made(_Transport())
    conn.begin()
    return conn


HEAD = {"chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"}


async def _decode_reads(parts: list[bytes], *, eof: bool = True) -> bytes:
    """The body of the answer whose wire bytes arrive as ``parts`` (one read each)."""
    conn = _conn()

    async def feed() -> None:
        for p in parts:
            conn.data_received(p)
            await asyncio.sleep(0)
        if eof:
            conn.eof_received()

    feeder = asyncio.ensure_future(feed())
    await EnginePool._head(conn)
    resp = EngineResponse(EnginePool("127.0.0.1", 9), conn)
    try:
        out = [p async for p in resp.iter_raw()]
    finally:
        await feeder
    assert resp.complete
    return b"".join(out)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=8), st.data())
def test_chunked_bodies_decode_whatever_the_read_boundaries(pieces: list[bytes], data: st.DataObject) -> None:
    wire = HEAD["chunked"] + chunked(*pieces)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(wire) - 1), max_size=10)))
    parts = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    # each part arrives as its own read, so framing is split anywhere (inside headers, sizes and CRLFs)
    assert asyncio.run(_decode_reads(parts, eof=False)) == b"".join(pieces)


async def test_chunked_trailers_content_length_and_read_until_close() -> None:
    ok = b"HTTP/1.1 200 OK\r\n"
    assert await _decode_reads([HEAD["chunked"] + b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"], eof=False) == b"hello"
    assert await _decode_reads([ok + b"content-length: 5\r\n\r\nhel", b"lo"], eof=False) == b"hello"
    assert await _decode_reads([ok + b"\r\nuntil ", b"close"]) == b"until close"
    with pytest.raises(EngineConnectionError):
        await _decode_reads([ok + b"content-length: 10\r\n\r\nshort"])


@pytest.mark.parametrize("wire", [
    HEAD["chunked"] + b"-1\r\nhello\r\n",          # a negative chunk size
    HEAD["chunked"] + b"0x1a\r\n" + b"x" * 26,       # a size with a 0x prefix
    HEAD["chunked"] + b" 5\r\nhello\r\n",           # a padded size
    HEAD["chunked"] + b"zz\r\nhello\r\n",           # not hex at all
    b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
    b"HTTP/1.1 2x0 OK\r\n\r\n",
    b"SMTP ready\r\n\r\n",
])
async def test_malformed_framing_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(EngineProtocolError):
        await asyncio.wait_for(_decode_reads([wire], eof=False), 5)


def test_the_retry_rule_only_resends_on_a_reused_connection_closed_before_any_byte() -> None:
    class TimeoutError310(Exception):
        """asyncio.TimeoutError as Python 3.10 has it: not an OSError."""

    closed = EngineClosedError("closed")
    assert may_retry(closed, reused=True, received=0)
    assert not may_retry(closed, reused=False, received=0)     # a fresh connection: the engine is down
    assert not may_retry(closed, reused=True, received=12)     # the engine had started answering
    for exc in (TimeoutError(), TimeoutError310(), asyncio.TimeoutError(), ConnectionResetError(),
                EngineProtocolError("bad"), EngineConnectionError("cut")):
        # a timeout is an OSError on 3.11+ (TimeoutError) and not on 3.10: neither is retried
        assert not may_retry(exc, reused=True, received=0), exc


# -- against a scripted engine socket -------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]], Awaitable[None]]


class Engine:
    """A loopback TCP server whose answers the test scripts; records connections and closes."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        self.client_closed = asyncio.Event()
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def __aenter__(self) -> Engine:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.client_closed.set()
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                request = {"line": head.split(b"\r\n")[0].decode(), "body": json.loads(body) if body else None}
                self.requests.append(request)
                await self.handler(reader, writer, request)
                if writer.is_closing():
                    return
        finally:
            writer.close()


def sse_head() -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def write_chunks(writer: asyncio.StreamWriter, *events: bytes, end: bool = True) -> None:
    for e in events:
        writer.write(b"%x\r\n%s\r\n" % (len(e), e))
        await writer.drain()
    if end:
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def streaming_engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           request: dict[str, Any]) -> None:
    body = request["body"]
    if not body.get("stream"):
        payload = json.dumps({"id": "x", "object": "chat.completion", "model": "m",
                              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                              "usage": {"prompt_tokens": 2, "completion_tokens": 1}}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload))
        return
    writer.write(sse_head())
    await write_chunks(writer, token(0) + token(1), token(2), USAGE + DONE)


def backend(port: int) -> VllmBackend:
    """A vLLM proxy backend wired to ``port`` without starting a child process."""
    b = VllmBackend(ShimArgs(engine="vllm", model="file:///m", served_model_name="m"))
    b.port = port
    b.pool = EnginePool("127.0.0.1", port)
    b._state = State.READY
    return b


async def drain(stream: Stream) -> bytes:
    return b"".join([c async for c in stream.chunks])  # type: ignore[misc]


async def test_streams_reuse_one_keep_alive_connection_and_count_usage() -> None:
    async with Engine(streaming_engine) as engine:
        b = backend(engine.port)
        for _ in range(3):
            stream = await b.forward("/v1/chat/completions", {"model": "m", "stream": True, "messages": []})
            assert isinstance(stream, Stream)
            assert await drain(stream) == token(0) + token(1) + token(2)
            assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (7, 3)
        plain = await b.forward("/v1/chat/completions", {"model": "m", "messages": []})
        assert plain["choices"][0]["message"]["content"] == "hi"
        assert engine.connections == 1 and b.pool is not None
        # the proxy always asks the engine for usage, and the engine sees the client's body otherwise
        assert engine.requests[0]["body"]["stream_options"] == {"include_usage": True}
        await b.pool.close()


async def test_an_idle_connection_the_engine_closed_is_replaced_without_an_error() -> None:
    async def close_after_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                 request: dict[str, Any]) -> None:
        await streaming_engine(reader, writer, request)
        await writer.drain()
        writer.close()  # as an engine does when its keep-alive timeout passes

    async with Engine(close_after_answer) as engine:
        b = backend(engine.port)
        for _ in range(2):
            answer = await b.forward("/v1/chat/completions", {"model": "m", "messages": []})
            assert answer["usage"]["completion_tokens"] == 1
            await asyncio.sleep(0.05)
        assert engine.connections == 2


async def test_engine_error_status_becomes_a_backend_error_with_the_engine_status() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
        payload = json.dumps({"object": "error", "message": "max_tokens is too large", "type": "BadRequestError",
                              "code": 400}).encode()
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload))

    async with Engine(refuse) as engine:
        with pytest.raises(OpenAIError) as info:
            await backend(engine.port).forward("/v1/chat/completions", {"model": "m", "stream": True})
        assert info.value.status == 400 and "max_tokens is too large" in info.value.message


async def test_engine_dying_mid_stream_is_an_error_after_what_was_relayed() -> None:
    async def die(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
        writer.write(sse_head())
        await write_chunks(writer, token(0), end=False)
        writer.transport.abort()  # the engine process is gone: no terminator, no [DONE]

    async with Engine(die) as engine:
        stream = await backend(engine.port).forward("/v1/chat/completions", {"model": "m", "stream": True})
        got: list[bytes] = []
        with pytest.raises(OpenAIError) as info:
            async for c in stream.chunks:
                got.append(c)  # type: ignore[arg-type]
        assert got == [token(0)]
        assert info.value.status == 502 and info.value.code == "engine_stream_lost"


async def test_closing_the_stream_closes_the_engine_connection() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
        writer.write(sse_head())
        await write_chunks(writer, token(0), end=False)
        if await reader.read(1) == b"":  # an engine notices the client going away as EOF
            engine.client_closed.set()

    async with Engine(slow) as engine:
        b = backend(engine.port)
        stream = await b.forward("/v1/chat/completions", {"model": "m", "stream": True})
        chunks = stream.chunks
        assert await chunks.__anext__() == token(0)
        assert b._active  # the response is tracked while it streams
        await chunks.aclose()  # type: ignore[attr-defined]  # what the app does when its client goes away
        await asyncio.wait_for(engine.client_closed.wait(), 10)
        assert not b._active and b.pool is not None and not b.pool._idle  # not reused: closed


async def test_engine_death_ends_in_flight_streams() -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
        writer.write(sse_head())
        await write_chunks(writer, token(0), end=False)
        await asyncio.sleep(3600)

    async with Engine(hang) as engine:
        b = backend(engine.port)
        stream = await b.forward("/v1/chat/completions", {"model": "m", "stream": True})
        chunks = stream.chunks
        assert await chunks.__anext__() == token(0)
        b._state = State.DEAD
        b._message = "vllm exited with code -9"
        await b._close_active()  # what the process watcher and the health probe do
        with pytest.raises(OpenAIError) as info:
            await chunks.__anext__()
        assert info.value.status == 503 and "vllm exited with code -9" in info.value.message


async def test_unreachable_engine_is_503() -> None:
    async with Engine(streaming_engine) as engine:
        port = engine.port
    with pytest.raises(OpenAIError) as info:
        await backend(port).forward("/v1/chat/completions", {"model": "m", "stream": True})
    assert info.value.status == 503 and info.value.retry_after


# -- the relay over the connection protocol: flow control and the idle timeout ------------------


def _sse_response(conn: _Conn) -> EngineResponse:
    conn.data_received(HEAD["chunked"])
    return EngineResponse(EnginePool("127.0.0.1", 9), conn)


async def test_a_slow_consumer_stops_the_engine_socket_being_read_until_it_catches_up() -> None:
    conn = _conn()
    transport = conn.transport
    assert isinstance(transport, _Transport)
    usage = Usage()
    relay = relay_response(_sse_response(conn), usage, keep_usage=False)
    big = b"data: " + b"x" * 60_000 + b"\n\n"
    fed = 0
    while not transport.paused:
        conn.data_received(chunked(big)[:-5])  # whole chunks, without the last-chunk marker
        fed += 1
        assert fed * len(big) <= HIGH_WATER + len(big), "reading never paused"
    got = 0
    while transport.paused:
        assert len(await relay.__anext__()) == len(big)
        got += 1
    assert (fed - got) * len(big) < LOW_WATER  # read again once the queue is below the low mark
    conn.data_received(chunked(b"data: [DONE]\n\n"))
    rest = [p async for p in relay]
    assert got + len(rest) == fed and usage.completion_tokens == fed
    assert transport.closed is False  # a complete answer: the connection went back to the pool


async def test_a_stream_the_engine_stops_feeding_ends_with_a_timeout_error_event() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
        writer.write(sse_head())
        await write_chunks(writer, token(0), end=False)
        await asyncio.sleep(0.1)
        await write_chunks(writer, token(1), end=False)  # the timer restarts with every read
        if await reader.read(1) == b"":  # then nothing, until the shim gives up and closes
            engine.client_closed.set()

    async with Engine(stall) as engine:
        b = backend(engine.port)
        b.idle_timeout = 0.3
        stream = await b.forward("/v1/chat/completions", {"model": "m", "stream": True})
        got: list[bytes] = []
        with pytest.raises(OpenAIError) as info:
            async for c in stream.chunks:
                got.append(c)  # type: ignore[arg-type]
        assert got == [token(0), token(1)]
        assert info.value.status == 504 and info.value.code == "engine_stream_timeout"
        assert IDLE_TIMEOUT_ENV in info.value.message
        await asyncio.wait_for(engine.client_closed.wait(), 10)


def test_the_idle_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(IDLE_TIMEOUT_ENV, raising=False)
    assert idle_timeout_from_env() == 300.0
    monkeypatch.setenv(IDLE_TIMEOUT_ENV, "0")
    assert idle_timeout_from_env() == 0.0
    for bad in ("soon", "-1"):
        monkeypatch.setenv(IDLE_TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=IDLE_TIMEOUT_ENV):
            idle_timeout_from_env()


async def test_a_header_timeout_on_a_reused_connection_does_not_send_the_request_again() -> None:
    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          request: dict[str, Any]) -> None:
        if len(engine.requests) == 1:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
        # later requests: accepted and never answered (a wedged engine)

    async with Engine(answer_once) as engine:
        pool = EnginePool("127.0.0.1", engine.port)
        assert await (await pool.request("GET", "/health")).read() == b"ok"
        with pytest.raises(asyncio.TimeoutError):
            await pool.request("GET", "/health", timeout=0.2)
        await asyncio.sleep(0.1)
        assert len(engine.requests) == 2 and engine.connections == 1  # sent once, on the reused connection
        await pool.close()


# -- SSE by the spec: every form of event end, fields passed through -------------------------------


FORMS = {
    "lf": b"\n",
    "crlf": b"\r\n",
    "cr": b"\r",
}


def _form_event(i: int, eol: bytes) -> bytes:
    """One event in the ``eol`` line-ending form, with a comment, id, event and two data lines."""
    payload = json.dumps({"id": "c1", "object": "chat.completion.chunk",
                          "choices": [{"index": 0, "delta": {"content": f"w{i} "}}]}).encode()
    lines = [b": a comment", b"id: %d" % i, b"event: message", b"data: " + payload[:10], b"data:" + payload[10:]]
    return eol.join(lines) + eol + eol


@pytest.mark.parametrize("eol", list(FORMS.values()), ids=list(FORMS))
async def test_every_line_ending_form_cuts_events_and_keeps_their_fields(eol: bytes) -> None:
    events = [_form_event(i, eol) for i in range(3)]
    usage = b"data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}).encode()
    whole = b"".join(events) + usage + eol + eol + b"data: [DONE]" + eol + eol
    out, stats = await collect([whole[:7], whole[7:40], whole[40:]], keep_usage=False)
    assert b"".join(out) == b"".join(events)  # byte for byte; usage (not asked for) and [DONE] dropped
    assert (stats.prompt_tokens, stats.completion_tokens, stats.done, stats.events) == (7, 3, True, 3)
    assert split_events(b"".join(events)) == events
    assert json.loads(event_data(events[1]).replace(b"\n", b""))["choices"][0]["delta"]["content"] == "w1 "


async def test_a_crlf_split_between_reads_is_not_taken_for_two_line_ends() -> None:
    out, _ = await collect([b"data: a\r", b"\ndata: b\r\n", b"\r\n"], keep_usage=True)
    assert out == [b"data: a\r\ndata: b\r\n\r\n"]


@pytest.mark.parametrize("eol", list(FORMS.values()), ids=list(FORMS))
async def test_the_client_gets_each_event_as_the_engine_sends_it(eol: bytes) -> None:
    """The engine sends the next event only once the consumer has the previous one: a relay that
    waited for the end of the stream (or for a "\\n\\n") would hang here."""
    received = asyncio.Event()

    async def lockstep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
        writer.write(sse_head())
        for i in range(4):
            received.clear()
            await write_chunks(writer, _form_event(i, eol), end=False)
            await received.wait()
        await write_chunks(writer, b"data: [DONE]" + eol + eol)

    async with Engine(lockstep) as engine:
        stream = await backend(engine.port).forward("/v1/chat/completions", {"model": "m", "stream": True})
        got = []
        async for piece in stream.chunks:
            got.append(piece)
            received.set()
        assert got == [_form_event(i, eol) for i in range(4)]


async def test_a_read_holding_a_whole_answer_keeps_every_event_before_usage_and_done() -> None:
    tokens = b"".join(token(i) for i in range(300))
    for keep_usage in (False, True):
        out, stats = await collect([tokens + USAGE + DONE + token(999)], keep_usage=keep_usage)
        assert b"".join(out) == tokens + (USAGE if keep_usage else b"")
        assert (stats.events, stats.completion_tokens, stats.done) == (300 + keep_usage, 3, True)
    # the same with CRLF line ends: cut event by event
    crlf = tokens.replace(b"\n", b"\r\n")
    out, stats = await collect([crlf + USAGE.replace(b"\n", b"\r\n") + DONE], keep_usage=False)
    assert b"".join(out) == crlf and stats.done and stats.completion_tokens == 3
