"""Embedding request/response helpers shared by the sentence-transformers and llama.cpp backends."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from turnout.shim.backends._openai import texts_or_token_ids
from turnout.wire.errors import OpenAIError


def embedding_inputs(body: dict[str, Any]) -> list[str | list[int]]:
    """``input`` as a list of strings or token id lists."""
    return texts_or_token_ids(body, "input", empty_ids=True)


def check_dimensions(dimensions: Any, full: int) -> None:
    """400 unless ``dimensions`` is absent or between 1 and the model's embedding size."""
    if dimensions is None:
        return
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
        raise OpenAIError("'dimensions' must be a positive integer", param="dimensions")
    if dimensions > full:
        raise OpenAIError(f"'dimensions' is {dimensions} but this model's embeddings have {full}",
                          param="dimensions")


def resize(vectors: np.ndarray, dimensions: int | None, full: int) -> np.ndarray:
    """Matryoshka-style ``dimensions``: keep the first ``dimensions`` values and L2-normalise again."""
    check_dimensions(dimensions, full)
    if dimensions is None or dimensions == full:
        return vectors
    cut = vectors[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return cut / np.maximum(norms, 1e-12)


def encode_one(vector: np.ndarray, encoding_format: str | None) -> list[float] | str:
    if encoding_format in (None, "float"):
        return [float(x) for x in vector]
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    raise OpenAIError("'encoding_format' must be 'float' or 'base64'", param="encoding_format")


def embeddings_response(model: str, vectors: np.ndarray, encoding_format: str | None,
                        prompt_tokens: int) -> dict[str, Any]:
    return {
        "object": "list",
        "model": model,
        "data": [{"object": "embedding", "index": i, "embedding": encode_one(v, encoding_format)}
                 for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def rerank_documents(body: dict[str, Any]) -> tuple[str, list[str]]:
    query = body.get("query")
    docs = body.get("documents")
    if not isinstance(query, str):
        raise OpenAIError("'query' must be a string", param="query")
    if not isinstance(docs, list) or not docs:
        raise OpenAIError("'documents' must be a non-empty list", param="documents")
    texts = []
    for i, d in enumerate(docs):
        if isinstance(d, dict) and isinstance(d.get("text"), str):
            d = d["text"]
        if not isinstance(d, str):
            raise OpenAIError(f"documents[{i}] must be a string or {{'text': ...}}", param="documents")
        texts.append(d)
    return query, texts
