"""The rerank answer, shaped once for every backend and engine."""

from __future__ import annotations

import uuid
from typing import Any


def rerank_response(result: dict[str, Any], body: dict[str, Any], served: str,
                    documents: list[str] | None = None) -> dict[str, Any]:
    """The rerank answer in the shape Xinference, Jina and Cohere clients read.

    ``result`` is ``{"results": [{"index", "relevance_score" or "score"}], "usage", "id"}`` as a backend or
    an engine gives it; the answer is sorted by score, cut to ``top_n`` and carries each document's text
    unless ``return_documents`` is false. ``documents``: the texts, when not ``body["documents"]``.
    """
    texts: list[str] = body["documents"] if documents is None else documents
    items = []
    for r in result.get("results") or ():
        score = r.get("relevance_score", r.get("score"))
        items.append({"index": r["index"], "relevance_score": float(score)})
    items.sort(key=lambda r: r["relevance_score"], reverse=True)
    top_n = body.get("top_n")
    if top_n is not None:
        items = items[:top_n]
    if body.get("return_documents", True):
        for item in items:
            item["document"] = {"text": texts[item["index"]]}
    usage = result.get("usage") or {}
    tokens = usage.get("prompt_tokens", usage.get("total_tokens", 0))
    return {
        "id": result.get("id") or f"rerank-{uuid.uuid4().hex}",
        "model": served,
        "results": items,
        "usage": {"prompt_tokens": tokens, "total_tokens": usage.get("total_tokens", tokens)},
        "meta": {"api_version": None, "billed_units": None, "warnings": None,
                 "tokens": {"input_tokens": tokens, "output_tokens": 0}},
    }
