"""The shim with a real engine (llama.cpp on the tiny GGUF) against hostile requests, and its API key.

``tests/shim/test_shim_fuzz.py`` fuzzes the app with a scripted backend and
``tests/shim/test_shim_errors.py`` checks each status code against the stand-in
engine; here the same bad input goes to a real engine, where huge ``n`` or
``max_tokens`` could cost real memory or time if they got through.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

import httpx
import pytest
from shimproc import RunningShim

from turnout.shim import middleware
from turnout.shim.metrics import ShimMetrics

pytestmark = pytest.mark.slow

KEY = "sk-reliability-5c0ffee-0123456789abcdef"
MSG = [{"role": "user", "content": "Hello"}]
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def shim(start_shim, tiny_model: Any) -> RunningShim:
    return start_shim(engine="llama.cpp", model=str(tiny_model.gguf_path), served="tiny", api_key=KEY,
                      engine_args={"n_ctx": 256},
                      env={"TURNOUT_LOG_LEVEL": "DEBUG", "TURNOUT_ACCESS_LOG": "1"})


def _envelope(r: httpx.Response) -> dict[str, Any]:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    return body["error"]


BAD = [
    ("huge n", {"messages": MSG, "n": 10**9}),
    ("n as big as json allows", {"messages": MSG, "n": 2**70}),
    ("negative n", {"messages": MSG, "n": -1}),
    ("huge max_tokens", {"messages": MSG, "max_tokens": 10**12}),
    ("negative max_tokens", {"messages": MSG, "max_tokens": -5}),
    ("messages wrong type", {"messages": "Hello"}),
    ("content wrong type", {"messages": [{"role": "user", "content": 42}]}),
    ("temperature wrong type", {"messages": MSG, "temperature": "hot"}),
    ("stream wrong type", {"messages": MSG, "stream": {"on": True}}),
    ("stop list of numbers", {"messages": MSG, "stop": [1, 2]}),
    ("prompt over the context", {"messages": [{"role": "user", "content": "word " * 2000}], "max_tokens": 1}),
]


@pytest.mark.parametrize("body", [b for _, b in BAD], ids=[n for n, _ in BAD])
def test_bad_requests_get_a_4xx_envelope_from_a_real_engine(shim: RunningShim, body: dict[str, Any]) -> None:
    with shim.http() as h:
        _envelope(h.post(CHAT, json=body))
        # and the engine is still fine afterwards
        ok = h.post(CHAT, json={"messages": MSG, "max_tokens": 2})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("raw", [b"\xff\xfe{", b'{"messages": [{"role": "user", "content": "\xc3\x28"}]}',
                                 b'{"messages": ', b"\x00" * 64], ids=["bom", "bad-utf8-in-string", "truncated", "nul"])
def test_invalid_bytes_get_400(shim: RunningShim, raw: bytes) -> None:
    with shim.http() as h:
        err = _envelope(h.post(CHAT, content=raw, headers={"content-type": "application/json"}))
    assert err["type"] == "invalid_request_error"


def test_unknown_fields_are_ignored_and_the_answer_is_bounded(shim: RunningShim) -> None:
    with shim.http() as h:
        r = h.post(CHAT, json={"messages": MSG, "max_tokens": 3, "frobnicate": {"x": [1, 2]}, "n_gpu_layers": 99})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 3


def test_max_tokens_past_the_context_is_bounded_by_the_context(shim: RunningShim) -> None:
    """llama.cpp stops at its context (n_ctx=256 here): a large max_tokens costs nothing extra."""
    with shim.http() as h:
        r = h.post(CHAT, json={"messages": MSG, "max_tokens": 100_000, "temperature": 1.0, "seed": 1})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= 256


def test_the_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The middleware checks the Bearer token with hmac.compare_digest (constant time), never ``==``."""
    assert middleware.hmac is hmac
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(middleware.hmac, "compare_digest", spy)
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    inner = Starlette(routes=[Route("/v1/models", lambda _: PlainTextResponse("ok"))])
    app = middleware.ShimMiddleware(inner, metrics=ShimMetrics("llama.cpp", "tiny", "llm"), api_key=KEY,
                                    max_body_bytes=1024, max_queue=4)
    with TestClient(app) as client:
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {KEY[:-1]}x"}).status_code == 401
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert len(calls) == 2


def test_the_key_never_appears_in_the_log_even_at_debug_with_access_log(shim: RunningShim) -> None:
    with shim.http() as h:
        assert h.post(CHAT, json={"messages": MSG, "max_tokens": 1}).status_code == 200
        h.post(CHAT, content=b"{", headers={"content-type": "application/json"})
    for wrong in (KEY[:-1], KEY + "x", KEY.upper()):
        r = httpx.post(shim.base_url + CHAT, json={"messages": MSG}, headers={"Authorization": f"Bearer {wrong}"})
        assert _envelope(r)["code"] == "invalid_api_key"
        assert KEY not in r.text and wrong not in r.text
    assert httpx.post(shim.base_url + CHAT, json={"messages": MSG}).status_code == 401
    log = shim.log()
    assert '"POST /v1/chat/completions HTTP/1.1" 401' in log  # access log on, and still clean
    assert KEY not in log and KEY[:-1] not in log
    assert KEY not in shim.metrics()
    assert KEY not in " ".join(json.dumps(a) for a in shim.proc.args)  # a file path on the command line
