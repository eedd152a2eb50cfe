"""Bad input at volume against the gateway: hypothesis bodies (malformed JSON, wrong types, huge and negative
numbers, unicode, arbitrary bytes, any path and method), oversized bodies, slow bodies (slowloris) and a
thousand concurrent streams — never a 5xx, never a hang, every error in the OpenAI envelope, memory flat.

Behind the gateway runs a real shim with the scripted backend (tests/shim/scripted.py), so a body the
gateway forwards is judged by the shim's own validation. ``TURNOUT_FUZZ_EXAMPLES`` sets the hypothesis
examples per test (default 60: about 250 requests for the surface in CI; a volume run:
``TURNOUT_FUZZ_EXAMPLES=5000 pytest tests/gateway/test_gateway_fuzz.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from gwkit import Upstream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scripted import ScriptedBackend, ServerThread, scripted_args
from shimproc import wait_until

from figures import record
from turnout.gateway.app import GatewayApp
from turnout.gateway.source import StaticModel, StaticSource
from turnout.shim.app import create_app

EXAMPLES = int(os.environ.get("TURNOUT_FUZZ_EXAMPLES", "60"))
ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank"]
FIELDS = ["model", "messages", "prompt", "input", "query", "documents", "max_tokens", "temperature", "top_p",
          "stop", "n", "stream", "stream_options", "seed", "top_n"]
MAX_BODY = 64 * 1024
counts: dict[str, int] = {}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
models = st.sampled_from(["m", "m", "unknown", ""]) | st.text(max_size=12) | json_values
bodies = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
    st.fixed_dictionaries({"model": models}, optional={k: json_values for k in FIELDS if k != "model"}),
    st.fixed_dictionaries({"model": st.just("m"), "messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "x"]), "content": st.text(max_size=40)}),
        max_size=3)}, optional={"max_tokens": st.integers(min_value=-(2**70), max_value=2**70),
                                "n": st.integers(min_value=-(2**40), max_value=2**40),
                                "temperature": st.floats(allow_nan=True, allow_infinity=True)}),
)
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def gateway_url(free_port_factory) -> Iterator[str]:
    shim_port, port = free_port_factory(), free_port_factory()
    with ServerThread(create_app(ScriptedBackend(scripted_args(shim_port)), scripted_args(shim_port)),
                      shim_port) as shim:
        wait_until(lambda: httpx.get(shim.base_url + "/health").status_code == 200, "the shim ready")
        app = GatewayApp(StaticSource([StaticModel("m", "127.0.0.1", shim_port)]), max_body_bytes=MAX_BODY)
        with ServerThread(app, port) as gateway:
            yield gateway.base_url
    record("fuzz_hypothesis_gateway", {"requests": sum(counts.values()), "by_test": dict(sorted(counts.items())),
                                       "5xx": 0, "examples_per_test": EXAMPLES})


def _check(r: httpx.Response, test: str) -> None:
    counts[test] = counts.get(test, 0) + 1
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body


def _safe(body: Any) -> bool:
    """The scripted backend streams forever for the script "slow": not a fuzzing input."""
    return "slow" not in json.dumps(body)


@SETTINGS
@given(route=st.sampled_from(ROUTES), body=bodies)
def test_json_bodies(gateway_url: str, route: str, body: Any) -> None:
    if _safe(body):
        _check(httpx.post(gateway_url + route, content=json.dumps(body), timeout=30,
                          headers={"content-type": "application/json"}), "json")


@SETTINGS
@given(route=st.sampled_from(ROUTES), raw=st.binary(max_size=300))
def test_raw_bytes(gateway_url: str, route: str, raw: bytes) -> None:
    _check(httpx.post(gateway_url + route, content=raw, timeout=30), "bytes")


@SETTINGS
@given(route=st.sampled_from(ROUTES), text=st.text(max_size=200))
def test_unicode_that_is_almost_json(gateway_url: str, route: str, text: str) -> None:
    raw = ('{"model": "m", "messages": [{"role": "user", "content": "' + text + '"}]}').encode("utf-8",
                                                                                            "surrogatepass")
    _check(httpx.post(gateway_url + route, content=raw, timeout=30), "unicode")


@SETTINGS
@given(path=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="?#%"),
                    max_size=30),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
def test_any_path_and_method(gateway_url: str, path: str, method: str) -> None:
    _check(httpx.request(method, gateway_url + "/" + path.lstrip("/"), timeout=30), "paths")


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_bodies_get_413(gateway_url: str, chunked: bool) -> None:
    payload = b'{"model": "m", "prompt": "' + b"x" * (MAX_BODY + 10) + b'"}'
    content: Any = iter([payload[i:i + 8192] for i in range(0, len(payload), 8192)]) if chunked else payload
    r = httpx.post(gateway_url + "/v1/completions", content=content, timeout=30)
    _check(r, "oversized")
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


# ----- slow bodies and many connections: in this loop, against a gateway with a short body timeout -------------


async def _slowloris(port: int, declared: int, every: float) -> tuple[bytes, float]:
    """Send the headers, then one byte of the body every ``every`` seconds; what came back and when."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n{" % declared)
    await writer.drain()

    async def trickle() -> None:
        for _ in range(declared):
            await asyncio.sleep(every)
            writer.write(b" ")
            await writer.drain()

    sender = asyncio.create_task(trickle())
    try:
        answer = await asyncio.wait_for(reader.read(65536), 30)
    finally:
        sender.cancel()
        writer.close()
    return answer, time.monotonic() - start


async def test_a_body_that_trickles_is_answered_408_and_does_not_hold_the_gateway(start_server) -> None:
    upstream = await start_server(Upstream("u"))
    port = await start_server(GatewayApp(StaticSource([StaticModel("m", "127.0.0.1", upstream)]), body_timeout=1.0))
    slow = [asyncio.create_task(_slowloris(port, 10_000, 0.2)) for _ in range(200)]
    await asyncio.sleep(0.3)
    async with httpx.AsyncClient(timeout=10) as client:  # the gateway keeps serving meanwhile
        r = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                              json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    answers = await asyncio.gather(*slow)
    for answer, seconds in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:200]
        assert json.loads(body)["error"]["code"] == "request_timeout"
        assert seconds < 5, seconds
    record("slowloris_gateway", {"connections": len(answers), "body_timeout_s": 1.0,
                                 "answered_408_within_s": round(max(s for _, s in answers), 2)})


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def _raw_stream(port: int, payload: bytes) -> bytes:
    """One streamed request on its own connection, read to the end of the answer (a cheap client: the
    test's process also runs the gateway and the upstream)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(payload), payload))
    try:
        return await reader.read(-1)
    finally:
        writer.close()


async def test_a_thousand_concurrent_streams_twice_no_error_and_no_growth(start_server) -> None:
    upstream = await start_server(Upstream("u", delay=0.05))
    port = await start_server(GatewayApp(StaticSource([StaticModel("m", "127.0.0.1", upstream)])))
    payload = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                          "max_tokens": 10}).encode()
    rss = []
    for _ in range(2):
        answers = await asyncio.wait_for(asyncio.gather(*(_raw_stream(port, payload) for _ in range(1000))), 240)
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            assert answer.count(b"data: ") == 11 and b"data: [DONE]" in answer and b'"error"' not in answer
        rss.append(_rss_kib())
    growth = rss[1] - rss[0]
    # The second wave reuses what the first allocated (test process: client, gateway and upstream together).
    assert growth < 16 * 1024, rss
    record("thousand_streams_gateway", {"streams": 1000, "waves": 2, "errors": 0,
                                        "rss_growth_wave2_kib": growth})


def test_no_socket_left_half_open(gateway_url: str) -> None:
    """A client that connects and leaves without a request costs the gateway nothing lasting."""
    for _ in range(50):
        with socket.create_connection(("127.0.0.1", int(gateway_url.rsplit(":", 1)[1]))):
            pass
    _check(httpx.get(gateway_url + "/healthz", timeout=5), "paths")
