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
