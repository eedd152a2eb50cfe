"""Constrained decoding for the in-process transformers engine, with llguidance on the logits.

``response_format`` (``json_object``, ``json_schema``) and forced tool calls
become an llguidance grammar; each constrained sequence holds a
:class:`Constraint` (one ``LLMatcher``) that masks the logits before sampling
and consumes the sampled token after. llguidance was picked over xgrammar and
outlines-core by cost per token on the tiny model (``benchmarks/bench_structured.py``).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import torch

from turnout.wire.errors import OpenAIError

#: compact JSON, as a model writes it: one space after ``,`` and ``:``, none elsewhere (a random or weak model
#: given flexible whitespace can fill its whole answer with it)
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def response_format_grammar(body: dict[str, Any]) -> str | None:
    """The grammar ``response_format`` asks for, or None for plain text; 400 on a malformed one."""
    import llguidance

    fmt = body.get("response_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise OpenAIError("response_format.type must be 'text', 'json_object' or 'json_schema'",
                          param="response_format")
    if fmt["type"] == "text":
        return None
    lenient = True
    if fmt["type"] == "json_object":
        schema: Any = {"type": "object"}
    else:
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise OpenAIError("response_format.json_schema.schema must be a JSON schema object",
                              param="response_format")
        lenient = not spec.get("strict")  # strict: a keyword llguidance cannot enforce is a 400
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={**JSON_OPTIONS, "lenient": lenient})  # type: ignore[typeddict-item]
    except (ValueError, RuntimeError, TypeError) as exc:
        raise OpenAIError(f"response_format's schema cannot be used: {exc}", param="response_format") from exc


def lark_grammar(lark: str) -> str:
    import llguidance

    return llguidance.LLMatcher.grammar_from_lark(lark)


class Grammars:
    """The llguidance view of one tokenizer (built once, about a second), and matchers from it."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self._tokenizer = tokenizer
        self._vocab = vocab_size
        self._ll: Any = None
        self._lock = threading.Lock()

    def _ll_tokenizer(self) -> Any:
        with self._lock:
            if self._ll is None:
                import llguidance.hf

                self._ll = llguidance.hf.from_tokenizer(self._tokenizer, n_vocab=self._vocab)
            return self._ll

    def constraint(self, grammar: str, param: str) -> Constraint:
        import llguidance

        matcher = llguidance.LLMatcher(self._ll_tokenizer(), grammar)
        if matcher.is_error():
            raise OpenAIError(f"the grammar for '{param}' cannot be used: {matcher.get_error()}", param=param)
        return Constraint(matcher, self._vocab, getattr(self._tokenizer, "eos_token_id", None))


class Constraint:
    """One sequence's grammar state: masks its logits row, then follows the sampled token."""

    def __init__(self, matcher: Any, vocab: int, eos: int | None) -> None:
        self.matcher = matcher
        self.vocab = vocab
        self.eos = eos

    def allowed(self, device: torch.device) -> torch.Tensor:
        """A ``[vocab]`` boolean mask of the tokens the grammar allows next (numpy unpacks llguidance's
        bitmask faster than torch ops do at one row)."""
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[:self.vocab].astype(bool)
        if not allowed.any() and self.eos is not None:  # the matcher failed: end the answer
            allowed[self.eos] = True
        return torch.from_numpy(allowed).to(device)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (``[vocab']``) with every token the grammar forbids at -inf."""
        allowed = self.allowed(logits.device)
        width = logits.shape[-1]
        if width > allowed.shape[0]:
            allowed = torch.cat([allowed, allowed.new_zeros(width - allowed.shape[0])])
        return logits.masked_fill(~allowed[:width], float("-inf"))

    def advance(self, token: int) -> None:
        if not self.matcher.is_stopped():
            self.matcher.consume_token(token)
