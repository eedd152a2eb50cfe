"""Fuzzing the shim's HTTP API with hypothesis: never a 5xx, never a hang, every error in the envelope.

Bodies are arbitrary JSON, the request models' fields with arbitrary
values, or arbitrary bytes (invalid UTF-8 included). The app runs on a real
uvicorn server with the scripted backend, so what is exercised is the
shim's own validation and error handling.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scripted import ScriptedBackend, ServerThread, scripted_args
from shimproc import wait_until

from turnout.shim.app import create_app

ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank"]
FIELDS = ["model", "messages", "prompt", "input", "query", "documents", "max_tokens", "max_completion_tokens",
          "temperature", "top_p", "stop", "seed", "n", "stream", "stream_options", "tools", "response_format",
          "top_n", "return_documents", "encoding_format", "logprobs", "top_logprobs", "echo"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "x"]),
                                           "content": st.text(max_size=20) | json_values}), max_size=3)
bodies = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
    st.fixed_dictionaries({"messages": messages},
                          optional={k: json_values for k in ("max_tokens", "n", "stop", "stream", "temperature")}),
)

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def base_url(free_port_factory) -> Iterator[str]:
    port = free_port_factory()
    with ServerThread(create_app(ScriptedBackend(scripted_args(port)), scripted_args(port)), port) as server:
        wait_until(lambda: httpx.get(server.base_url + "/health").status_code == 200, "ready")
        yield server.base_url


def _check(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert isinstance(body["error"]["message"], str)


@SETTINGS
@given(endpoint=st.sampled_from(ENDPOINTS), body=bodies)
def test_json_bodies(base_url: str, endpoint: str, body: Any) -> None:
    # a stream that never ends would hang the fuzzer: the scripted backend streams forever only for "slow"
    if isinstance(body, dict) and body.get("messages") and "slow" in json.dumps(body):
        return
    _check(httpx.post(base_url + endpoint, content=json.dumps(body), timeout=30,
                      headers={"content-type": "application/json"}))


@SETTINGS
@given(endpoint=st.sampled_from(ENDPOINTS), raw=st.binary(max_size=200))
def test_raw_bytes(base_url: str, endpoint: str, raw: bytes) -> None:
    _check(httpx.post(base_url + endpoint, content=raw, timeout=30, headers={"content-type": "application/json"}))


@SETTINGS
@given(path=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="?#%"),
                    max_size=30),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
def test_any_path_and_method(base_url: str, path: str, method: str) -> None:
    _check(httpx.request(method, base_url + "/" + path.lstrip("/"), timeout=30))
