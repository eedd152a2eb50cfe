"""What ``create_app`` does for every backend (``backends/base.py``'s contract), over real HTTP.

The backend here is a scripted implementation of the ``Backend`` interface
that yields dict chunks the way in-process backends do; it records what the
app did to it (closed streams, cancelled calls), which is what these tests
measure. The app runs in a real uvicorn server on a free port.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from scripted import SERVED, ScriptedBackend, ServerThread, scripted_args
from shimproc import metric_value, sse_events, wait_until

from turnout.shim.app import create_app
from turnout.shim.backends.base import Health, State


@pytest.fixture(scope="module")
def served(free_port_factory) -> Iterator[tuple[ServerThread, ScriptedBackend]]:
    port = free_port_factory()
    backend = ScriptedBackend(scripted_args(port))
    with ServerThread(create_app(backend, scripted_args(port)), port) as server:
        wait_until(lambda: httpx.get(server.base_url + "/health").status_code == 200, "ready")
        yield server, backend


def _stream(server: ServerThread, script: str, **extra: Any) -> list[bytes]:
    r = httpx.post(server.base_url + "/v1/chat/completions",
                   json={"messages": [{"role": "user", "content": script}], "stream": True, **extra}, timeout=30)
    assert r.status_code == 200, r.text
    return sse_events(r.content)


def test_first_delta_gets_the_role_and_model_is_the_served_name(served) -> None:
    server, _ = served
    events = _stream(server, "plain")
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == b"[DONE]"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    assert "role" not in chunks[1]["choices"][0]["delta"]
    assert {c["model"] for c in chunks} == {SERVED}


def test_usage_chunk_built_when_asked(served) -> None:
    server, _ = served
    events = _stream(server, "plain", stream_options={"include_usage": True})
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["usage"] == {"prompt_tokens": 3, "completion_tokens": 2,
                                                       "total_tokens": 5}
    assert last["model"] == SERVED


def test_backend_usage_chunk_dropped_when_not_asked(served) -> None:
    server, _ = served
    events = _stream(server, "with-usage")
    assert all(json.loads(e)["choices"] for e in events[:-1])
    events = _stream(server, "with-usage", stream_options={"include_usage": True})
    assert sum(1 for e in events[:-1] if json.loads(e).get("usage")) == 1


@pytest.mark.parametrize("script, message", [("backend-error", "the model fell over"),
                                             ("crash", "internal error while streaming: RuntimeError")])
def test_midstream_error_event_then_done(served, script: str, message: str) -> None:
    server, _ = served
    events = _stream(server, script)
    assert events[-1] == b"[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["message"] == message
    assert set(error) == {"message", "type", "param", "code"}
    assert b"secret internal detail" not in b"".join(events)


def test_disconnect_closes_the_backend_stream(served) -> None:
    server, backend = served
    before = backend.closed
    with httpx.Client(base_url=server.base_url, timeout=30) as c, c.stream(
            "POST", "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "slow"}], "stream": True}) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 5:
                break
    wait_until(lambda: backend.closed > before, "the backend's generator to be closed")


def test_disconnect_cancels_a_plain_request(served) -> None:
    server, backend = served
    before = backend.cancelled

    # the client gives up after 0.5 s and closes the connection
    with contextlib.suppress(httpx.TimeoutException):
        httpx.post(server.base_url + "/v1/chat/completions",
                   json={"messages": [{"role": "user", "content": "slow"}]}, timeout=0.5)
    wait_until(lambda: backend.cancelled > before, "the backend call to be cancelled")


def test_backend_error_retry_after(served) -> None:
    server, _ = served
    r = httpx.post(server.base_url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "busy"}]})
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "3"
    assert r.json()["error"]["code"] == "busy"


def test_plain_answer_gets_served_name(served) -> None:
    server, _ = served
    r = httpx.post(server.base_url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.json()["model"] == SERVED


def test_rerank_is_normalised(served) -> None:
    server, _ = served
    docs = ["red fish", "blue fish red", "green"]
    r = httpx.post(server.base_url + "/v1/rerank", json={"query": "red fish", "documents": docs, "top_n": 2})
    out = r.json()
    assert [x["index"] for x in out["results"]] == [0, 1]
    assert out["results"][0] == {"index": 0, "relevance_score": 2.0, "document": {"text": "red fish"}}
    assert out["usage"]["prompt_tokens"] == 7 and out["meta"]["tokens"]["input_tokens"] == 7
    assert out["model"] == SERVED and out["id"]


def test_embeddings_not_served_is_404(served) -> None:
    server, _ = served
    r = httpx.post(server.base_url + "/v1/embeddings", json={"input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unsupported"


def test_openapi_document_lists_the_request_models(served) -> None:
    server, _ = served
    doc = httpx.get(server.base_url + "/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank"):
        assert "requestBody" in doc["paths"][path]["post"]


def test_loading_then_ready_and_start_failure(free_port_factory) -> None:
    port = free_port_factory()
    backend = ScriptedBackend(scripted_args(port))
    backend.release.clear()
    with ServerThread(create_app(backend, scripted_args(port)), port) as server:
        r = httpx.get(server.base_url + "/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        # a liveness probe must not restart a pod that is still loading its model
        assert httpx.get(server.base_url + "/live").json() == {"status": "loading"}
        r = httpx.post(server.base_url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
        assert r.headers["Retry-After"] == "5"
        backend.release.set()
        wait_until(lambda: httpx.get(server.base_url + "/health").status_code == 200, "ready")
    assert backend.stopped

    port = free_port_factory()
    broken = ScriptedBackend(scripted_args(port), fail_start="weights not found at /m")
    with ServerThread(create_app(broken, scripted_args(port)), port) as server:
        wait_until(lambda: httpx.get(server.base_url + "/health").json()["status"] == "dead", "dead")
        body = httpx.get(server.base_url + "/health").json()
        assert body["error"]["message"] == "engine failed to start: weights not found at /m"
        assert httpx.get(server.base_url + "/live").status_code == 503
        r = httpx.post(server.base_url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"


def test_an_engine_that_cannot_serve_calls_on_fatal_once_with_its_error(free_port_factory) -> None:
    # turnout-shim passes on_fatal: it writes the termination message and exits (see test_shim_cli).
    port = free_port_factory()
    said: list[str] = []
    broken = ScriptedBackend(scripted_args(port), fail_start="weights not found at /m")
    with ServerThread(create_app(broken, scripted_args(port), on_fatal=said.append), port):
        wait_until(lambda: said, "on_fatal")
    assert said == ["transformers failed to start: weights not found at /m"]

    # Dead for good after a good start (the engine process exited): the same, within about a second.
    port = free_port_factory()
    said.clear()
    backend = ScriptedBackend(scripted_args(port))
    with ServerThread(create_app(backend, scripted_args(port), on_fatal=said.append), port) as server:
        wait_until(lambda: httpx.get(server.base_url + "/health").status_code == 200, "ready")
        backend.death = Health(State.DEAD, "vllm exited with code 1", final=True)
        wait_until(lambda: said, "on_fatal", deadline_s=5)
    assert said == ["vllm exited with code 1"]

    # Dead but possibly back (a wedged engine): left to the liveness probe, the shim stays up.
    port = free_port_factory()
    said.clear()
    backend = ScriptedBackend(scripted_args(port))
    with ServerThread(create_app(backend, scripted_args(port), on_fatal=said.append), port) as server:
        wait_until(lambda: httpx.get(server.base_url + "/health").status_code == 200, "ready")
        backend.state = State.DEAD
        wait_until(lambda: httpx.get(server.base_url + "/health").status_code == 503, "dead")
        time.sleep(1.5)
    assert said == []


def test_several_apps_in_one_process_have_their_own_metrics(free_port_factory) -> None:
    a = create_app(ScriptedBackend(scripted_args(1)), scripted_args(1))
    b = create_app(ScriptedBackend(scripted_args(2)), scripted_args(2))
    assert a.state.metrics.registry is not b.state.metrics.registry


# -- the POST routes (routes.py: one raw-ASGI handler each) ----------------------------------------


def _metrics(server: ServerThread) -> str:
    return httpx.get(server.base_url + "/metrics").text


def test_streamed_answer_headers_and_metrics(served) -> None:
    server, _ = served
    before = _metrics(server)
    r = httpx.post(server.base_url + "/v1/chat/completions",
                   json={"messages": [{"role": "user", "content": "plain"}], "stream": True}, timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
    assert r.content.endswith(b"data: [DONE]\n\n") and r.content.count(b"[DONE]") == 1
    after = _metrics(server)
    ep = "/v1/chat/completions"
    for name, labels, grew_by in [("turnout_requests_total", {"endpoint": ep, "status": "200"}, 1),
                                  ("turnout_time_to_first_token_seconds_count", {"endpoint": ep}, 1),
                                  ("turnout_completion_tokens_total", {"endpoint": ep}, 2),
                                  ("turnout_prompt_tokens_total", {"endpoint": ep}, 3)]:
        assert metric_value(after, name, **labels) - metric_value(before, name, **labels) == grew_by, name
    assert metric_value(after, "turnout_requests_cancelled_total", endpoint=ep) == \
        metric_value(before, "turnout_requests_cancelled_total", endpoint=ep)
    assert metric_value(after, "turnout_requests_in_flight") == 0


def test_disconnect_mid_stream_is_counted_as_cancelled(served) -> None:
    server, backend = served
    ep = "/v1/chat/completions"
    before = metric_value(_metrics(server), "turnout_requests_cancelled_total", endpoint=ep)
    closed = backend.closed
    with httpx.Client(base_url=server.base_url, timeout=30) as c, c.stream(
            "POST", ep, json={"messages": [{"role": "user", "content": "slow"}], "stream": True}) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 3:
                break
    wait_until(lambda: backend.closed > closed, "the backend's generator to be closed")
    wait_until(lambda: metric_value(_metrics(server), "turnout_requests_cancelled_total", endpoint=ep)
               == before + 1, "the cancelled counter")
    wait_until(lambda: metric_value(_metrics(server), "turnout_requests_in_flight") == 0, "no request in flight")


def test_chunked_request_body_is_read_whole(served) -> None:
    server, _ = served
    body = json.dumps({"messages": [{"role": "user", "content": "plain"}], "stream": True}).encode()

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(body), 7):
            yield body[i:i + 7]

    r = httpx.post(server.base_url + "/v1/chat/completions", content=pieces(), timeout=30)
    assert r.status_code == 200 and b"[DONE]" in r.content


def test_plain_answers_and_unsupported_routes(served) -> None:
    server, _ = served
    r = httpx.post(server.base_url + "/v1/chat/completions",
                   json={"messages": [{"role": "user", "content": "plain"}]}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json()["model"] == SERVED and int(r.headers["content-length"]) == len(r.content)
    # the scripted backend serves no completions: the 404 envelope
    r = httpx.post(server.base_url + "/v1/completions", json={"prompt": "x"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unsupported"


def test_a_cancelled_plain_call_and_a_bad_body_on_every_route(served) -> None:
    server, backend = served
    ep = "/v1/chat/completions"
    before = metric_value(_metrics(server), "turnout_requests_cancelled_total", endpoint=ep)
    cancelled = backend.cancelled
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + ep, json={"messages": [{"role": "user", "content": "slow"}]}, timeout=0.5)
    wait_until(lambda: backend.cancelled > cancelled, "the backend call to be cancelled")
    wait_until(lambda: metric_value(_metrics(server), "turnout_requests_cancelled_total", endpoint=ep)
               == before + 1, "the cancelled counter")
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank"):
        r = httpx.post(server.base_url + path, json={"n": "x"}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", path
        assert httpx.get(server.base_url + path).status_code == 405
