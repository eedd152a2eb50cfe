"""Streaming text helpers for in-process generation: detokenizing and stop strings."""

from __future__ import annotations

from typing import Any


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Emits only text that is complete: a byte-level token that ends inside a
    UTF-8 character, or a SentencePiece token whose leading space depends on
    its neighbour, is held back until the next token settles it. Fast
    tokenizers use the Rust ``DecodeStream``; others decode a short window of
    recent tokens twice per step.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._stream: Any = None
        if self._backend is not None:
            try:
                from tokenizers.decoders import DecodeStream
            except ImportError:  # tokenizers < 0.21
                self._backend = None
            else:
                self._stream = DecodeStream(skip_special_tokens=True)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        """Append one token; return the text it completes (maybe empty)."""
        self.ids.append(token_id)
        if self._stream is not None:
            return self._stream.step(self._backend, token_id) or ""
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever text is still held back, when generation ends."""
        if self._stream is not None:
            return ""  # DecodeStream holds back only bytes that do not form a character yet
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return after[len(before):] if len(after) > len(before) else ""


class StopMatcher:
    """Finds stop strings in streamed text and holds back possible prefixes of them.

    ``feed`` returns the text safe to emit and whether a stop string matched;
    the stop string itself is never emitted (OpenAI semantics).
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._text = ""
        self._emitted = 0

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return self._text[:self._emitted]

    def feed(self, delta: str) -> tuple[str, bool]:
        if not self._stops:
            self._text += delta
            self._emitted = len(self._text)
            return delta, False
        start = max(0, len(self._text) - self._longest + 1)
        self._text += delta
        hits = [i for i in (self._text.find(s, start) for s in self._stops) if i >= 0]
        if hits:
            end = min(hits)
            out = self._text[self._emitted:end]
            self._text = self._text[:end]
            self._emitted = end
            return out, True
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(self._text)), hold, -1):
                if self._text.endswith(stop[:k]):
                    hold = k
                    break
        safe = len(self._text) - hold
        out = self._text[self._emitted:safe]
        self._emitted = max(self._emitted, safe)
        return out, False

    def flush(self) -> str:
        """Release held-back text when generation ends without a stop string."""
        out = self._text[self._emitted:]
        self._emitted = len(self._text)
        return out
