"""Tools, structured output and logprobs for the in-process transformers engine.

:class:`Features` reads what a request asks for (tool calls, a grammar,
logprobs) and sets it on each :class:`~._batching.Sequence` before the
request is submitted; the answer is then shaped from the generated text:
tool calls parsed by the model family's parser (:mod:`turnout.shim.toolcalls`)
and logprobs in OpenAI's chat or completions shape, plain or streamed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from turnout.shim import structured, toolcalls
from turnout.shim.backends._batching import GenerationRequest, Sequence
from turnout.shim.backends.base import Stream
from turnout.toolparsers import IN_PROCESS
from turnout.wire.errors import OpenAIError
from turnout.wire.sse import Usage


@dataclass
class Features:
    """What one request asks beyond plain text."""

    tools: toolcalls.ToolRequest | None = None
    family: str = "hermes"
    grammar: str | None = None
    grammar_param: str = "response_format"
    top_logprobs: int | None = None  # None: no logprobs

    @property
    def plain(self) -> bool:
        return not (self.tools and self.tools.active) and self.top_logprobs is None

    def prepare(self, seq: Sequence, grammars: structured.Grammars) -> None:
        if self.grammar is not None:
            seq.constraint = grammars.constraint(self.grammar, self.grammar_param)
        seq.top_logprobs = self.top_logprobs


def _int(body: dict[str, Any], key: str, hi: int) -> int:
    value = body.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise OpenAIError(f"'{key}' must be an integer between 0 and {hi}", param=key)
    return value


def chat_features(body: dict[str, Any], template: str | None, parser: str | None = None) -> Features:
    """``parser``: the shim's ``--tool-call-parser`` (vLLM's name); else the family the template teaches."""
    tools = toolcalls.tool_request(body)
    family = IN_PROCESS.get(parser or "") or toolcalls.family_for_template(template)
    grammar, param = structured.response_format_grammar(body), "response_format"
    if tools.forced:
        if grammar is not None:
            raise OpenAIError("response_format cannot be combined with a forced tool call (tool_choice "
                              "'required' or a named function)", param="response_format")
        grammar, param = structured.lark_grammar(toolcalls.forcing_grammar(tools, family)), "tools"
    top = None
    if body.get("logprobs"):
        top = _int(body, "top_logprobs", 20)
    elif body.get("top_logprobs"):
        raise OpenAIError("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return Features(tools, family, grammar, param, top)


def completion_features(body: dict[str, Any]) -> Features:
    logprobs = body.get("logprobs")
    top = None if logprobs is None else _int(body, "logprobs", 20)
    return Features(grammar=structured.response_format_grammar(body), top_logprobs=top)


class Logprobs:
    """Token ids and logprobs as OpenAI writes them."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def token(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id], skip_special_tokens=False)

    def chat(self, entries: list[tuple[int, float, list[tuple[int, float]]]]) -> dict[str, Any]:
        def one(tid: int, lp: float) -> dict[str, Any]:
            text = self.token(tid)
            return {"token": text, "logprob": lp, "bytes": list(text.encode())}

        return {"content": [{**one(t, lp), "top_logprobs": [one(a, alp) for a, alp in alts]}
                            for t, lp, alts in entries]}

    def completion(self, entries: list[tuple[int, float, list[tuple[int, float]]]],
                   offset: int = 0) -> dict[str, Any]:
        tokens = [self.token(t) for t, _, _ in entries]
        offsets = []
        for text in tokens:
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries],
                "top_logprobs": [{self.token(a): alp for a, alp in alts} for _, _, alts in entries],
                "text_offset": offsets}


def chat_message(features: Features, text: str) -> tuple[dict[str, Any], bool]:
    """The assistant message for a finished choice, and whether it called tools."""
    if features.tools and features.tools.active:
        content, calls = toolcalls.parse(features.family, text)
        if calls:
            return {"role": "assistant", "content": content or None, "tool_calls": calls}, True
    return {"role": "assistant", "content": text}, False


def stream(request: GenerationRequest, count: int, features: Features, logprobs: Logprobs, *,
           chat: bool, chunk: Callable[[int, dict[str, Any] | str, Any, str | None], dict[str, Any]],
           prefixes: list[str] | None = None) -> Stream:
    """A dict stream for a request with tool calls or logprobs.

    ``chunk(index, delta_or_text, logprobs, finish_reason)`` builds one chunk; ``prefixes``: the
    completions prompts echoed before each choice's text (their length starts ``text_offset``).
    Tool calls go out whole as they close (:class:`~turnout.shim.toolcalls.CallStreamer`);
    each chunk carries the logprobs of the tokens generated since the last one.
    """
    record = request.record
    usage = Usage(prompt_tokens=record.prompt_tokens)
    active = bool(features.tools and features.tools.active)

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        streamers = [toolcalls.CallStreamer(features.family) if active else None for _ in range(count)]
        cursors = [0] * count
        offsets = [len(p) for p in prefixes] if prefixes else [0] * count
        left = count

        def pending(i: int) -> Any:
            if features.top_logprobs is None:
                return None
            seq = request.sequences[i]
            entries = seq.logprobs[cursors[i]:]
            cursors[i] += len(entries)
            if chat:
                return logprobs.chat(entries)
            out = logprobs.completion(entries, offsets[i])
            offsets[i] += sum(len(t) for t in out["tokens"])
            return out

        try:
            for i in range(count):
                if chat:
                    yield chunk(i, {"role": "assistant", "content": ""}, None, None)
                elif prefixes and prefixes[i]:
                    yield chunk(i, prefixes[i], None, None)
            while left:
                for event in await request.queue.get():
                    if event[0] == "error":
                        raise event[1]
                    i, text = event[1], event[2]
                    streamer = streamers[i]
                    if not chat:
                        deltas: list[Any] = [text] if text else []
                    elif streamer is not None:
                        deltas = streamer.feed(text)
                    else:
                        deltas = [{"content": text}] if text else []
                    reason = None
                    if event[0] == "finish":
                        left -= 1
                        if streamer is not None:
                            deltas += streamer.finish()
                        reason = "tool_calls" if streamer is not None and streamer.calls else event[3]
                    for delta in deltas:
                        yield chunk(i, delta, pending(i), None)
                    if reason is not None:
                        yield chunk(i, {} if chat else "", pending(i), reason)
                usage.completion_tokens = record.generated_tokens
            request.complete = True
        finally:
            request.cancel()

    return Stream(chunks(), usage)

