"""Tool calls: request checks, per-family parsers of a model's output, and the forcing grammar.

A model writes its calls in its family's own text format, as vLLM's tool
parsers read them:

``hermes``       ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Hermes, Qwen 2/2.5/3)
``llama3_json``  a bare ``{"name": ..., "parameters": {...}}`` (``<|python_tag|>`` optional), ``;``-separated
``mistral``      ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``

The family comes from the chat template (:func:`family_for_template`).
``tool_choice: required`` or a named function force a call with a Lark
grammar (:func:`forcing_grammar`) for llguidance on the logits.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from turnout.wire.errors import OpenAIError

FAMILIES = ("hermes", "llama3_json", "mistral")


@dataclass(frozen=True)
class ToolRequest:
    """What a chat body asks of tools: the tool list, whether a call is forced, and which one."""

    tools: list[dict[str, Any]]
    choice: str  # auto | none | required | named
    name: str | None = None
    parallel: bool = True

    @property
    def active(self) -> bool:
        return bool(self.tools) and self.choice != "none"

    @property
    def forced(self) -> bool:
        return self.active and self.choice in ("required", "named")

    def allowed(self) -> list[dict[str, Any]]:
        """The functions a forced call may name."""
        fns = [t["function"] for t in self.tools]
        return [f for f in fns if f["name"] == self.name] if self.choice == "named" else fns


def tool_request(body: dict[str, Any]) -> ToolRequest:
    """Check ``tools``, ``tool_choice`` and ``parallel_tool_calls``; 400 naming the field on a mistake."""
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise OpenAIError("'tools' must be a list of function tools", param="tools")
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise OpenAIError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., "
                              "'parameters': {...}}}}", param="tools")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise OpenAIError(f"tools[{i}].function.parameters must be a JSON schema object", param="tools")
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise OpenAIError("'parallel_tool_calls' must be a boolean", param="parallel_tool_calls")
    choice = body.get("tool_choice")
    if choice is None:
        choice = "auto"
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        if not isinstance(name, str):
            raise OpenAIError("a named tool_choice is {'type': 'function', 'function': {'name': ...}}",
                              param="tool_choice")
        if name not in {t["function"]["name"] for t in tools}:
            raise OpenAIError(f"tool_choice names {name!r}, which is not in 'tools'", param="tool_choice")
        return ToolRequest(tools, "named", name, parallel)
    if choice not in ("auto", "none", "required"):
        raise OpenAIError("'tool_choice' must be 'auto', 'none', 'required' or a named function",
                          param="tool_choice")
    if choice == "required" and not tools:
        raise OpenAIError("tool_choice 'required' needs 'tools'", param="tool_choice")
    return ToolRequest(tools, choice, None, parallel)


def family_for_template(template: str | None) -> str:
    """The call format a chat template teaches its model; Hermes when it names none."""
    text = template or ""
    if "[TOOL_CALLS]" in text:
        return "mistral"
    if "<|python_tag|>" in text or "ipython" in text:
        return "llama3_json"
    return "hermes"


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _call(obj: Any) -> dict[str, Any] | None:
    """One OpenAI tool call from a parsed ``{"name", "arguments"|"parameters"}`` object."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False)
    return {"id": call_id(), "type": "function", "function": {"name": obj["name"], "arguments": args}}


_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def _json_values(text: str) -> list[Any] | None:
    """Consecutive JSON values in ``text`` (separated by whitespace or ``;``), or None if it is not that."""
    decoder = json.JSONDecoder()
    out, pos = [], 0
    while True:
        while pos < len(text) and (text[pos].isspace() or text[pos] == ";"):
            pos += 1
        if pos == len(text):
            return out
        try:
            value, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return None
        out.append(value)


def parse(family: str, text: str) -> tuple[str, list[dict[str, Any]]]:
    """Split a finished answer into its content and its tool calls (none if it holds none)."""
    if family == "hermes":
        calls = []
        for m in _HERMES.finditer(text):
            values = _json_values(m.group(1))
            call = _call(values[0]) if values and len(values) == 1 else None
            if call is None:
                return text, []  # a malformed call: the text goes back as it is
            calls.append(call)
        return (_HERMES.sub("", text).strip(), calls) if calls else (text, [])
    body = text.strip()
    if family == "llama3_json":
        body = body.removeprefix("<|python_tag|>")
    elif family == "mistral":
        body = body.removeprefix("[TOOL_CALLS]").strip()
    if not body.startswith(("{", "[")):
        return text, []
    values = _json_values(body) or []
    flat = [v for value in values for v in (value if isinstance(value, list) else [value])]
    calls = [c for c in (_call(v) for v in flat) if c is not None]
    return ("", calls) if calls and len(calls) == len(flat) else (text, [])


class CallStreamer:
    """Turns streamed text into content deltas and whole tool-call deltas (OpenAI's streaming shape).

    Hermes calls go out as each ``</tool_call>`` closes; for the bare-JSON
    families, text that starts like JSON is held to the end and parsed then.
    """

    def __init__(self, family: str) -> None:
        self.family = family
        self._buf = ""
        self._sent = 0       # characters of _buf already given out as content
        self._held = False   # bare-JSON family: the answer looks like calls, hold it all
        self.calls = 0

    def _tool_deltas(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for call in calls:
            out.append({"tool_calls": [{"index": self.calls, **call}]})
            self.calls += 1
        return out

    def feed(self, text: str) -> list[dict[str, Any]]:
        self._buf += text
        if self.family != "hermes":
            if not self._held and not self._sent and self._buf.strip():
                self._held = self._buf.lstrip().startswith(("{", "[", "<|python_tag|>", "[TOOL_CALLS]"))
            if self._held or not self._buf.strip():
                return []
            out = self._buf[self._sent:]
            self._sent = len(self._buf)
            return [{"content": out}] if out else []
        deltas: list[dict[str, Any]] = []
        while True:
            rest = self._buf[self._sent:]
            start = rest.find("<tool_call>")
            if start < 0:
                hold = next((k for k in range(min(len(rest), 10), 0, -1) if "<tool_call>".startswith(rest[-k:])), 0)
                if len(rest) - hold > 0:
                    deltas.append({"content": rest[:len(rest) - hold]})
                    self._sent += len(rest) - hold
                return deltas
            if start > 0:
                deltas.append({"content": rest[:start]})
                self._sent += start
                continue
            end = rest.find("</tool_call>")
            if end < 0:
                return deltas
            piece = rest[:end + len("</tool_call>")]
            _, calls = parse("hermes", piece)
            if calls:
                deltas.extend(self._tool_deltas(calls))
            else:
                deltas.append({"content": piece})
            self._sent += len(piece)

    def finish(self) -> list[dict[str, Any]]:
        rest = self._buf[self._sent:]
        self._sent = len(self._buf)
        if not rest:
            return []
        if self.family == "hermes" and "<tool_call>" not in rest:
            return [{"content": rest}]
        content, calls = parse(self.family, rest)
        deltas = [{"content": content}] if content else []
        return deltas + self._tool_deltas(calls)


def _call_schema(fn: dict[str, Any], family: str) -> dict[str, Any]:
    params = fn.get("parameters") or {"type": "object"}
    key = "parameters" if family == "llama3_json" else "arguments"
    return {"type": "object", "properties": {"name": {"const": fn["name"]}, key: params},
            "required": ["name", key], "additionalProperties": False}


def forcing_grammar(request: ToolRequest, family: str) -> str:
    """A Lark grammar (llguidance's dialect) whose every sentence is one call, or several when parallel."""
    schema = {"anyOf": [_call_schema(fn, family) for fn in request.allowed()],
              "x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ",
                             "lenient": True}}
    one = "%json " + json.dumps(schema)
    many = request.parallel and request.choice != "named"
    if family == "hermes":
        call = '"<tool_call>\\n" ' + one + ' "\\n</tool_call>"'
        return "start: call" + ("+" if many else "") + "\ncall: " + call + "\n"
    if family == "mistral":
        more = ' (", " item)*' if many else ""
        return 'start: "[TOOL_CALLS][" item' + more + ' "]"\nitem: ' + one + "\n"
    more = ' ("; " item)*' if many else ""
    return "start: item" + more + "\nitem: " + one + "\n"


def forced_json_schema(request: ToolRequest) -> dict[str, Any]:
    """vLLM's JSON schema for a forced call: a named function's parameters, or for ``required`` a list
    of ``{"name", "parameters"}`` (one item unless ``parallel_tool_calls``)."""
    if request.choice == "named":
        return request.allowed()[0].get("parameters") or {"type": "object"}
    items = [{"type": "object", "properties": {"name": {"enum": [fn["name"]]},
                                               "parameters": fn.get("parameters") or {"type": "object"}},
              "required": ["name", "parameters"], "additionalProperties": False} for fn in request.allowed()]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
    if not request.parallel:
        schema["maxItems"] = 1
    return schema


def forced_calls(request: ToolRequest, text: str) -> list[dict[str, Any]]:
    """The calls in an answer written to :func:`forced_json_schema`; none if it is not that (cut short)."""
    try:
        value = json.loads(text)
    except ValueError:
        return []
    if request.choice == "named":
        call = _call({"name": request.name, "arguments": value}) if isinstance(value, dict) else None
        return [call] if call else []
    if not isinstance(value, list):
        return []
    calls = [_call(v) for v in value]
    return [c for c in calls if c] if all(calls) else []
