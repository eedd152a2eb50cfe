"""The gateway's faults at the edges of a stream: its own graceful stop (SIGTERM), a model pod dying
mid-stream, and a pod that refuses connections — never a hang, never a cut without an error event.

The stop is uvicorn's own (``should_exit``, what its SIGTERM handler sets) on a
:class:`~turnout.gateway.drain.GracefulServer` with a short grace.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from gwkit import Upstream

from figures import record
from turnout.gateway.app import GatewayApp
from turnout.gateway.drain import GracefulServer
from turnout.gateway.server import config
from turnout.gateway.source import StaticModel, StaticSource

GRACE = 1.5


def _events(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]


async def _stream(client: httpx.AsyncClient, url: str, max_tokens: int) -> tuple[int, list[str]]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": max_tokens}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        text = (await resp.aread()).decode()
    return resp.status_code, _events(text)


async def _gateway(source: StaticSource, port: int) -> tuple[GracefulServer, asyncio.Task[Any]]:
    app = GatewayApp(source)
    server = GracefulServer(config(app, "127.0.0.1", port, log_level="warning", grace=GRACE), app.drain)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the gateway stopped while starting"
        await asyncio.sleep(0.01)
    return server, task


async def test_sigterm_lets_short_streams_finish_and_ends_long_ones_with_an_error_event(
        start_server, free_port_factory) -> None:
    upstream_port, port = await start_server(Upstream("up", delay=0.02)), free_port_factory()
    server, task = await _gateway(StaticSource([StaticModel("m", "127.0.0.1", upstream_port)]), port)
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=30) as client:
        short = asyncio.create_task(_stream(client, url, 20))  # 0.4 s: within the grace
        long = asyncio.create_task(_stream(client, url, 10**6))  # never ends by itself
        await asyncio.sleep(0.2)
        server.should_exit = True  # uvicorn's SIGTERM handler
        stopped = time.monotonic()
        status, events = await asyncio.wait_for(short, GRACE + 2)
        assert status == 200 and events[-1] == "[DONE]" and len(events) == 21
        status, events = await asyncio.wait_for(long, GRACE + 2)
        ended = time.monotonic() - stopped
        assert status == 200 and events[-1] == "[DONE]"
        error = json.loads(events[-2])
        assert error == {"error": {"message": error["error"]["message"], "type": "server_error", "param": None,
                                   "code": "gateway_shutting_down"}}
        assert all("choices" in json.loads(e) for e in events[:-2]) and len(events) > 10
        assert GRACE - 1.0 - 0.3 <= ended <= GRACE + 0.5, ended
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - stopped <= GRACE + 1.0
        try:
            await client.get(f"{url}/healthz", timeout=2)
            raise AssertionError("a stopped gateway still accepts")
        except httpx.ConnectError:
            pass
    record("gateway_sigterm", {"grace_s": GRACE, "long_stream_ended_after_s": round(ended, 2),
                               "short_stream_whole": True})


async def _dying_upstream(events_before: int) -> tuple[asyncio.Server, int]:
    """An engine that answers a stream with ``events_before`` events, then its connection drops (the pod died)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(h.split(b":")[1]) for h in head.lower().split(b"\r\n") if h.startswith(b"content-length"))
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(events_before):
            event = b'data: {"choices":[{"index":0,"delta":{"content":"t%d"}}]}\n\n' % i
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_model_pod_dying_mid_stream_ends_the_stream_with_an_error_event(start_server) -> None:
    engine, engine_port = await _dying_upstream(5)
    try:
        port = await start_server(GatewayApp(StaticSource([StaticModel("m", "127.0.0.1", engine_port)])))
        async with httpx.AsyncClient(timeout=10) as client:
            status, events = await asyncio.wait_for(_stream(client, f"http://127.0.0.1:{port}", 100), 10)
    finally:
        engine.close()
    assert status == 200 and events[-1] == "[DONE]" and len(events) == 7
    assert json.loads(events[-2])["error"]["code"] == "engine_stream_lost"


async def test_requests_to_a_pod_that_refuses_connections_go_to_the_other_replica(
        start_server, free_port) -> None:
    upstream = Upstream("alive")
    alive = await start_server(upstream)
    source = StaticSource([StaticModel("m", "127.0.0.1", alive)])
    app = GatewayApp(source)
    port = await start_server(app)
    # Two replicas: one pod gone (nothing listens on free_port), one serving.
    source.registry.set_endpoints(StaticSource.NAMESPACE, "m", "static", [("127.0.0.1", free_port),
                                                                           ("127.0.0.1", alive)])
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=10) as client:
        answers = await asyncio.gather(*(client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
                                         for _ in range(40)))
    assert [a.status_code for a in answers] == [200] * 40
    assert len(upstream.requests) == 40
    record("gateway_connect_refused_retry", {"requests": 40, "errors": 0})
