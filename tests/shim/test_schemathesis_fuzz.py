"""Property-based fuzzing of the shim's and the gateway's HTTP API with schemathesis, from the OpenAPI schema
the shim publishes (``/openapi.json``: its request models, turnout.shim.protocol).

schemathesis generates, per operation, requests that fit the schema and requests that break it (wrong
types, missing fields, out-of-range numbers, unicode), and the test sends each over real HTTP to a real
uvicorn server: the shim with the scripted backend, and the gateway in front of that shim (the gateway
publishes no schema of its own: it serves the same routes and forwards the bodies). Every answer must be
below 500, come within the request timeout (no hang), and an error must be the OpenAI envelope.

The number of examples per operation is ``TURNOUT_FUZZ_EXAMPLES`` (default 25, the CI budget; a volume run:
``TURNOUT_FUZZ_EXAMPLES=2000 pytest tests/shim/test_schemathesis_fuzz.py``). Every answer is counted in the
figures (tests/figures.py).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from scripted import ScriptedBackend, ServerThread, scripted_args
from shimproc import wait_until

from figures import record
from turnout.gateway.app import GatewayApp
from turnout.gateway.source import StaticModel, StaticSource
from turnout.shim.app import create_app

EXAMPLES = int(os.environ.get("TURNOUT_FUZZ_EXAMPLES", "25"))
TIMEOUT = 30
seen: dict[str, Counter[int]] = {"shim": Counter(), "gateway": Counter()}


@pytest.fixture(scope="module")
def servers(free_port_factory) -> Iterator[dict[str, str]]:
    shim_port, gateway_port = free_port_factory(), free_port_factory()
    with ServerThread(create_app(ScriptedBackend(scripted_args(shim_port)), scripted_args(shim_port)),
                      shim_port) as shim:
        wait_until(lambda: httpx.get(shim.base_url + "/health").status_code == 200, "the shim ready")
        # The scripted shim serves any model name it is asked for; the gateway routes by the body's model: the
        # fuzzer's model names are unknown to it (404 envelope) unless they are "m", which reaches the shim.
        gateway_app = GatewayApp(StaticSource([StaticModel("m", "127.0.0.1", shim_port)]))
        with ServerThread(gateway_app, gateway_port) as gateway:
            yield {"shim": shim.base_url, "gateway": gateway.base_url}
    for name, counts in seen.items():
        if counts:
            record(f"fuzz_schemathesis_{name}", {"requests": sum(counts.values()),
                                                 "statuses": {str(k): v for k, v in sorted(counts.items())},
                                                 "5xx": sum(v for k, v in counts.items() if k >= 500),
                                                 "examples_per_operation": EXAMPLES})


def _published_schema() -> dict[str, Any]:
    """What the shim serves at /openapi.json (the app builds it; nothing is started here)."""
    return create_app(ScriptedBackend(scripted_args(0)), scripted_args(0)).openapi()


schema = schemathesis.openapi.from_dict(_published_schema())


def _check(response: Any) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def _stream_safe(case: Any) -> bool:
    """The scripted backend streams forever for the script "slow": not a fuzzing input."""
    body = case.body if isinstance(case.body, dict) else None
    messages = body.get("messages") if body else None
    return not (isinstance(messages, list) and messages and isinstance(messages[0], dict)
                and messages[0].get("content") == "slow")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_the_shim_answers_every_generated_request_below_500_in_the_envelope(case: Any, servers) -> None:
    if not _stream_safe(case):
        return
    response = case.call(base_url=servers["shim"], timeout=TIMEOUT)
    seen["shim"][response.status_code] += 1
    _check(response)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_the_gateway_answers_every_generated_request_below_500_in_the_envelope(case: Any, servers) -> None:
    if not _stream_safe(case):
        return
    if isinstance(case.body, dict) and case.path.startswith("/v1/") and case.method == "POST" and _coin(case):
        case.body["model"] = "m"  # half the object bodies name the gateway's model and reach the shim behind it
    response = case.call(base_url=servers["gateway"], timeout=TIMEOUT)
    seen["gateway"][response.status_code] += 1
    _check(response)


def _coin(case: Any) -> bool:
    return hash(repr(case.body)) % 2 == 0


def test_a_body_that_trickles_is_answered_408(free_port_factory, monkeypatch) -> None:
    """Slowloris against the shim: a body sent a byte at a time gets 408 in the envelope once
    ``TURNOUT_BODY_TIMEOUT_SECONDS`` passes, and the shim serves others meanwhile."""
    import socket
    import threading
    import time

    monkeypatch.setenv("TURNOUT_BODY_TIMEOUT_SECONDS", "1")
    port = free_port_factory()
    answers: list[tuple[bytes, float]] = []

    def slow() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            start = time.monotonic()
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         b"content-length: 5000\r\n\r\n{")
            sock.settimeout(0.2)
            data = b""
            for _ in range(60):
                try:
                    sock.sendall(b" ")
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    if b"\r\n\r\n" in data and data.rstrip().endswith(b"}"):
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
            answers.append((data, time.monotonic() - start))

    with ServerThread(create_app(ScriptedBackend(scripted_args(port)), scripted_args(port)), port) as shim:
        wait_until(lambda: httpx.get(shim.base_url + "/health").status_code == 200, "the shim ready")
        threads = [threading.Thread(target=slow) for _ in range(20)]
        for t in threads:
            t.start()
        assert httpx.get(shim.base_url + "/health", timeout=5).status_code == 200
        for t in threads:
            t.join(20)
    assert len(answers) == 20
    for data, seconds in answers:
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), data[:200]
        assert b'"request_timeout"' in body and seconds < 5
    record("slowloris_shim", {"connections": 20, "body_timeout_s": 1.0,
                              "answered_408_within_s": round(max(s for _, s in answers), 2)})
