"""Embedding and rerank models in-process, the sentence-transformers way.

``--engine transformers --model-type embedding``: a ``SentenceTransformer``
(pooling and normalisation come from the model folder's modules);
``--model-type rerank``: a ``CrossEncoder``, i.e. a sequence-classification
model that scores (query, document) pairs together. An embedding-only model
is refused for rerank at start: cosine similarity of separate embeddings is a
different (and weaker) thing than a cross-encoder's relevance score.

Requests that arrive while the model is busy are batched: each encode call
takes every input waiting at that moment and runs it in forward passes of
``batch_size`` inputs.

Engine args (``--engine-args`` JSON), all optional:

``trust_remote_code``  allow custom model code (default false)
``max_seq_length``     truncate inputs to this many tokens (default: the model's)
``batch_size``         inputs per forward pass (default 32)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import numpy as np

from turnout.shim.backends import _vectors as vec
from turnout.shim.backends.base import Backend, Health, State
from turnout.shim.backends.transformers import check_engine_args, model_path, resolve_device
from turnout.shim.rerank import rerank_response
from turnout.shimargs import ShimArgs
from turnout.wire.errors import OpenAIError

log = logging.getLogger(__name__)

ENGINE_ARGS = frozenset({"trust_remote_code", "max_seq_length", "batch_size"})


def _is_cross_encoder(path: str, trust: bool) -> bool:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or ()))


class _Batcher:
    """Runs ``fn(items)`` on one worker thread over every item waiting at once."""

    def __init__(self, fn: Any, max_queue: int) -> None:
        self._fn = fn
        self._max_queue = max_queue
        self._waiting: list[tuple[list[Any], asyncio.Future[list[Any]]]] = []
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._work(), name="sentence-batcher")
        #: sizes of the batches run so far (tests read it)
        self.batch_sizes: list[int] = []

    async def run(self, items: list[Any]) -> list[Any]:
        if sum(len(i) for i, _ in self._waiting) >= self._max_queue:
            raise OpenAIError("too many inputs are waiting; retry later", status=429,
                              type="rate_limit_error", code="queue_full", retry_after=1)
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting.append((items, fut))
        self._wake.set()
        return await fut

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = [(i, f) for i, f in self._waiting if not f.cancelled()]
            self._waiting = []
            if not batch:
                continue
            flat = [x for items, _ in batch for x in items]
            self.batch_sizes.append(len(flat))
            try:
                out = await asyncio.to_thread(self._fn, flat)
            except Exception as exc:
                log.exception("encoding failed")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(OpenAIError(f"encoding failed: {exc}", status=500,
                                                      type="server_error"))
                continue
            start = 0
            for items, fut in batch:
                if not fut.done():
                    fut.set_result(list(out[start:start + len(items)]))
                start += len(items)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for _, fut in self._waiting:
            if not fut.done():
                fut.set_exception(OpenAIError("the model is shutting down", status=503,
                                              type="server_error", code="shutting_down"))
        self._waiting = []


class SentenceBackend(Backend):
    """Embeddings (SentenceTransformer) or rerank (CrossEncoder), by ``--model-type``."""

    def __init__(self, args: ShimArgs) -> None:
        super().__init__(args)
        if args.model_type not in ("embedding", "rerank"):
            raise ValueError(f"the sentence-transformers backend serves embedding and rerank models, "
                             f"not {args.model_type!r}")
        check_engine_args(args.engine_args, ENGINE_ARGS, "transformers (sentence-transformers)")
        self.capabilities = frozenset({"embeddings"} if args.model_type == "embedding" else {"rerank"})
        self.model: Any = None
        self.dimension = 0
        self.batcher: _Batcher | None = None
        self._health = Health(State.LOADING, "loading the model")

    async def start(self) -> None:
        self._health = Health(State.LOADING, "loading the model")
        try:
            await asyncio.to_thread(self._load)
        except Exception as exc:
            self._health = Health(State.DEAD, f"loading the model failed: {exc}")
            raise
        fn = self._embed if self.args.model_type == "embedding" else self._score
        self.batcher = _Batcher(fn, self.args.max_queue * 64)
        self._health = Health(State.READY)

    def _load(self) -> None:
        extra = self.args.engine_args
        path = model_path(self.args.model)
        trust = bool(extra.get("trust_remote_code", False))
        device = str(resolve_device(self.args.device))
        if self.args.model_type == "embedding":
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(path, device=device, trust_remote_code=trust)
            getter = getattr(self.model, "get_embedding_dimension", None) \
                or self.model.get_sentence_embedding_dimension
            self.dimension = int(getter())
        else:
            if not _is_cross_encoder(path, trust):
                raise RuntimeError(
                    f"{path} is not a cross-encoder (no *ForSequenceClassification architecture): rerank "
                    "needs a model that scores query and document together, e.g. a bge-reranker; "
                    "serve this model as --model-type embedding instead")
            from sentence_transformers import CrossEncoder

            self.model = CrossEncoder(path, device=device, trust_remote_code=trust)
        if extra.get("max_seq_length"):
            self.model.max_seq_length = int(extra["max_seq_length"])
        log.info("loaded %s model %s on %s", self.args.model_type, path, device)

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
            self.batcher = None
        self.model = None
        if self._health.state is State.READY:
            self._health = Health(State.LOADING, "stopped")

    def health(self) -> Health:
        return self._health

    def model_card(self) -> dict[str, Any]:
        return {"dimensions": self.dimension} if self.dimension else {}

    # ---- worker-thread functions ------------------------------------------

    def _batch_size(self) -> int:
        return int(self.args.engine_args.get("batch_size") or 32)

    def _count_tokens(self, texts: list[Any]) -> list[int]:
        tok = self.model.tokenizer
        limit = getattr(self.model, "max_seq_length", None)
        enc = tok(texts, truncation=True, max_length=limit) if limit else tok(texts)
        return [len(ids) for ids in enc["input_ids"]]

    def _embed(self, texts: list[str]) -> list[tuple[np.ndarray, int]]:
        vectors = self.model.encode(texts, batch_size=self._batch_size(), convert_to_numpy=True,
                                    show_progress_bar=False)
        return list(zip(np.asarray(vectors, dtype=np.float32), self._count_tokens(texts), strict=True))

    def _score(self, pairs: list[tuple[str, str]]) -> list[tuple[float, int]]:
        scores = self.model.predict(pairs, batch_size=self._batch_size(), convert_to_numpy=True,
                                    show_progress_bar=False)
        scores = np.asarray(scores, dtype=np.float32).reshape(len(pairs), -1)[:, 0]
        return list(zip((float(s) for s in scores), self._count_tokens(pairs), strict=True))

    # ---- requests -----------------------------------------------------------

    def _ready(self) -> _Batcher:
        if self.batcher is None or self._health.state is not State.READY:
            raise OpenAIError("the model is not loaded yet", status=503, type="server_error",
                              code="model_loading")
        return self.batcher

    async def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.args.model_type != "embedding":
            return await super().embeddings(body)
        batcher = self._ready()
        texts = [x if isinstance(x, str) else self.model.tokenizer.decode(x, skip_special_tokens=True)
                 for x in vec.embedding_inputs(body)]
        vec.check_dimensions(body.get("dimensions"), self.dimension)
        results = await batcher.run(texts)
        vectors = np.stack([v for v, _ in results])
        vectors = vec.resize(vectors, body.get("dimensions"), self.dimension)
        return vec.embeddings_response(self.args.served_model_name, vectors, body.get("encoding_format"),
                                       sum(n for _, n in results))

    async def rerank(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.args.model_type != "rerank":
            return await super().rerank(body)
        batcher = self._ready()
        query, docs = vec.rerank_documents(body)
        results = await batcher.run([(query, d) for d in docs])
        tokens = sum(n for _, n in results)
        scores = {"results": [{"index": i, "relevance_score": s} for i, (s, _) in enumerate(results)],
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return rerank_response(scores, body, self.args.served_model_name, docs)
