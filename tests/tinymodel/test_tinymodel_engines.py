"""The tiny model runs on transformers and on llama.cpp, and both give the same greedy tokens."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from turnout.tinymodel import TinyModel

N_NEW = 24
CHAT = [
    {"role": "system", "content": "You answer in one sentence."},
    {"role": "user", "content": "Tell me about the harbour."},
]


@pytest.fixture(scope="module")
def hf(tiny_model: TinyModel) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_model.hf_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.hf_dir, dtype=torch.float32).eval()
    return tok, model


@pytest.fixture(scope="module")
def llama(tiny_model: TinyModel) -> Iterator[Any]:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(tiny_model.gguf_path)
    params.n_ctx = 512
    params.n_parallel = 1
    params.cpuparams.n_threads = 2
    params.cpuparams_batch.n_threads = 2
    server = xllamacpp.Server(params)
    yield server
    del server


def _greedy_hf(model: Any, ids: list[int], n: int, banned: tuple[int, ...] = ()) -> tuple[list[int], list[float]]:
    """Plain greedy loop (no EOS stop) returning the chosen ids and their log-probabilities.

    ``banned`` ids are never chosen, as llama.cpp's ``ignore_eos`` masks end-of-generation tokens; the
    log-probabilities are those of the whole distribution, as llama.cpp reports them.
    """
    import torch

    out: list[int] = []
    logps: list[float] = []
    seq = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=seq).logits[0, -1].float()
            lp = torch.log_softmax(logits, dim=-1)
            choose = lp.clone()
            if banned:
                choose[list(banned)] = float("-inf")
            nxt = int(torch.argmax(choose))
            out.append(nxt)
            logps.append(float(lp[nxt]))
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
    return out, logps


def _llama_ids(result: dict[str, Any]) -> tuple[list[int], list[float]]:
    content = result["choices"][0]["logprobs"]["content"]
    return [c["id"] for c in content], [c["logprob"] for c in content]


def _distinct(ids: list[int]) -> int:
    return len(set(ids))


def test_transformers_generates(tiny_model: TinyModel, hf: tuple[Any, Any]) -> None:
    tok, model = hf
    inputs = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=N_NEW, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert 1 <= len(new) <= N_NEW
    text = tok.decode(new, skip_special_tokens=True)
    assert text.strip(), "the model answered nothing"
    assert _distinct(new) > 2, f"degenerate output: {text!r}"


def test_llama_cpp_generates_chat(tiny_model: TinyModel, llama: Any) -> None:
    result = llama.handle_chat_completions({"messages": CHAT, "max_tokens": N_NEW, "temperature": 0})
    choice = result["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    assert result["usage"]["completion_tokens"] >= 1


def test_llama_cpp_streams(tiny_model: TinyModel, llama: Any) -> None:
    chunks: list[dict[str, Any]] = []
    llama.handle_completions(
        {"prompt": "The harbour", "max_tokens": 6, "temperature": 0, "stream": True}, chunks.append
    )
    texts = [c["choices"][0]["text"] for c in chunks if c.get("choices")]
    assert len([t for t in texts if t]) >= 2
    assert "".join(texts).strip()


def test_golden_same_tokens_from_token_ids(hf: tuple[Any, Any], llama: Any) -> None:
    """Same prompt ids in, greedy, no EOS stop: identical ids out, log-probs close."""
    tok, model = hf
    prompt = tok("Small models are useful", add_special_tokens=False)["input_ids"]
    end_ids = tuple({tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")} - {None})
    want, want_lp = _greedy_hf(model, prompt, N_NEW, banned=end_ids)
    result = llama.handle_completions(
        {"prompt": prompt, "max_tokens": N_NEW, "temperature": 0, "ignore_eos": True, "logprobs": 1}
    )
    got, got_lp = _llama_ids(result)
    assert got == want, f"llama.cpp {tok.decode(got)!r} != transformers {tok.decode(want)!r}"
    assert max(abs(a - b) for a, b in zip(got_lp, want_lp, strict=True)) < 0.05
    assert _distinct(want) > 3, "greedy output should not be one token repeated"


def test_golden_same_tokens_through_each_chat_template(tiny_model: TinyModel, hf: tuple[Any, Any], llama: Any) -> None:
    """Each engine applies its own chat template and tokenizer; prompts and answers must match.

    Generation stops at the end token here, as a chat client sees it (llama.cpp's
    ``ignore_eos`` masks end tokens, which a plain greedy loop does not).
    """
    tok, model = hf
    prompt = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=True)
    prompt_ids = list(prompt["input_ids"])
    want, _ = _greedy_hf(model, prompt_ids, N_NEW)
    hit_eos = tiny_model.eos_token_id in want
    if hit_eos:  # llama.cpp reports the end token among the log-probs but not in the content
        want = want[: want.index(tiny_model.eos_token_id) + 1]
    result = llama.handle_chat_completions(
        {"messages": CHAT, "max_tokens": N_NEW, "temperature": 0, "logprobs": True, "top_logprobs": 1}
    )
    got, _ = _llama_ids(result)
    assert result["usage"]["prompt_tokens"] == len(prompt_ids)
    assert got == want, f"llama.cpp {tok.decode(got)!r} != transformers {tok.decode(want)!r}"
    assert result["choices"][0]["finish_reason"] == ("stop" if hit_eos else "length")
    assert result["choices"][0]["message"]["content"] == tok.decode(want, skip_special_tokens=True)


def test_golden_text_prompt_tokenizes_the_same(hf: tuple[Any, Any], llama: Any) -> None:
    """A raw text prompt (with punctuation, digits and non-ASCII) gives the same greedy continuation."""
    tok, model = hf
    text = "Rivers begin as small streams, 12 of them; naïve café!"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    want, _ = _greedy_hf(model, ids, 8)
    result = llama.handle_completions(
        {"prompt": text, "max_tokens": 8, "temperature": 0, "ignore_eos": True, "logprobs": 1}
    )
    got, _ = _llama_ids(result)
    assert result["usage"]["prompt_tokens"] == len(ids)
    assert got == want
