"""A streamed chat or text completion put back together as the non-streamed answer.

The llama.cpp backend asks llama-server for every answer as a stream, because
llama-server cancels a streamed task when its client goes away and runs a
non-streamed one to the end (see ``llamacpp.py``); this module turns the
chunks back into the ``chat.completion`` / ``text_completion`` body, with
OpenAI's streaming semantics for deltas (strings concatenate, tool calls
merge by ``index``).
"""

from __future__ import annotations

from typing import Any


def merge_delta(message: dict[str, Any], delta: dict[str, Any]) -> None:
    """Add one chat delta to the message being put together."""
    for key, value in delta.items():
        if value is None:
            continue
        if key == "tool_calls":
            calls = message.setdefault("tool_calls", [])
            for part in value:
                i = part.get("index", len(calls))
                while len(calls) <= i:
                    calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                call = calls[i]
                for name in ("id", "type"):
                    if part.get(name):
                        call[name] = part[name]
                fn = part.get("function") or {}
                call["function"]["name"] += fn.get("name") or ""
                call["function"]["arguments"] += fn.get("arguments") or ""
        elif key == "role":
            message["role"] = value
        elif isinstance(value, str):
            message[key] = (message.get(key) or "") + value
        else:
            message[key] = value


class Assembler:
    """Feed it chunk dicts (:meth:`add`); :meth:`result` is the non-streamed body."""

    def __init__(self, *, chat: bool) -> None:
        self.chat = chat
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        for key in ("id", "created", "model", "system_fingerprint"):
            if key in chunk:
                self.head.setdefault(key, chunk[key])
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for c in chunk.get("choices") or ():
            i = int(c.get("index", 0))
            acc = self.choices.setdefault(i, {"index": i, "finish_reason": None, "logprobs": None})
            if self.chat:
                merge_delta(acc.setdefault("message", {"role": "assistant"}), c.get("delta") or {})
                content = (c.get("logprobs") or {}).get("content")
                if content:
                    acc["logprobs"] = {"content": [*((acc["logprobs"] or {}).get("content") or []), *content]}
            else:
                acc["text"] = acc.get("text", "") + (c.get("text") or "")
                part = c.get("logprobs")
                if isinstance(part, dict):  # completions: parallel lists, concatenated
                    merged = acc["logprobs"] or {}
                    for key, value in part.items():
                        if isinstance(value, list):
                            merged[key] = [*(merged.get(key) or []), *value]
                    acc["logprobs"] = merged
            if c.get("finish_reason"):
                acc["finish_reason"] = c["finish_reason"]

    def result(self) -> dict[str, Any]:
        for acc in self.choices.values():
            message = acc.get("message")
            if message is not None and "content" not in message:
                message["content"] = None if message.get("tool_calls") else ""
        return {**self.head, "object": "chat.completion" if self.chat else "text_completion",
                "choices": [self.choices[i] for i in sorted(self.choices)],
                "usage": self.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
