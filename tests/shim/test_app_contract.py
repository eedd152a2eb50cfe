"""What ``create_app`` does for every backend (``backends/base.py``'s contract), over real HTTP.

The backend here is a scripted implementation of the ``Backend`` interface
that yields dict chunks the way in-process backends do; it records what the
app did to it (closed streams, cancelled calls), which is what these tests
measure. The app runs in a real uvicorn server on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from shimproc import sse_events, wait_until

from modelplane.shim.app import create_app
from modelplane.shim.backends.base import Backend, BackendError, Health, State, Stream, Usage
from modelplane.shimargs import ShimArgs

SERVED = "scripted"


class ScriptedBackend(Backend):
    """Answers by the first message's content; counts what the app does to its streams."""

    capabilities = frozenset({"chat", "completions", "rerank"})

    def __init__(self, args: ShimArgs, *, fail_start: str | None = None) -> None:
        super().__init__(args)
        self.release = threading.Event()
        self.release.set()
        self.fail_start = fail_start
        self.state = State.LOADING
        self.closed = 0
        self.cancelled = 0
        self.stopped = False

    async def start(self) -> None:
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        if self.fail_start:
            raise RuntimeError(self.fail_start)
        self.state = State.READY

    async def stop(self) -> None:
        self.stopped = True

    def health(self) -> Health:
        return Health(self.state)

    async def chat(self, body: dict[str, Any]) -> dict[str, Any] | Stream:
        script = body["messages"][0]["content"]
        if not body.get("stream"):
            if script == "slow":
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    self.cancelled += 1
                    raise
            if script == "busy":
                raise BackendError("my queue is full", status=429, type="rate_limit_error", code="busy",
                                   retry_after=2.5)
            return {"id": "x", "object": "chat.completion", "created": 1, "model": "internal",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
        usage = Usage()
        return Stream(self._chunks(script, usage), usage)

    async def _chunks(self, script: str, usage: Usage) -> AsyncIterator[dict[str, Any]]:
        def chunk(content: str, reason: str | None = None) -> dict[str, Any]:
            return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "internal",
                    "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": reason}]}

        try:
            if script == "slow":
                while True:
                    yield chunk("tick ")
                    await asyncio.sleep(0.01)
            yield chunk("a")
            yield chunk("b")
            if script == "backend-error":
                raise BackendError("the model fell over", status=500, type="server_error", code="boom")
            if script == "crash":
                raise RuntimeError("secret internal detail")
            yield chunk("", "stop")
            usage.prompt_tokens, usage.completion_tokens = 3, 2
            if script == "with-usage":
                yield {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "internal",
                       "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
        finally:
            self.closed += 1

    async def rerank(self, body: dict[str, Any]) -> dict[str, Any]:
        scores = [len(set(body["query"].split()) & set(d.split())) for d in body["documents"]]
        return {"results": [{"index": i, "relevance_score": s} for i, s in enumerate(scores)],
                "usage": {"prompt_tokens": 7}}


class ServerThread:
    def __init__(self, app: Any, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base_url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_until(lambda: self.server.started, "uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def _args(port: int) -> ShimArgs:
    return ShimArgs(engine="transformers", model="/m", served_model_name=SERVED, port=port)


@pytest.fixture(scope="module")
def served(free_port_factory) -> Iterator[tuple[ServerThread, ScriptedBackend]]:
    port = free_port_factory()
    backend = ScriptedBackend(_args(port))
    with ServerThread(create_app(backend, _args(port)), port) as server:
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
    backend = ScriptedBackend(_args(port))
    backend.release.clear()
    with ServerThread(create_app(backend, _args(port)), port) as server:
        r = httpx.get(server.base_url + "/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = httpx.post(server.base_url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
        assert r.headers["Retry-After"] == "5"
        backend.release.set()
        wait_until(lambda: httpx.get(server.base_url + "/health").status_code == 200, "ready")
    assert backend.stopped

    port = free_port_factory()
    broken = ScriptedBackend(_args(port), fail_start="weights not found at /m")
    with ServerThread(create_app(broken, _args(port)), port) as server:
        wait_until(lambda: httpx.get(server.base_url + "/health").json()["status"] == "dead", "dead")
        body = httpx.get(server.base_url + "/health").json()
        assert body["error"]["message"] == "engine failed to start: weights not found at /m"
        r = httpx.post(server.base_url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"


def test_several_apps_in_one_process_have_their_own_metrics(free_port_factory) -> None:
    a = create_app(ScriptedBackend(_args(1)), _args(1))
    b = create_app(ScriptedBackend(_args(2)), _args(2))
    assert a.state.metrics.registry is not b.state.metrics.registry
