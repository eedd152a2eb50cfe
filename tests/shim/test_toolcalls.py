"""The per-family tool-call parsers and the streamed-call splitter, on the text each family writes."""

from __future__ import annotations

import json

import llguidance
import pytest

from turnout.shim import toolcalls
from turnout.wire.errors import OpenAIError

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
         {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]


def _names_args(calls: list[dict]) -> list[tuple[str, dict]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def test_hermes_calls_and_content() -> None:
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n' \
           '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'
    content, calls = toolcalls.parse("hermes", text)
    assert content == "Let me check."
    assert _names_args(calls) == [("get_weather", {"city": "Paris"}), ("add", {"a": 1})]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert toolcalls.parse("hermes", "<tool_call>{not json</tool_call>") == ("<tool_call>{not json</tool_call>", [])


def test_llama3_json_and_mistral() -> None:
    content, calls = toolcalls.parse("llama3_json", '<|python_tag|>{"name": "add", "parameters": {"a": 1}}; '
                                                    '{"name": "get_weather", "parameters": {"city": "Oslo"}}')
    assert content == "" and _names_args(calls) == [("add", {"a": 1}), ("get_weather", {"city": "Oslo"})]
    assert toolcalls.parse("llama3_json", "Hello there") == ("Hello there", [])
    content, calls = toolcalls.parse("mistral", '[TOOL_CALLS][{"name": "add", "arguments": {"b": 2}}]')
    assert _names_args(calls) == [("add", {"b": 2})]


def test_streamer_holds_a_call_until_it_closes() -> None:
    text = 'Sure <tool_call>\n{"name": "add", "arguments": {}}\n</tool_call> done'
    streamer = toolcalls.CallStreamer("hermes")
    deltas = [d for ch in text for d in streamer.feed(ch)] + streamer.finish()
    content = "".join(d.get("content", "") for d in deltas)
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert content == "Sure  done" and "<" not in content
    assert [c["index"] for c in calls] == [0] and calls[0]["function"]["name"] == "add"


@pytest.mark.parametrize("family", toolcalls.FAMILIES)
def test_forcing_grammar_is_valid_llguidance(family: str) -> None:
    for choice in ("required", {"type": "function", "function": {"name": "add"}}):
        request = toolcalls.tool_request({"tools": TOOLS, "tool_choice": choice})
        grammar = llguidance.LLMatcher.grammar_from_lark(toolcalls.forcing_grammar(request, family))
        assert not llguidance.LLMatcher.validate_grammar(grammar)


def test_forced_schema_answers_become_calls() -> None:
    required = toolcalls.tool_request({"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False})
    assert toolcalls.forced_json_schema(required)["maxItems"] == 1
    calls = toolcalls.forced_calls(required, '[{"name": "add", "parameters": {"a": 1}}]')
    assert _names_args(calls) == [("add", {"a": 1})]
    named = toolcalls.tool_request({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "add"}}})
    assert _names_args(toolcalls.forced_calls(named, '{"a": 2}')) == [("add", {"a": 2})]
    assert toolcalls.forced_calls(named, '{"a": ') == []


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": "x"}, "tools"),
    ({"tools": [{"type": "function", "function": {}}]}, "tools"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
])
def test_bad_tool_fields_name_the_field(body: dict, param: str) -> None:
    with pytest.raises(OpenAIError) as err:
        toolcalls.tool_request(body)
    assert err.value.status == 400 and err.value.param == param
