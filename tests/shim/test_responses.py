"""``/v1/responses``: the chat translation (pure), and the official client through the shim and the gateway."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import uvicorn
from shimproc import RunningShim

from turnout.gateway.app import GatewayApp
from turnout.gateway.source import StaticModel, StaticSource
from turnout.shim.responses import EventWriter, from_chat, to_chat
from turnout.wire.errors import OpenAIError


def test_input_items_become_chat_messages() -> None:
    chat = to_chat({"model": "m", "instructions": "be brief", "max_output_tokens": 9, "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"},
                                     {"type": "input_image", "image_url": "data:image/png;base64,AA=="}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{\"city\":\"Rome\"}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    ], "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}},
        "stream": True})
    assert chat["messages"][0] == {"role": "system", "content": "be brief"}
    assert chat["messages"][1]["content"][1] == {"type": "image_url", "image_url": {
        "url": "data:image/png;base64,AA==", "detail": "auto"}}
    assert [c["id"] for c in chat["messages"][2]["tool_calls"]] == ["c1", "c2"]  # one assistant turn
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    assert chat["tools"] == [{"type": "function", "function": {"name": "get_weather",
                                                               "parameters": {"type": "object"}}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["response_format"]["json_schema"]["name"] == "w"
    assert chat["max_tokens"] == 9 and chat["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("body, param", [
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input"),
    ({"input": []}, "input"),
])
def test_what_has_no_chat_equivalent_is_400(body: dict[str, Any], param: str) -> None:
    with pytest.raises(OpenAIError) as err:
        to_chat(body)
    assert err.value.status == 400 and err.value.param == param


def test_a_chat_answer_becomes_a_response() -> None:
    from openai.types.responses import Response

    chat = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3}}
    r = Response.model_validate(from_chat({"model": "m", "input": "x"}, chat))
    assert r.output[0].type == "function_call" and r.output[0].call_id == "c1"
    assert r.usage is not None and r.usage.total_tokens == 8


def test_streamed_tool_call_deltas_become_function_call_events() -> None:
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    w = EventWriter({"model": "m", "input": "x"})
    raw = w.start()
    raw += w.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{\"a\""}}]}}]})
    raw += w.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]},
                                 "finish_reason": "tool_calls"}]})
    raw += w.end()
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    events = [adapter.validate_json(e.split(b"data: ", 1)[1]) for e in raw.split(b"\n\n") if e]
    kinds = [e.type for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta", "response.function_call_arguments.delta",
                     "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output[0].arguments == "{\"a\":1}"


# ---- through the shim and the gateway, with the official client ----------------------------------------


@pytest.fixture(scope="module")
def shims(start_shim_factory: Callable[..., RunningShim], tiny_model: Any) -> dict[str, RunningShim]:
    return {
        "transformers": start_shim_factory(engine="transformers", model=str(tiny_model.hf_dir), served="tiny-tf"),
        "llama.cpp": start_shim_factory(engine="llama.cpp", model=str(tiny_model.gguf_path), served="tiny-gguf"),
        "sglang": start_shim_factory(engine="sglang", served="standin-chat"),
    }


@pytest.fixture(scope="module")
def gateway(shims: dict[str, RunningShim], free_port_factory: Callable[[], int]) -> Iterator[str]:
    models = [StaticModel(s.args.served_model_name, "127.0.0.1", s.args.port) for s in shims.values()]
    port = free_port_factory()
    server = uvicorn.Server(uvicorn.Config(GatewayApp(StaticSource(models)), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the gateway did not start"
        threading.Event().wait(0.02)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(30)


def _clients(shims: dict[str, RunningShim], gateway: str) -> Iterator[tuple[str, openai.OpenAI, str]]:
    for engine, shim in shims.items():
        yield engine, shim.openai(), shim.args.served_model_name
        yield f"{engine} via gateway", openai.OpenAI(base_url=gateway, api_key="x", max_retries=0), \
            shim.args.served_model_name


@pytest.mark.slow
def test_responses_plain_and_streamed(shims: dict[str, RunningShim], gateway: str) -> None:
    for where, client, model in _clients(shims, gateway):
        # greedy: a random tiny model may sample its end token first, which would be an empty answer
        r = client.responses.create(model=model, input="Hello", instructions="Be brief.", max_output_tokens=6,
                                    temperature=0)
        assert r.model == model and r.output_text and r.usage and r.usage.output_tokens > 0, where
        events = list(client.responses.create(model=model, input=[{"role": "user", "content": "Hi"}],
                                              max_output_tokens=6, stream=True, temperature=0))
        kinds = [e.type for e in events]
        assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete"), where
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert text and events[-1].response.output_text == text, where  # type: ignore[union-attr]


@pytest.mark.slow
def test_responses_error_is_an_envelope(shims: dict[str, RunningShim]) -> None:
    client = shims["transformers"].openai()
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="tiny-tf", input="x", previous_response_id="resp_x")
    assert err.value.body["param"] == "previous_response_id"  # type: ignore[index]


@pytest.mark.slow
def test_responses_tokens_are_counted(shims: dict[str, RunningShim]) -> None:
    from shimproc import metric_value

    shim = shims["transformers"]
    before = metric_value(shim.metrics(), "turnout_prompt_tokens_total", endpoint="/v1/responses")
    r = shim.openai().responses.create(model="tiny-tf", input="Hello", max_output_tokens=4)
    after = metric_value(shim.metrics(), "turnout_prompt_tokens_total", endpoint="/v1/responses")
    assert r.usage is not None and after - before == r.usage.input_tokens
