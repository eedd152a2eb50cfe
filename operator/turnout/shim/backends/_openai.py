"""OpenAI request parsing and response shapes shared by the in-process backends."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from turnout.wire.errors import OpenAIError

#: Most choices one request may ask for (``n``); each is one sequence in the batch.
MAX_N = 128


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is sampled; ``temperature == 0`` means greedy."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 1e-5


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OpenAIError(f"'{key}' must be a number", param=key)
    if not lo <= value <= hi:
        raise OpenAIError(f"'{key}' must be between {lo} and {hi}, got {value}", param=key)
    return float(value)


def _int(body: dict[str, Any], key: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise OpenAIError(f"'{key}' must be an integer", param=key)
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise OpenAIError(f"'{key}' must be {bound}, got {value}", param=key)
    return value


def choices_n(body: dict[str, Any]) -> int:
    return _int(body, "n", 1, MAX_N) or 1


def stop_strings(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,) if stop else ()
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return tuple(s for s in stop if s)
    raise OpenAIError("'stop' must be a string or a list of strings", param="stop")


def sampling_params(body: dict[str, Any], *, prompt_tokens: int, max_model_len: int,
                    prompt_param: str) -> SamplingParams:
    """Validate the sampling fields of a chat or completions body.

    ``max_tokens`` defaults to what the context has room for; asking for more
    than that is a 400, as with OpenAI and vLLM.
    """
    room = max_model_len - prompt_tokens
    if room < 1:
        raise OpenAIError(
            f"the prompt is {prompt_tokens} tokens long, the model's context is {max_model_len} tokens; "
            "shorten the prompt",
            param=prompt_param, code="context_length_exceeded")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _int(body, key, 1)
    if max_tokens is None:
        max_tokens = room
    elif max_tokens > room:
        raise OpenAIError(
            f"'{key}' is {max_tokens} but the prompt is {prompt_tokens} tokens and the model's context is "
            f"{max_model_len} tokens: at most {room} tokens can be generated",
            param=key, code="context_length_exceeded")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise OpenAIError("'seed' must be an integer", param="seed")
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p <= 0.0:
        raise OpenAIError("'top_p' must be greater than 0", param="top_p")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=top_p,
        top_k=_int(body, "top_k", -1) or 0,
        stop=stop_strings(body),
        seed=seed,
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        ignore_eos=bool(body.get("ignore_eos", False)),
    )


def reject_non_text(body: dict[str, Any]) -> None:
    """400 for a content part other than text (``image_url``, ``input_audio``, ...): this model reads text only."""
    messages = body.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else ()):
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = str(part.get("type")) if isinstance(part, dict) else type(part).__name__
                article = "an" if kind[:1].lower() in "aeiou" else "a"
                raise OpenAIError(f"messages[{i}] has {article} {kind!r} part; this model reads text only",
                                  param="messages", code="unsupported")


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Messages with text-only content, ready for a chat template."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError("'messages' must be a non-empty list", param="messages")
    reject_non_text(body)
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise OpenAIError(f"messages[{i}] must be an object with a 'role'", param="messages")
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(str(part.get("text", "")) for part in content)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise OpenAIError(f"messages[{i}].content must be a string or a list of parts", param="messages")
        out.append({**message, "content": content})
    return out


def texts_or_token_ids(body: dict[str, Any], param: str, *, empty_ids: bool = False) -> list[str | list[int]]:
    """``body[param]`` (``prompt``, ``input``) as a list: strings, or token id lists (empty ones if ``empty_ids``)."""
    value = body.get(param)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return list(value)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [list(value)]
        if all(isinstance(v, list) and (v or empty_ids) and all(isinstance(t, int) for t in v) for v in value):
            return [list(v) for v in value]
    raise OpenAIError(f"'{param}' must be a string, a list of strings, or token ids", param=param)


def completion_prompts(body: dict[str, Any]) -> list[str | list[int]]:
    """``prompt`` as a list: strings, or token id lists."""
    return texts_or_token_ids(body, "prompt")


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(rid: str, created: int, model: str, texts: list[str], reasons: list[str],
                  prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text},
             "logprobs": None, "finish_reason": reason}
            for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def completion_response(rid: str, created: int, model: str, texts: list[str], reasons: list[str],
                        prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [
            {"index": i, "text": text, "logprobs": None, "finish_reason": reason}
            for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(rid: str, created: int, model: str, index: int, delta: dict[str, Any],
               finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def completion_chunk(rid: str, created: int, model: str, index: int, text: str,
                     finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage_chunk(rid: str, created: int, model: str, obj: str, prompt_tokens: int,
                completion_tokens: int) -> dict[str, Any]:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def include_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and bool(opts.get("include_usage"))


#: one encoder, as the app's ``_dumps`` writes JSON (compact, UTF-8 kept); ``encode(str)`` is a C call
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_MARK = "\uffff\u0000turnout-text\u0000\uffff"


def sse(chunk: dict[str, Any]) -> bytes:
    """One SSE event, ``data: <chunk>\\n\\n``, byte for byte as the app serialises a dict chunk."""
    return b"data: " + _JSON.encode(chunk).encode() + b"\n\n"


class SseText:
    """The SSE event of a text chunk, with only the text encoded per call.

    ``build(index, text)`` gives the chunk dict; its event is serialised once
    per choice index with a marker in place of the text and split there, so
    ``event(index, text)`` is the same bytes as ``sse(build(index, text))``
    for one JSON string encode and a join.
    """

    def __init__(self, build: Callable[[int, str], dict[str, Any]]) -> None:
        self._build = build
        self._parts: dict[int, tuple[bytes, bytes]] = {}

    def event(self, index: int, text: str) -> bytes:
        parts = self._parts.get(index)
        if parts is None:
            whole = sse(self._build(index, _MARK))
            before, _, after = whole.partition(_JSON.encode(_MARK).encode())
            parts = self._parts[index] = (before, after)
        return parts[0] + _JSON.encode(text).encode() + parts[1]
