"""Every error the shim answers: status code and the OpenAI envelope, over a real server."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest
from shimproc import RunningShim, metric_value, wait_until

pytestmark = pytest.mark.slow

KEY = "sk-test-1234567890"
MSG = [{"role": "user", "content": "hi"}]
BODY_LIMIT = 65536


def assert_envelope(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


@pytest.fixture(scope="module")
def shim(start_shim_factory) -> RunningShim:
    return start_shim_factory(api_key=KEY, env={"TURNOUT_MAX_BODY_BYTES": str(BODY_LIMIT)})


@pytest.fixture
def http(shim: RunningShim):
    with shim.http() as client:
        yield client


# -- 401 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": f"Basic {KEY}"}])
def test_401_without_a_valid_key(shim: RunningShim, headers: dict) -> None:
    r = httpx.post(shim.base_url + "/v1/chat/completions", json={"messages": MSG}, headers=headers)
    err = assert_envelope(r, 401, "invalid_api_key")
    assert err["type"] == "authentication_error"
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert KEY not in r.text


def test_401_through_the_openai_client(shim: RunningShim) -> None:
    client = openai.OpenAI(base_url=shim.base_url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_health_and_metrics_need_no_key(shim: RunningShim) -> None:
    assert httpx.get(shim.base_url + "/health").status_code == 200
    assert httpx.get(shim.base_url + "/metrics").status_code == 200
    assert httpx.get(shim.base_url + "/live").status_code == 200


def test_key_never_logged(shim: RunningShim) -> None:
    shim.openai().chat.completions.create(model="standin-chat", messages=MSG, max_tokens=1)
    httpx.get(shim.base_url + "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert KEY not in shim.log()
    assert KEY not in shim.metrics()


# -- 400 ------------------------------------------------------------------------------------


def test_400_malformed_json(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"})
    err = assert_envelope(r, 400)
    assert "not valid JSON" in err["message"]


def test_400_json_sent_as_form_is_still_json(http: httpx.Client) -> None:
    # curl -d sends application/x-www-form-urlencoded; the body is JSON all the same
    r = http.post("/v1/chat/completions", content=json.dumps({"messages": MSG, "max_tokens": 1}),
                  headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text


def test_400_invalid_utf8(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", content=b'{"messages": "\xff\xfe"}',
                  headers={"content-type": "application/json"})
    assert_envelope(r, 400)


@pytest.mark.parametrize("body, param", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": MSG, "temperature": -1}, "temperature"),
    ({"messages": MSG, "top_p": 1.5}, "top_p"),
    ({"messages": MSG, "n": 100000}, "n"),
    ({"messages": MSG, "max_tokens": 0}, "max_tokens"),
    ({"messages": MSG, "max_tokens": "many"}, "max_tokens"),
    ({"messages": MSG, "stream": "yes please"}, "stream"),
    ({"messages": [{"content": "no role"}]}, "messages.0.role"),
])
def test_400_invalid_parameters(http: httpx.Client, body: dict, param: str) -> None:
    err = assert_envelope(http.post("/v1/chat/completions", json=body), 400, "invalid_request")
    assert err["param"] == param
    assert err["type"] == "invalid_request_error"


def test_400_body_not_an_object(http: httpx.Client) -> None:
    assert_envelope(http.post("/v1/completions", json=[1, 2, 3]), 400)
    assert_envelope(http.post("/v1/completions", content=b"", headers={"content-type": "application/json"}),
                    400)


def test_unknown_fields_are_ignored_by_the_shim(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 1, "x_whatever": {"a": 1}})
    assert r.status_code == 200, r.text


# -- 404 / 405 ------------------------------------------------------------------------------


def test_404_unknown_route(http: httpx.Client) -> None:
    err = assert_envelope(http.get("/v1/engines"), 404, "not_found")
    assert "/v1/engines" in err["message"] and err["type"] == "not_found_error"
    assert assert_envelope(http.get("/nothing/here"), 404, "not_found")["type"] == "not_found_error"
    assert assert_envelope(http.post("/v1/assistants", json={}), 404, "not_found")["type"] == "not_found_error"


def test_404_unknown_model(http: httpx.Client) -> None:
    err = assert_envelope(http.post("/v1/completions", json={"model": "other", "prompt": "x"}), 404,
                          "model_not_found")
    assert err["param"] == "model" and err["type"] == "not_found_error"
    assert assert_envelope(http.get("/v1/models/other"), 404, "model_not_found")["type"] == "not_found_error"


def test_404_endpoint_the_model_does_not_serve(shim: RunningShim, http: httpx.Client) -> None:
    for r in (http.post("/v1/embeddings", json={"input": "x"}),
              http.post("/v1/rerank", json={"query": "q", "documents": ["d"]})):
        err = assert_envelope(r, 404, "unsupported")
        assert err["type"] == "not_found_error" and "(it is an llm model)" in err["message"]
    client = openai.OpenAI(base_url=shim.base_url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError, match="does not serve embeddings"):
        client.embeddings.create(model="standin-chat", input="x")


def test_405_wrong_method(http: httpx.Client) -> None:
    assert_envelope(http.get("/v1/chat/completions"), 405, "method_not_allowed")


# -- 413 ------------------------------------------------------------------------------------


def test_413_by_content_length(http: httpx.Client) -> None:
    big = {"messages": [{"role": "user", "content": "x" * (BODY_LIMIT + 10)}]}
    err = assert_envelope(http.post("/v1/chat/completions", json=big), 413, "request_too_large")
    assert str(BODY_LIMIT) in err["message"]


def test_413_chunked_body_without_length(http: httpx.Client) -> None:
    def chunks():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(BODY_LIMIT // 1024 + 2):
            yield b"y" * 1024
        yield b'"}]}'

    assert_envelope(http.post("/v1/chat/completions", content=chunks(),
                              headers={"content-type": "application/json"}), 413, "request_too_large")


def test_body_just_under_the_limit_is_served(http: httpx.Client) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "z" * (BODY_LIMIT - 200)}], "max_tokens": 1})
    assert len(body) <= BODY_LIMIT
    assert http.post("/v1/chat/completions", content=body).status_code == 200


# -- metrics --------------------------------------------------------------------------------


def test_errors_are_counted_by_status(shim: RunningShim, http: httpx.Client) -> None:
    http.get("/v1/models/other")
    text = shim.metrics()
    assert metric_value(text, "turnout_requests_total", endpoint="other", status="404") >= 1
    assert metric_value(text, "turnout_requests_rejected_total", reason="unauthorized") >= 1
    assert "turnout_requests_total{" in text


# -- 429 ------------------------------------------------------------------------------------


def test_429_with_retry_after_when_the_queue_is_full(start_shim_factory) -> None:
    shim = start_shim_factory(max_queue=2)
    opened = threading.Barrier(3)
    release = threading.Event()
    results: list[int] = []

    def hold_stream() -> None:
        with httpx.Client(base_url=shim.base_url, timeout=60) as c, c.stream(
                "POST", "/v1/chat/completions",
                json={"messages": MSG, "max_tokens": 4000, "stream": True, "standin_delay": 0.01}) as r:
            results.append(r.status_code)
            it = r.iter_lines()
            next(it)
            opened.wait()
            release.wait(60)

    threads = [threading.Thread(target=hold_stream) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        opened.wait(60)
        r = httpx.post(shim.base_url + "/v1/chat/completions", json={"messages": MSG})
        err = assert_envelope(r, 429, "queue_full")
        assert err["type"] == "rate_limit_error"
        assert int(r.headers["Retry-After"]) >= 1
        # health and metrics are outside the queue
        assert httpx.get(shim.base_url + "/health").status_code == 200
        text = shim.metrics()
        assert metric_value(text, "turnout_requests_in_flight") == 2
        assert metric_value(text, "turnout_requests_rejected_total", reason="queue_full") == 1
    finally:
        release.set()
        for t in threads:
            t.join(60)
    assert results == [200, 200]
    # once the streams are gone the queue admits again
    wait_until(lambda: metric_value(shim.metrics(), "turnout_requests_in_flight") == 0,
               "the queue to drain")
    assert shim.openai().chat.completions.create(model="standin-chat", messages=MSG, max_tokens=1)
