"""The proxy path end to end: openai client -> shim (uvicorn) -> SGLang stand-in process.

This is the SGLang contract test: the stand-in follows SGLang's documented
command line and HTTP API (``/health``, ``/get_model_info``, OpenAI routes,
its error and SSE shapes), so the shim's SGLang backend is exercised as it
would be against the real server.
"""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import openai
import pytest
from shimproc import RunningShim, metric_value, pid_alive, sse_events, wait_until

pytestmark = pytest.mark.slow

MSG = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def shim(start_shim_factory) -> RunningShim:
    return start_shim_factory(served="standin-chat", engine_args={"mem_fraction_static": 0.5,
                                                                  "enable_metrics": True,
                                                                  "disable_radix_cache": False})


def test_engine_gets_sglang_command_line(shim: RunningShim) -> None:
    info = httpx.get(f"http://127.0.0.1:{shim.engine_port()}/get_server_info").json()
    assert info["model_path"] == "/models/standin-7b"
    assert info["served_model_name"] == "standin-chat"
    assert info["host"] == "127.0.0.1"
    assert info["device"] == "cpu"
    assert info["tp_size"] == 1
    # engine_args JSON -> SGLang flags; false store_true flags are left out
    assert info["unparsed"] == ["--enable-metrics", "--mem-fraction-static", "0.5"]
    model_info = httpx.get(f"http://127.0.0.1:{shim.engine_port()}/get_model_info").json()
    assert model_info["is_generation"] is True


def test_models_lists_served_name(shim: RunningShim) -> None:
    models = shim.openai().models.list()
    assert [m.id for m in models.data] == ["standin-chat"]
    assert shim.openai().models.retrieve("standin-chat").id == "standin-chat"


def test_chat_completion(shim: RunningShim) -> None:
    r = shim.openai().chat.completions.create(model="standin-chat", messages=MSG, max_tokens=4)
    assert r.model == "standin-chat"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "w0 w1 w2 w3 "
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 4


def test_chat_stream_role_first_and_done_last(shim: RunningShim) -> None:
    with shim.http() as h:
        r = h.post("/v1/chat/completions", json={"model": "standin-chat", "messages": MSG,
                                                 "max_tokens": 3, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.content)
    assert events[-1] == b"[DONE]"
    assert events.count(b"[DONE]") == 1
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["model"] == "standin-chat" for c in chunks)
    # usage was requested from the engine to count tokens but the client did not ask for it
    assert all(c["choices"] for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "w0 w1 w2 "


def test_chat_stream_with_usage_through_openai_client(shim: RunningShim) -> None:
    stream = shim.openai().chat.completions.create(
        model="standin-chat", messages=MSG, max_tokens=5, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "w0 w1 w2 w3 w4 "


def test_completions_plain_and_streamed(shim: RunningShim) -> None:
    client = shim.openai()
    r = client.completions.create(model="standin-chat", prompt="once upon", max_tokens=2)
    assert r.model == "standin-chat"
    assert r.choices[0].text == "w0 w1 "
    pieces = [c.choices[0].text for c in client.completions.create(
        model="standin-chat", prompt="once upon", max_tokens=3, stream=True) if c.choices]
    assert "".join(pieces) == "w0 w1 w2 "


def test_parameters_reach_the_engine(shim: RunningShim) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    r = shim.openai().chat.completions.create(
        model="standin-chat", messages=MSG, max_completion_tokens=6, temperature=0.3, top_p=0.9,
        stop=["w4"], seed=7, n=2, tools=tools, response_format={"type": "json_object"},
        extra_body={"top_k": 5, "chat_template_kwargs": {"enable_thinking": False}})
    body = shim.engine_stats()["last_body"]
    assert body["model"] == "standin-chat"
    assert body["max_completion_tokens"] == 6
    assert body["temperature"] == 0.3 and body["top_p"] == 0.9
    assert body["stop"] == ["w4"] and body["seed"] == 7 and body["n"] == 2
    assert body["tools"] == tools
    assert body["response_format"] == {"type": "json_object"}
    assert body["top_k"] == 5 and body["chat_template_kwargs"] == {"enable_thinking": False}
    assert [c.message.content for c in r.choices] == ["w0 w1 w2 w3 "] * 2
    assert r.choices[0].finish_reason == "stop"


def test_model_omitted_means_served_model(shim: RunningShim) -> None:
    with shim.http() as h:
        r = h.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 1})
    assert r.status_code == 200
    assert r.json()["model"] == "standin-chat"


def test_engine_error_keeps_status_in_envelope(shim: RunningShim) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        shim.openai().chat.completions.create(
            model="standin-chat", messages=[{"role": "user", "content": "[standin:error400]"}])
    err = info.value.body
    assert info.value.status_code == 400
    assert err["message"] == "The engine rejects this prompt (stand-in error)"
    assert err["type"] == "invalid_request_error"
    with shim.http() as h:
        r = h.post("/v1/completions", json={"prompt": "x", "max_tokens": 100000})
    assert r.status_code == 400
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert "context length" in r.json()["error"]["message"]


def test_unknown_model_is_404(shim: RunningShim) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        shim.openai().chat.completions.create(model="gpt-4", messages=MSG)
    assert info.value.body["code"] == "model_not_found"
    assert info.value.body["param"] == "model"
    assert "standin-chat" in info.value.body["message"]


def test_midstream_engine_error_becomes_error_event_then_done(shim: RunningShim) -> None:
    with shim.http() as h:
        r = h.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "[standin:midstream-error]"}],
            "max_tokens": 10, "stream": True})
    events = sse_events(r.content)
    assert events[-1] == b"[DONE]"
    error = json.loads(events[-2])
    assert error["error"]["message"] == "stand-in engine failed mid-stream"
    # the tokens before the error went through
    assert any(b'"w1 "' in e for e in events)


def test_client_disconnect_stops_the_engine_stream(shim: RunningShim) -> None:
    before = shim.engine_stats()
    cancelled_before = metric_value(shim.metrics(), "turnout_requests_cancelled_total",
                                    endpoint="/v1/chat/completions")
    with shim.http() as h, h.stream("POST", "/v1/chat/completions", json={
            "messages": MSG, "max_tokens": 2000, "stream": True, "standin_delay": 0.02}) as r:
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                seen += 1
            if seen >= 3:
                break
    # the client hung up after 3 of 2000 tokens: the engine must see its stream cancelled
    wait_until(lambda: shim.engine_stats()["disconnects"] > before["disconnects"],
               "the engine to see the disconnect")
    after = shim.engine_stats()
    assert after["streams_finished"] == before["streams_finished"]
    assert after["tokens"] - before["tokens"] < 2000
    wait_until(lambda: metric_value(shim.metrics(), "turnout_requests_cancelled_total",
                                    endpoint="/v1/chat/completions") > cancelled_before,
               "the shim to count the cancelled stream")


def test_metrics_count_tokens_and_first_token(shim: RunningShim) -> None:
    shim.openai().chat.completions.create(model="standin-chat", messages=MSG, max_tokens=3, stream=True)
    text = shim.metrics()
    for name in ("turnout_requests_total", "turnout_request_duration_seconds_bucket",
                 "turnout_time_to_first_token_seconds_bucket", "turnout_prompt_tokens_total",
                 "turnout_completion_tokens_total", "turnout_requests_in_flight",
                 "turnout_backend_ready", "turnout_shim_info"):
        assert f"\n{name}" in text, name
    assert metric_value(text, "turnout_completion_tokens_total", endpoint="/v1/chat/completions") >= 3
    assert metric_value(text, "turnout_time_to_first_token_seconds_count",
                        endpoint="/v1/chat/completions") >= 1
    assert metric_value(text, "turnout_requests_total", endpoint="/v1/chat/completions",
                        status="200") >= 1
    assert metric_value(text, "turnout_backend_ready") == 1.0


# -- life cycle: each test gets its own shim --------------------------------------------------


def test_health_is_503_while_the_engine_loads(start_shim_factory) -> None:
    shim = start_shim_factory(env={"STANDIN_LOAD_SECONDS": "4"}, wait=False)
    r = shim.wait_health(503)  # the shim serves before its engine is ready
    assert r.json()["status"] == "loading"
    assert r.json()["error"]["code"] == "model_loading"
    with shim.http() as h:
        r = h.post("/v1/chat/completions", json={"messages": MSG})
    if r.status_code == 503:  # still loading (the usual case)
        assert r.json()["error"]["code"] == "model_loading"
        assert int(r.headers["Retry-After"]) >= 1
    shim.wait_health(200)
    assert shim.openai().chat.completions.create(model="standin-chat", messages=MSG, max_tokens=1)


def test_engine_death_ends_inflight_streams_then_the_shim_exits_with_the_reason(start_shim_factory,
                                                                               tmp_path) -> None:
    termination = tmp_path / "termination-log"
    shim = start_shim_factory(env={"TURNOUT_TERMINATION_LOG": str(termination)})
    pid = shim.engine_stats()["pid"]
    with shim.http() as h, h.stream("POST", "/v1/chat/completions", json={
            "messages": MSG, "max_tokens": 4000, "stream": True, "standin_delay": 0.02}) as r:
        assert r.status_code == 200, r.read()
        events = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 3:  # once: the blank line after an event must not kill a reaped pid again
                    t0 = time.monotonic()
                    os.kill(pid, signal.SIGKILL)
    assert events[-1] == "[DONE]", events[-3:]
    assert len(events) < 1000
    error = json.loads(events[-2])["error"]
    assert error["code"] == "engine_dead"
    # An engine process that exited does not come back: the shim exits non-zero (the kubelet restarts the
    # container) with the reason as its termination message, instead of answering 503 until liveness acts.
    assert shim.proc.wait(30) == 1
    print(f"the shim exited {time.monotonic() - t0:.2f} s after the engine was killed")
    assert termination.read_text() == "sglang exited with code -9"
    assert "Application shutdown complete" in shim.log()


def test_sigterm_stops_shim_and_engine(start_shim_factory) -> None:
    shim = start_shim_factory()
    pid = shim.engine_stats()["pid"]
    assert pid_alive(pid)
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert shim.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in shim.log()
    wait_until(lambda: not pid_alive(pid), "the engine process to exit")


def test_engine_that_cannot_start_exits_with_why_as_the_termination_message(start_shim_factory,
                                                                             tmp_path) -> None:
    # SGLang has no Apple backend: the shim refuses to build the command, says why and exits 1, so that a
    # pod restarts into CrashLoopBackOff with the reason rather than looking like a long model load.
    termination = tmp_path / "termination-log"
    shim = start_shim_factory(device="mps", wait=False, env={"TURNOUT_TERMINATION_LOG": str(termination)})
    assert shim.proc.wait(60) == 1
    message = termination.read_text()
    assert message.startswith("sglang failed to start: ") and "SGLang does not run on device 'mps'" in message
    assert "exiting: sglang failed to start" in shim.log()


def test_embeddings_through_the_proxy(start_shim_factory) -> None:
    shim = start_shim_factory(served="standin-embed", model_type="embedding")
    r = shim.openai().embeddings.create(model="standin-embed", input=["alpha", "beta"])
    assert r.model == "standin-embed"
    assert [d.index for d in r.data] == [0, 1]
    assert len(r.data[0].embedding) == 8 and r.data[0].embedding != r.data[1].embedding
    with pytest.raises(openai.NotFoundError):
        shim.openai().chat.completions.create(model="standin-embed", messages=MSG)
    info = httpx.get(f"http://127.0.0.1:{shim.engine_port()}/get_server_info").json()
    assert info["is_embedding"] is True


def test_rerank_through_the_proxy(start_shim_factory) -> None:
    shim = start_shim_factory(served="standin-rerank", model_type="rerank")
    docs = ["the cat sat", "dogs bark loudly", "a cat and a dog"]
    with shim.http() as h:
        r = h.post("/v1/rerank", json={"model": "standin-rerank", "query": "cat", "documents": docs,
                                       "top_n": 2})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["model"] == "standin-rerank"
        assert [x["index"] for x in out["results"]] == [0, 2]
        scores = [x["relevance_score"] for x in out["results"]]
        assert scores == sorted(scores, reverse=True)
        assert out["results"][0]["document"] == {"text": "the cat sat"}
        assert out["meta"]["tokens"]["input_tokens"] > 0
        r = h.post("/v1/rerank", json={"query": "cat", "documents": [{"text": "cat"}, "dog"],
                                       "return_documents": False})
        assert r.status_code == 200, r.text
        assert all("document" not in x for x in r.json()["results"])
        assert len(r.json()["results"]) == 2


def test_sigterm_lets_inflight_streams_finish(start_shim_factory) -> None:
    shim = start_shim_factory()  # grace period: TURNOUT_SHUTDOWN_GRACE_SECONDS=5
    pid = shim.engine_stats()["pid"]
    with shim.http() as h, h.stream("POST", "/v1/chat/completions", json={
            "messages": MSG, "max_tokens": 30, "stream": True, "standin_delay": 0.05}) as r:
        events = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
            if len(events) == 2:
                shim.proc.send_signal(signal.SIGTERM)
    # the stream that was running when SIGTERM came ran to its end
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == "".join(f"w{i} " for i in range(30))
    assert shim.proc.wait(60) in (0, -signal.SIGTERM)
    wait_until(lambda: not pid_alive(pid), "the engine process to exit")


def test_wedged_engine_fails_health_ends_streams_and_recovers(start_shim_factory) -> None:
    shim = start_shim_factory(env={"TURNOUT_ENGINE_PROBE_SECONDS": "0.2"})
    pid = shim.engine_stats()["pid"]
    try:
        with shim.http() as h, h.stream("POST", "/v1/chat/completions", json={
                "messages": MSG, "max_tokens": 4000, "stream": True, "standin_delay": 0.02}) as r:
            events = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                if len(events) == 3:
                    os.kill(pid, signal.SIGSTOP)  # alive but answering nothing
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert "stopped answering /health" in error["message"]
        r = shim.wait_health(503)
        assert r.json()["status"] == "dead"
    finally:
        os.kill(pid, signal.SIGCONT)
    shim.wait_health(200)
    assert shim.openai().chat.completions.create(model="standin-chat", messages=MSG, max_tokens=1)
