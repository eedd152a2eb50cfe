"""``POST /v1/responses`` (OpenAI's Responses API) on engines that only serve chat completions.

vLLM and SGLang serve ``/v1/responses`` themselves: the proxy backends forward the body
(``ProxyBackend.responses``). For transformers, llama.cpp and MLX this module turns the
request into a chat completions body (:func:`to_chat`), calls the backend's ``chat`` and
turns the answer back: a ``response`` object (:func:`from_chat`) or, streamed, the
Responses event sequence (:class:`EventWriter`: ``response.created``,
``response.in_progress``, ``response.output_item.added``, ``response.content_part.added``,
``response.output_text.delta`` ..., ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``, function calls'
``response.function_call_arguments.delta/.done``, then ``response.completed`` or
``response.incomplete``).

The shim keeps no state: ``previous_response_id`` and ``store: true`` retrieval are not
served by the translation (a 400 says so); a client sends the whole conversation as
``input`` items, function calls and their outputs included.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import Field, StrictBool

from turnout.shim.backends._openai import new_id, now
from turnout.shim.backends.base import Backend, Stream
from turnout.shim.protocol import _Request
from turnout.wire.errors import OpenAIError
from turnout.wire.sse import Usage, event_data, split_events

#: request fields copied into the ``response`` object as the client sent them
ECHOED = ("instructions", "max_output_tokens", "metadata", "parallel_tool_calls", "temperature", "top_p",
          "tool_choice", "tools", "text", "truncation", "user", "reasoning")


class ResponsesRequest(_Request):
    """``POST /v1/responses``."""

    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    text: dict[str, Any] | None = None
    stream: StrictBool | None = False
    previous_response_id: str | None = None


async def create(backend: Backend, body: dict[str, Any]) -> dict[str, Any] | Stream:
    """The backend's own ``responses`` when it has one (vLLM, SGLang), else the chat translation."""
    if getattr(backend, "serves_responses", False):
        result: dict[str, Any] | Stream = await backend.responses(body)  # type: ignore[attr-defined]
        return result
    chat = to_chat(body)
    answer = await backend.chat(chat)
    if isinstance(answer, Stream):
        return _events(body, answer)
    return from_chat(body, answer)


# ---- request ------------------------------------------------------------------------------


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions body for a Responses request; 400 for what has no chat equivalent."""
    if body.get("previous_response_id"):
        raise OpenAIError("previous_response_id is not supported: this server keeps no responses; send the "
                          "conversation as input items", param="previous_response_id", code="unsupported")
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    raw = body.get("input")
    if isinstance(raw, str):
        messages.append({"role": "user", "content": raw})
    else:
        for i, item in enumerate(raw or ()):
            _add_item(messages, item, i)
    if not messages:
        raise OpenAIError("input must not be empty", param="input")
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    for key in ("temperature", "top_p", "parallel_tool_calls", "user", "seed", "top_k", "stop"):
        if body.get(key) is not None:
            chat[key] = body[key]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if body.get("tools"):
        chat["tools"] = [_chat_tool(t, i) for i, t in enumerate(body["tools"])]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise OpenAIError("tool_choice: only 'auto', 'none', 'required' or a function "
                              '({"type": "function", "name": ...}) are supported', param="tool_choice",
                              code="unsupported")
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None:
        chat["tool_choice"] = choice
    fmt = (body.get("text") or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _add_item(messages: list[dict[str, Any]], item: Any, i: int) -> None:
    if not isinstance(item, dict):
        raise OpenAIError(f"input[{i}] must be an object", param="input")
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise OpenAIError(f"input[{i}].role must be user, assistant, system or developer", param="input")
        messages.append({"role": "system" if role == "developer" else role,
                         "content": _content(item.get("content"), i)})
    elif kind == "function_call":
        call = {"id": item.get("call_id") or item.get("id") or new_id("call"), "type": "function",
                "function": {"name": item.get("name", ""), "arguments": item.get("arguments", "")}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and last.get("tool_calls") and not last["content"]:
            last["tool_calls"].append(call)  # parallel calls are one assistant turn
        else:
            messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        messages.append({"role": "tool", "tool_call_id": item.get("call_id", ""),
                         "content": output if isinstance(output, str) else json.dumps(output)})
    else:
        raise OpenAIError(f"input[{i}] is a {kind!r} item; this server takes message, function_call and "
                          "function_call_output items", param="input", code="unsupported")


def _content(content: Any, i: int) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise OpenAIError(f"input[{i}].content must be a string or a list of parts", param="input")
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"],
                                                             "detail": part.get("detail", "auto")}})
        else:
            raise OpenAIError(f"input[{i}] has a {kind!r} content part; this server takes input_text and "
                              "input_image (with image_url)", param="input", code="unsupported")
    return parts


def _chat_tool(tool: Any, i: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("name"), str):
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise OpenAIError(f"tools[{i}] is a {kind!r} tool; this server runs function tools only",
                          param="tools", code="unsupported")
    fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
    return {"type": "function", "function": fn}


# ---- answer ------------------------------------------------------------------------------


def _shell(body: dict[str, Any], rid: str, created: int, status: str) -> dict[str, Any]:
    """A ``response`` object with no output yet."""
    out: dict[str, Any] = {"id": rid, "object": "response", "created_at": created, "model": body.get("model"),
                           "status": status, "output": [], "error": None, "incomplete_details": None,
                           "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "store": False,
                           "usage": None}
    for key in ECHOED:
        if body.get(key) is not None:
            out[key] = body[key]
    return out


def _message_item(text: str, status: str = "completed", item_id: str | None = None) -> dict[str, Any]:
    return {"id": item_id or new_id("msg"), "type": "message", "role": "assistant", "status": status,
            "content": [_text_part(text)] if status == "completed" else []}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _call_item(call: dict[str, Any], status: str = "completed", item_id: str | None = None) -> dict[str, Any]:
    fn = call.get("function") or {}
    return {"id": item_id or new_id("fc"), "type": "function_call", "status": status,
            "call_id": call.get("id") or new_id("call"), "name": fn.get("name", ""),
            "arguments": fn.get("arguments", "") if status == "completed" else ""}


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}


def _finish(response: dict[str, Any], reason: str | None) -> None:
    if reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        response["status"] = "completed"


def from_chat(body: dict[str, Any], chat: dict[str, Any]) -> dict[str, Any]:
    """The ``response`` object for a chat completion's first choice."""
    response = _shell(body, new_id("resp"), now(), "completed")
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    if message.get("content"):
        response["output"].append(_message_item(message["content"]))
    for call in message.get("tool_calls") or ():
        response["output"].append(_call_item(call))
    _finish(response, choice.get("finish_reason"))
    u = chat.get("usage") or {}
    response["usage"] = _usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
    return response


class EventWriter:
    """Chat completion chunks in, Responses stream events (SSE bytes) out."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.response = _shell(body, new_id("resp"), now(), "in_progress")
        self.seq = 0
        self.text: str | None = None  # the message's text so far; None before its first delta
        self.msg_id = new_id("msg")
        self.msg_index = -1
        self.calls: dict[int, tuple[int, dict[str, Any]]] = {}  # chat tool index -> (output index, item)
        self.reason: str | None = None
        self.usage = Usage()

    def _event(self, kind: str, **fields: Any) -> bytes:
        fields = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return f"event: {kind}\ndata: ".encode() + json.dumps(fields, ensure_ascii=False,
                                                              separators=(",", ":")).encode() + b"\n\n"

    def start(self) -> bytes:
        return (self._event("response.created", response=self.response)
                + self._event("response.in_progress", response=self.response))

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = b""
        u = chunk.get("usage")
        if isinstance(u, dict):
            self.usage.prompt_tokens = int(u.get("prompt_tokens") or 0)
            self.usage.completion_tokens = int(u.get("completion_tokens") or 0)
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._text(delta["content"])
            for call in delta.get("tool_calls") or ():
                out += self._call(call)
            if choice.get("finish_reason"):
                self.reason = choice["finish_reason"]
        return out

    def _text(self, piece: str) -> bytes:
        out = b""
        if self.text is None:
            self.text = ""
            self.msg_index = len(self.response["output"])
            item = _message_item("", "in_progress", self.msg_id)
            self.response["output"].append(item)
            out += self._event("response.output_item.added", output_index=self.msg_index, item=item)
            out += self._event("response.content_part.added", item_id=self.msg_id, output_index=self.msg_index,
                               content_index=0, part=_text_part(""))
        self.text += piece
        return out + self._event("response.output_text.delta", item_id=self.msg_id, output_index=self.msg_index,
                                 content_index=0, delta=piece, logprobs=[])

    def _call(self, call: dict[str, Any]) -> bytes:
        out = b""
        index = int(call.get("index", len(self.calls)))
        fn = call.get("function") or {}
        if index not in self.calls:
            item = _call_item({"id": call.get("id"), "function": {"name": fn.get("name", "")}}, "in_progress")
            position = len(self.response["output"])
            self.calls[index] = (position, item)
            self.response["output"].append(item)
            out += self._event("response.output_item.added", output_index=position, item=item)
        position, item = self.calls[index]
        if fn.get("arguments"):
            item["arguments"] += fn["arguments"]
            out += self._event("response.function_call_arguments.delta", item_id=item["id"],
                               output_index=position, delta=fn["arguments"])
        return out

    def end(self) -> bytes:
        out = b""
        if self.text is not None:
            part = _text_part(self.text)
            item = _message_item(self.text, "completed", self.msg_id)
            self.response["output"][self.msg_index] = item
            out += self._event("response.output_text.done", item_id=self.msg_id, output_index=self.msg_index,
                               content_index=0, text=self.text, logprobs=[])
            out += self._event("response.content_part.done", item_id=self.msg_id, output_index=self.msg_index,
                               content_index=0, part=part)
            out += self._event("response.output_item.done", output_index=self.msg_index, item=item)
        for position, item in self.calls.values():
            item["status"] = "completed"
            out += self._event("response.function_call_arguments.done", item_id=item["id"], output_index=position,
                               name=item["name"], arguments=item["arguments"])
            out += self._event("response.output_item.done", output_index=position, item=item)
        _finish(self.response, self.reason)
        self.response["usage"] = _usage(self.usage.prompt_tokens, self.usage.completion_tokens)
        kind = "response.incomplete" if self.response["status"] == "incomplete" else "response.completed"
        return out + self._event(kind, response=self.response)


def _events(body: dict[str, Any], stream: Stream) -> Stream:
    writer = EventWriter(body)
    out = Stream(chunks=None, usage=writer.usage)  # type: ignore[arg-type]

    async def events() -> AsyncIterator[bytes]:
        chunks = stream.chunks
        head = writer.start()  # sent with the first token, so time-to-first-token means that
        try:
            async for item in chunks:
                for chunk in _chunks(item):
                    piece = writer.chunk(chunk)
                    if piece:
                        yield head + piece
                        head = b""
            if not writer.usage.prompt_tokens:
                writer.usage.prompt_tokens = stream.usage.prompt_tokens
                writer.usage.completion_tokens = stream.usage.completion_tokens
            yield head + writer.end()
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    out.chunks = events()
    return out


def _chunks(item: bytes | dict[str, Any]) -> list[dict[str, Any]]:
    """The chat chunks in one item of a backend's stream (a dict, or SSE bytes)."""
    if isinstance(item, dict):
        return [item]
    found = []
    for event in split_events(item):
        data = event_data(event).strip()
        if not data or data == b"[DONE]":
            continue
        obj = json.loads(data)
        if isinstance(obj, dict) and "error" in obj:
            err = obj["error"] if isinstance(obj["error"], dict) else {"message": str(obj["error"])}
            raise OpenAIError(str(err.get("message") or "the engine failed"), status=500,
                              code=err.get("code") if isinstance(err.get("code"), str) else None)
        if isinstance(obj, dict):
            found.append(obj)
    return found
