"""The conformance features: one request each, sent with the official ``openai`` client, and what it must show.

A live check (``Feature.check``) runs against an engine serving the tiny model and raises
``AssertionError`` (or the client's error) when the engine does not do it. A contract check
(vLLM, SGLang: the shim passes requests through) sends the same request to the shim in front of
a stand-in engine and asserts that the feature's fields reached the engine unchanged
(``Feature.forwarded``) and that the engine's answer came back.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import openai

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"],
                   "additionalProperties": False}}}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"],
          "additionalProperties": False}
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
SERVED = "tiny"
VISION = "tiny-vision"
#: engines run live on the tiny model, and engines checked by contract (the shim passes their requests through)
LIVE = ("transformers", "llama.cpp")
CONTRACT = ("vllm", "sglang")


@dataclass(frozen=True)
class Target:
    """What a check talks to: the shim's client and served name; ``vision`` serves a tiny vision model."""

    client: openai.OpenAI
    served: str
    vision: Target | None = None


@dataclass(frozen=True)
class Feature:
    name: str
    label: str
    check: Callable[[Target], None]
    #: the chat request (fields besides model/messages) a contract check sends; its keys must reach the engine
    forwarded: dict[str, Any] = field(default_factory=dict)
    path: str = "chat"


def _chat(t: Target, **kw: Any) -> Any:
    kw.setdefault("messages", USER)
    kw.setdefault("max_tokens", 48)
    kw.setdefault("temperature", 0)  # greedy: the same answer on every run
    return t.client.chat.completions.create(model=t.served, **kw)


#: a forced call on a random model: llama.cpp's JSON grammar lets whitespace in, which it takes; room for it
ROOM = 400


def _calls(t: Target, choice: Any) -> None:
    r = _chat(t, tools=[WEATHER], tool_choice=choice, max_tokens=ROOM, parallel_tool_calls=False)
    calls = r.choices[0].message.tool_calls
    assert calls, f"no tool call: {r.choices[0].message.content!r}"
    assert calls[0].function.name == "get_weather"
    json.loads(calls[0].function.arguments)
    assert r.choices[0].finish_reason == "tool_calls", r.choices[0].finish_reason


def tools_required(t: Target) -> None:
    _calls(t, "required")


def tools_named(t: Target) -> None:
    _calls(t, {"type": "function", "function": {"name": "get_weather"}})


def tools_auto(t: Target) -> None:
    r = _chat(t, tools=[WEATHER], tool_choice="auto")
    msg = r.choices[0].message
    for call in msg.tool_calls or ():
        assert call.function.name == "get_weather"
        json.loads(call.function.arguments)
    assert msg.tool_calls or msg.content is not None


def tools_streamed(t: Target) -> None:
    name, args, reason = "", "", None
    for chunk in _chat(t, tools=[WEATHER], tool_choice="required", stream=True, max_tokens=ROOM,
                       parallel_tool_calls=False):
        for c in chunk.choices:
            for d in c.delta.tool_calls or ():
                name += (d.function.name or "") if d.function else ""
                args += (d.function.arguments or "") if d.function else ""
            reason = c.finish_reason or reason
    assert name == "get_weather", f"no streamed tool call (name {name!r}, arguments {args!r})"
    json.loads(args)
    assert reason == "tool_calls", reason


def json_object(t: Target) -> None:
    """Any JSON object: a random model may not close it within ``max_tokens``, so the answer must open one and,
    when the model stopped by itself, parse as one."""
    r = _chat(t, response_format={"type": "json_object"}, max_tokens=96)
    text = r.choices[0].message.content.lstrip()
    assert text.startswith("{"), text
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict), text


def json_schema(t: Target) -> None:
    r = _chat(t, max_tokens=96, response_format={"type": "json_schema", "json_schema": {
        "name": "city", "schema": SCHEMA, "strict": True}})
    out = json.loads(r.choices[0].message.content)
    assert set(out) == {"city"} and isinstance(out["city"], str), out


def logprobs(t: Target) -> None:
    r = _chat(t, logprobs=True, top_logprobs=2, max_tokens=4)
    content = r.choices[0].logprobs.content if r.choices[0].logprobs else None
    assert content, "no logprobs"
    assert all(len(tok.top_logprobs) == 2 and tok.logprob <= 0 for tok in content)


def png(width: int = 32, height: int = 32, color: tuple[int, int, int] = (200, 30, 30)) -> str:
    """A data: URL of a small solid-colour PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _image_messages(url: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is in this picture?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def image_in(t: Target) -> None:
    v = t.vision
    assert v is not None, "no tiny vision model runs on this engine in the suite"
    text = v.client.chat.completions.create(model=v.served, max_tokens=2, messages=[
        {"role": "user", "content": [{"type": "text", "text": "What is in this picture?"}]}])
    image = v.client.chat.completions.create(model=v.served, max_tokens=2, messages=_image_messages(png()))
    assert image.usage.prompt_tokens > text.usage.prompt_tokens, (image.usage, text.usage)


def image_to_text_model(t: Target) -> None:
    try:
        _chat(t, messages=_image_messages(png()), max_tokens=2)
    except openai.BadRequestError as exc:
        assert isinstance(exc.body, dict) and exc.body.get("message"), exc.body
        return
    raise AssertionError("a text model answered an image")


def responses_plain(t: Target) -> None:
    r = t.client.responses.create(model=t.served, input="Hello there", instructions="Answer briefly.",
                                  max_output_tokens=8, temperature=0)  # greedy: never an end token first
    assert r.object == "response" and r.status in ("completed", "incomplete")
    assert r.output_text and r.usage and r.usage.output_tokens > 0


def responses_streamed(t: Target) -> None:
    kinds, text, final = [], "", None
    for ev in t.client.responses.create(model=t.served, input=[{"role": "user", "content": "Hello"}],
                                        max_output_tokens=8, stream=True, temperature=0):
        kinds.append(ev.type)
        if ev.type == "response.output_text.delta":
            text += ev.delta
        if ev.type in ("response.completed", "response.incomplete"):
            final = ev.response
    assert kinds[0] == "response.created", kinds
    assert final is not None and final.output_text == text and text, (kinds, text)


RESPONSES_WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
                     "parameters": WEATHER["function"]["parameters"]}


def responses_tools(t: Target) -> None:
    r = t.client.responses.create(model=t.served, input="What is the weather in Paris?", tools=[RESPONSES_WEATHER],
                                  tool_choice="required", max_output_tokens=ROOM, temperature=0,
                                  parallel_tool_calls=False)
    calls = [item for item in r.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather", f"no function_call item: {r.output_text!r}"
    json.loads(calls[0].arguments)


def n_choices(t: Target) -> None:
    r = _chat(t, n=2, max_tokens=4, temperature=1.0)
    assert [c.index for c in r.choices] == [0, 1]


def stop(t: Target) -> None:
    first = _chat(t, max_tokens=12, temperature=0).choices[0].message.content
    word = next(w for w in first.split() if len(w) > 1)
    r = _chat(t, max_tokens=12, temperature=0, stop=[word])
    assert word not in r.choices[0].message.content and r.choices[0].finish_reason == "stop", (first, r)


def seed(t: Target) -> None:
    a, b = (_chat(t, max_tokens=12, temperature=1.0, seed=7).choices[0].message.content for _ in range(2))
    assert a == b, (a, b)


def include_usage(t: Target) -> None:
    chunks = list(_chat(t, max_tokens=4, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices


def max_completion_tokens(t: Target) -> None:
    r = _chat(t, max_completion_tokens=3)
    assert r.usage.completion_tokens <= 3 and r.choices[0].finish_reason in ("length", "stop")


_TOOLS = {"tools": [WEATHER]}
FEATURES = (
    Feature("tools_required", "`tools`, `tool_choice: required`", tools_required,
            {**_TOOLS, "tool_choice": "required"}),
    Feature("tools_auto", "`tools`, `tool_choice: auto`", tools_auto, {**_TOOLS, "tool_choice": "auto"}),
    Feature("tools_named", "`tools`, a named function", tools_named,
            {**_TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    Feature("tools_streamed", "`tools`, streamed call deltas", tools_streamed,
            {**_TOOLS, "tool_choice": "required", "stream": True}),
    Feature("json_object", "`response_format: json_object`", json_object, {"response_format": {"type": "json_object"}}),
    Feature("json_schema", "`response_format: json_schema` (strict)", json_schema,
            {"response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA,
                                                                        "strict": True}}}),
    Feature("logprobs", "`logprobs`, `top_logprobs`", logprobs, {"logprobs": True, "top_logprobs": 2}),
    Feature("image_in", "`image_url` part (vision model)", image_in,
            {"messages": _image_messages("data:image/png;base64,iVBORw0KGgo=")}),
    Feature("image_to_text_model", "`image_url` part to a text model: 400", image_to_text_model,
            {"messages": _image_messages("data:image/png;base64,iVBORw0KGgo=")}),
    Feature("responses_plain", "`/v1/responses`", responses_plain, {"input": "Hello", "max_output_tokens": 4},
            path="responses"),
    Feature("responses_streamed", "`/v1/responses`, streamed events", responses_streamed,
            {"input": "Hello", "max_output_tokens": 4, "stream": True}, path="responses"),
    Feature("responses_tools", "`/v1/responses`, function tools (`required`)", responses_tools,
            {"input": "Hello", "tools": [RESPONSES_WEATHER], "tool_choice": "required"}, path="responses"),
    Feature("n", "`n=2`", n_choices, {"n": 2}),
    Feature("stop", "`stop`", stop, {"stop": ["w3"]}),
    Feature("seed", "`seed`", seed, {"seed": 7}),
    Feature("include_usage", "`stream_options.include_usage`", include_usage,
            {"stream": True, "stream_options": {"include_usage": True}}),
    Feature("max_completion_tokens", "`max_completion_tokens`", max_completion_tokens,
            {"max_completion_tokens": 3}),
)
