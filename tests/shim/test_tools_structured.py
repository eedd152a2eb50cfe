"""Tools, structured outputs and logprobs through the shim, one test set for each in-process engine.

The same tests run against transformers and llama.cpp on the tiny model,
with the official ``openai`` client, so both engines answer the same API.
The model is random: forced calls (``required``, a named function) and
schemas are checked, not what a call or a value says.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest
from shimproc import serve

from turnout.shim.backends.llamacpp import LlamaCppBackend
from turnout.shim.backends.transformers import TransformersBackend
from turnout.shimargs import ShimArgs

ASK = [{"role": "user", "content": "What is the weather in Paris, and what is 2 plus 3?"}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
           "required": ["city"], "additionalProperties": False}
ADD = {"type": "object",
       "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                      "b": {"type": "integer", "minimum": 0, "maximum": 99}},
       "required": ["a", "b"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "description": "Adds", "parameters": ADD}}]
PARAMS = {"get_weather": WEATHER, "add": ADD}
#: llama.cpp's JSON grammar lets whitespace in (a random model takes it): room for it
ROOM = 400


@pytest.fixture(scope="module", params=["transformers", "llama.cpp"])
def client(request: pytest.FixtureRequest, tiny_model: Any, free_port_factory: Any) -> Iterator[openai.OpenAI]:
    if request.param == "transformers":
        args = ShimArgs(engine="transformers", model=str(tiny_model.hf_dir), served_model_name="tiny")
        backend: Any = TransformersBackend(args)
    else:
        args = ShimArgs(engine="llama.cpp", model=str(tiny_model.gguf_path), served_model_name="tiny",
                        engine_args={"n_ctx": 2048, "parallel": 2})
        backend = LlamaCppBackend(args)
    with serve(backend, args, free_port_factory()) as base:
        yield openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)


def _check_call(call: Any, names: set[str]) -> None:
    assert call.type == "function" and call.id and call.function.name in names
    jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])


def test_required_forces_a_call(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
                                         parallel_tool_calls=False, max_tokens=ROOM, temperature=0)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and len(choice.message.tool_calls) == 1
    _check_call(choice.message.tool_calls[0], set(PARAMS))


def test_named_function_is_the_one_called(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, max_tokens=ROOM, temperature=0,
                                         tool_choice={"type": "function", "function": {"name": "add"}})
    calls = out.choices[0].message.tool_calls
    assert out.choices[0].finish_reason == "tool_calls" and [c.function.name for c in calls] == ["add"]
    _check_call(calls[0], {"add"})


def test_streamed_calls_come_as_openai_deltas(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, max_tokens=ROOM, temperature=0,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    stream = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, max_tokens=ROOM, temperature=0,
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                            stream=True, stream_options={"include_usage": True})
    calls: dict[int, dict[str, str]] = {}
    reasons = []
    chunks = list(stream)
    for chunk in chunks:
        for c in chunk.choices:
            reasons.append(c.finish_reason)
            for part in c.delta.tool_calls or ():
                acc = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                if part.id:
                    assert not acc["id"], "a call's id comes once, in its first delta"
                    acc["id"] = part.id
                acc["name"] += part.function.name or ""
                acc["arguments"] += part.function.arguments or ""
    assert [r for r in reasons if r] == ["tool_calls"]
    assert list(calls) == [0] and calls[0]["id"] and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == json.loads(whole.choices[0].message.tool_calls[0].function.arguments)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_tool_results_in_the_conversation(client: openai.OpenAI) -> None:
    turn = [*ASK,
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "5"}]
    auto = client.chat.completions.create(model="tiny", messages=turn, tools=TOOLS, max_tokens=8, temperature=0)
    none = client.chat.completions.create(model="tiny", messages=turn, tools=TOOLS, tool_choice="none",
                                          max_tokens=8, temperature=0)
    assert none.choices[0].message.tool_calls in (None, []) and none.choices[0].message.content
    bare = client.chat.completions.create(model="tiny", messages=turn, max_tokens=8, temperature=0)
    # the tools are in the prompt with none too (the model sees them, it may not call them), as vLLM does
    assert auto.usage.prompt_tokens == none.usage.prompt_tokens > bare.usage.prompt_tokens
    assert auto.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_json_schema_strict(client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "sum", "strict": True, "schema": ADD}}
    for stream in (False, True):
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model="tiny", messages=ASK, response_format=fmt, max_tokens=ROOM, temperature=0, stream=True)
                if c.choices)
        else:
            out = client.chat.completions.create(model="tiny", messages=ASK, response_format=fmt, max_tokens=ROOM,
                                                 temperature=0)
            assert out.choices[0].finish_reason == "stop"
            text = out.choices[0].message.content
        jsonschema.validate(json.loads(text), ADD)


def test_json_object_starts_an_object(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model="tiny", messages=ASK, response_format={"type": "json_object"},
                                         max_tokens=64, temperature=0)
    text = out.choices[0].message.content.lstrip()
    assert text.startswith("{")
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_chat_logprobs(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=6, temperature=0, logprobs=True,
                                         top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    assert "".join(e.token for e in content) == out.choices[0].message.content
    for e in content:
        assert len(e.top_logprobs) == 3 and e.logprob <= 0
        assert abs(e.top_logprobs[0].logprob - e.logprob) < 1e-3  # greedy: the chosen token is the likeliest
    stream = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=6, temperature=0, logprobs=True,
                                            top_logprobs=3, stream=True)
    streamed = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content or ()]
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [round(e.logprob, 3) for e in streamed] == [round(e.logprob, 3) for e in content]


def test_completions_logprobs(client: openai.OpenAI) -> None:
    out = client.completions.create(model="tiny", prompt="The harbour town", max_tokens=5, temperature=0, logprobs=2)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == out.usage.completion_tokens
    assert "".join(lp.tokens) == out.choices[0].text
    assert all(len(top) <= 2 and max(top.values()) >= lp.token_logprobs[i] - 1e-3
               for i, top in enumerate(lp.top_logprobs))
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    streamed = [c.choices[0].logprobs for c in client.completions.create(
        model="tiny", prompt="The harbour town", max_tokens=5, temperature=0, logprobs=2, stream=True)
        if c.choices and c.choices[0].logprobs]
    assert [t for part in streamed for t in part.tokens] == lp.tokens
    assert [o for part in streamed for o in part.text_offset] == lp.text_offset


def test_echoed_completion_logprobs_offsets_start_after_the_prompt(client: openai.OpenAI,
                                                                   request: pytest.FixtureRequest) -> None:
    if request.node.callspec.params["client"] == "llama.cpp":
        pytest.skip("llama-server does not echo the prompt (echo is not one of its completions fields)")
    prompt = "The harbour town"
    out = client.completions.create(model="tiny", prompt=prompt, max_tokens=3, temperature=0, logprobs=1, echo=True)
    assert out.choices[0].text.startswith(prompt)
    generated = [o for o in out.choices[0].logprobs.text_offset if o >= len(prompt)]
    assert generated and generated[0] == len(prompt)


def test_bad_tool_requests_are_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    assert err.value.body["param"] == "tool_choice"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=ASK, tool_choice="required")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
                                       response_format={"type": "json_object"})
    assert err.value.body["param"] == "response_format"  # type: ignore[index]
