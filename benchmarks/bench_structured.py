"""The cost of constrained decoding per token on the tiny model: llguidance, xgrammar, outlines-core.

For one JSON schema, each library compiles it against the tiny model's
tokenizer, then steps through a valid document token by token: compute the
next-token mask, accept the token. That is the work a grammar adds to every
decode step. The end-to-end part then times greedy decoding through the
transformers engine with and without ``response_format: json_schema``
(llguidance, the library the engine uses).

    python benchmarks/bench_structured.py [--lib-path DIR] [--reps 20]

``--lib-path`` adds a folder to ``sys.path`` (e.g. one made with ``pip install
--no-deps --target DIR xgrammar outlines-core``) so libraries the project does
not depend on can be measured without installing them in its venv; a library
that cannot be imported is reported as missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "units": {"enum": ["metric", "imperial"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
    },
    "required": ["city", "days", "units", "tags"],
    "additionalProperties": False,
}
DOC = {"city": "Harbour town by the sea", "days": 7, "units": "metric", "tags": ["rain", "wind", "tea"]}


def _bench(step: Callable[[], Callable[[int], None]], tokens: list[int], reps: int) -> float:
    """Median microseconds per token of mask + accept over the document."""
    per = []
    for _ in range(reps):
        advance = step()
        t0 = time.perf_counter()
        for t in tokens:
            advance(t)
        per.append((time.perf_counter() - t0) / len(tokens) * 1e6)
    return statistics.median(per)


def llguidance_case(tok: Any, vocab: int, text: str) -> tuple[float, Callable[[], Callable[[int], None]]]:
    import llguidance
    import llguidance.hf
    import torch

    from turnout.shim.structured import JSON_OPTIONS, Constraint

    t0 = time.perf_counter()
    ll = llguidance.hf.from_tokenizer(tok, n_vocab=vocab)
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(SCHEMA), defaults=JSON_OPTIONS)
    llguidance.LLMatcher(ll, grammar)
    setup = time.perf_counter() - t0

    def start() -> Callable[[int], None]:
        m = llguidance.LLMatcher(ll, grammar)
        constraint = Constraint(m, vocab, tok.eos_token_id)
        logits = torch.zeros(vocab)

        def advance(t: int) -> None:
            constraint.mask(logits)  # what the engine does per step: the mask, applied to a logits row
            constraint.advance(t)
        return advance
    return setup, start


def xgrammar_case(tok: Any, vocab: int, text: str) -> tuple[float, Callable[[], Callable[[int], None]]]:
    import torch
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)
    compiled = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(SCHEMA), any_whitespace=False,
                                                             separators=(", ", ": "))
    setup = time.perf_counter() - t0
    mask = xgr.allocate_token_bitmask(1, vocab)
    logits = torch.zeros(1, vocab)

    def start() -> Callable[[int], None]:
        m = xgr.GrammarMatcher(compiled)

        def advance(t: int) -> None:
            m.fill_next_token_bitmask(mask)
            xgr.apply_token_bitmask_inplace(logits, mask)
            assert m.accept_token(t)
        return advance
    return setup, start


def outlines_case(tok: Any, vocab: int, text: str) -> tuple[float, Callable[[], Callable[[int], None]]]:
    import torch
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    t0 = time.perf_counter()
    # the tiny model's tokenizer is byte-level BPE: GPT-2's printable stand-ins for the 256 bytes
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in keep]
    byte_of = {chr(b): b for b in keep} | {chr(256 + n): b for n, b in enumerate(moved)}
    pieces: dict[bytes, list[int]] = {}
    eos = tok.eos_token_id
    special = set(tok.all_special_ids)
    for i, piece in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))):
        if i not in special:
            pieces.setdefault(bytes(byte_of[c] for c in piece), []).append(i)
    vocabulary = Vocabulary(eos, pieces)
    regex = build_regex_from_schema(json.dumps(SCHEMA), r" ?")
    index = Index(regex, vocabulary)
    setup = time.perf_counter() - t0

    def start() -> Callable[[int], None]:
        g = Guide(index)

        logits = torch.zeros(vocab)

        def advance(t: int) -> None:
            allowed = torch.tensor(g.get_tokens())
            logits.index_fill(0, allowed, 0.0)
            g.advance(t)
        return advance
    return setup, start


async def end_to_end(hf_dir: str, tokens: int, reps: int) -> dict[str, float]:
    from turnout.shim.backends.transformers import TransformersBackend
    from turnout.shimargs import ShimArgs

    backend = TransformersBackend(ShimArgs(engine="transformers", model=hf_dir, served_model_name="tiny",
                                           engine_args={"threads": 1}))
    await backend.start()
    messages = [{"role": "user", "content": "Weather?"}]
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "strict": True, "schema": SCHEMA}}
    out = {}
    try:
        for name, extra in (("plain", {}), ("json_schema", {"response_format": fmt})):
            per = []
            for _ in range(reps):
                t0 = time.perf_counter()
                answer = await backend.chat({"messages": messages, "max_tokens": tokens, "temperature": 0, **extra})
                n = answer["usage"]["completion_tokens"]
                per.append((time.perf_counter() - t0) / n * 1e3)
            out[name] = statistics.median(per)
    finally:
        await backend.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib-path", action="append", default=[])
    ap.add_argument("--reps", type=int, default=20)
    ns = ap.parse_args()
    sys.path[:0] = ns.lib_path
    import torch
    from transformers import AutoTokenizer

    from turnout.tinymodel.builder import build_tiny_model

    torch.set_num_threads(1)
    model = build_tiny_model()
    tok = AutoTokenizer.from_pretrained(model.hf_dir)
    text = json.dumps(DOC, separators=(", ", ": "))
    tokens = tok(text, add_special_tokens=False).input_ids
    rows = []
    for name, case in (("llguidance", llguidance_case), ("xgrammar", xgrammar_case),
                       ("outlines-core", outlines_case)):
        try:
            setup, start = case(tok, model.vocab_size, text)
            rows.append((name, setup * 1e3, _bench(start, tokens, ns.reps)))
        except ImportError as exc:
            rows.append((name, float("nan"), float("nan")))
            print(f"{name}: not importable ({exc})", file=sys.stderr)
    print(f"schema document: {len(tokens)} tokens, vocabulary {model.vocab_size}, 1 thread")
    print("| library | compile (ms) | mask, apply to the logits, accept: per token (µs) |")
    print("|---|---:|---:|")
    for name, setup, per in rows:
        print(f"| {name} | {setup:.1f} | {per:.1f} |")
    e2e = asyncio.run(end_to_end(str(model.hf_dir), 48, max(3, ns.reps // 4)))
    print(f"\ntransformers engine, greedy, 1 thread: plain {e2e['plain']:.2f} ms/token, "
          f"json_schema (llguidance) {e2e['json_schema']:.2f} ms/token")


if __name__ == "__main__":
    main()
