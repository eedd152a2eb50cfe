"""The llama.cpp backend: llama.cpp's own server code, in-process, through ``xllamacpp``.

``xllamacpp.Server`` runs llama-server's slots and continuous batching on a
thread of this process, and binds llama-server's own HTTP listener to a
random port on 127.0.0.1 (``Server.listening_address``).

Streamed chat and completions are relayed from that listener (the proxy
backends' relay, ``_relay.py``): tokens go from llama.cpp's threads to its
socket and through the shim's event loop as bytes, so they never need the
GIL one by one (a callback into Python per token, with the event loop
holding the GIL and a 5 ms switch interval, is what made the in-process path
slow). A client that goes away closes that connection, and llama-server
cancels the task. Everything else (non-streamed answers, embeddings,
rerank) stays in-process: each request is one blocking ``handle_*`` call
(run on a worker thread here) and streamed chunks arrive through a callback
whose return value ``True`` cancels the request inside llama.cpp.

``--model`` is a ``.gguf`` file or a folder holding one; with several,
``--quantization`` (e.g. ``Q4_K_M``) picks the file, and a split model
(``-00001-of-0000N.gguf``) is loaded from its first part.

Engine args (``--engine-args`` JSON) set fields of ``xllamacpp.CommonParams``
by name (``n_ctx``, ``n_parallel``, ``n_gpu_layers``, ``n_batch``,
``flash_attn_type``, ``cache_type_k``...), nested ones with a dot
(``"sampling.top_k": 40``, ``"cpuparams.n_threads": 8``), and llama-server
CLI spellings for the common ones (``ctx_size``, ``parallel``, ``ngl``,
``threads``). An unknown name fails at start with the list of known ones.

Non-streamed requests are streamed from llama.cpp and put together here, so a
client that goes away cancels them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from turnout.shim.backends import _vectors as vec
from turnout.shim.backends._openai import new_id
from turnout.shim.backends._relay import EngineConnectionError, EnginePool, EngineResponse, relay_response
from turnout.shim.backends.base import Backend, BackendError, Health, State, Stream, Usage
from turnout.shimargs import ShimArgs

log = logging.getLogger(__name__)

#: llama-server CLI spellings -> CommonParams fields
ALIASES = {
    "ctx_size": "n_ctx", "c": "n_ctx", "parallel": "n_parallel", "np": "n_parallel",
    "ngl": "n_gpu_layers", "gpu_layers": "n_gpu_layers", "batch_size": "n_batch",
    "ubatch_size": "n_ubatch", "threads": "cpuparams.n_threads", "n_threads": "cpuparams.n_threads",
    "threads_batch": "cpuparams_batch.n_threads", "n_threads_batch": "cpuparams_batch.n_threads",
    "embeddings": "embedding", "jinja": "use_jinja", "cont_batching": "cont_batching",
}
#: fields the backend owns: set from the shim's own arguments
RESERVED = frozenset({"model", "model_alias", "port", "hostnames", "api_keys"})
DEFAULT_PARALLEL = 4
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")
_LLAMA_RECORDS = 1024


@dataclass
class StreamRecord:
    """What happened to one streamed request (tests read it)."""

    id: str
    chunks: int = 0
    chunks_after_cancel: int = 0
    cancelled: bool = False
    finished: bool = False


def find_gguf(model: str, quantization: str | None) -> Path:
    """The GGUF file to load for ``--model`` (a file or a folder) and ``--quantization``."""
    path = Path(model[len("file://"):] if model.startswith("file://") else model)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"--model {model}: no such file or folder")
    files = sorted(p for p in path.rglob("*.gguf") if "mmproj" not in p.name.lower())
    files = [p for p in files if not (m := _SPLIT.search(p.name)) or m.group(1) == "00001"]
    if quantization:
        wanted = quantization.lower().replace("-", "_")
        matching = [p for p in files if wanted in p.name.lower().replace("-", "_")]
        if matching:
            files = matching
        elif len(files) > 1:
            raise FileNotFoundError(f"--model {model}: no .gguf file matches quantization {quantization!r}; "
                                    f"found {', '.join(p.name for p in files)}")
    if not files:
        raise FileNotFoundError(f"--model {model}: the folder holds no .gguf file")
    if len(files) > 1:
        raise FileNotFoundError(f"--model {model}: several .gguf files ({', '.join(p.name for p in files)}); "
                                "pass --quantization to pick one")
    return files[0]


def _normalise(key: str) -> str:
    key = key.replace("-", "_").lstrip("_")
    return ALIASES.get(key, key)


def _settable(params: Any) -> list[str]:
    return sorted(n for n in dir(params) if not n.startswith("_") and not callable(getattr(params, n, None)))


def _enum_member(kind: type[enum.Enum], name: str) -> enum.Enum:
    """``"mean"`` -> ``LLAMA_POOLING_TYPE_MEAN``, ``"q8_0"`` -> ``GGML_TYPE_Q8_0``."""
    wanted = name.upper()
    for member in kind:
        if member.name == wanted or member.name.endswith("_" + wanted):
            return member
    raise ValueError(f"{name!r} is not one of {', '.join(m.name for m in kind)}")


def apply_engine_args(params: Any, engine_args: dict[str, Any]) -> None:
    """Set ``engine_args`` on a ``CommonParams``; ValueError naming the key for unknown or bad ones."""
    for raw, value in engine_args.items():
        key = _normalise(raw)
        if key in RESERVED:
            raise ValueError(f"engine arg {raw!r} is set by the shim from its own arguments; remove it")
        *parents, leaf = key.split(".")
        target = params
        for part in parents:
            if not hasattr(target, part):
                raise ValueError(f"unknown llama.cpp engine arg {raw!r}")
            target = getattr(target, part)
        if not hasattr(target, leaf) or callable(getattr(target, leaf)):
            known = ", ".join(_settable(target))
            raise ValueError(f"unknown llama.cpp engine arg {raw!r}; known: {known}")
        try:
            current = getattr(target, leaf)
            if isinstance(current, set) and isinstance(value, list):
                value = set(value)
            elif isinstance(current, enum.Enum) and isinstance(value, str):
                value = _enum_member(type(current), value)
            setattr(target, leaf, value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"llama.cpp engine arg {raw!r}={value!r}: {exc}") from exc


def _error(payload: dict[str, Any], param: str | None = None) -> BackendError:
    err = payload.get("error", payload)
    if not isinstance(err, dict):
        err = {"message": str(err)}
    status = int(err.get("code") or 500) if str(err.get("code", "")).isdigit() else 500
    kind = str(err.get("type") or "server_error")
    code = None
    if kind == "exceed_context_size_error":
        kind, code = "invalid_request_error", "context_length_exceeded"
    elif kind == "not_supported_error":
        kind, code = "invalid_request_error", "unsupported"
    elif kind == "unavailable_error":
        kind = "server_error"
    elif status < 500:
        kind = "invalid_request_error"
    return BackendError(str(err.get("message") or "llama.cpp failed"), status=status, type=kind,
                        param=param if code == "context_length_exceeded" else None, code=code)


def _merge_delta(message: dict[str, Any], delta: dict[str, Any]) -> None:
    """Add one chat delta to the message being put together (OpenAI streaming semantics)."""
    for key, value in delta.items():
        if value is None:
            continue
        if key == "tool_calls":
            calls = message.setdefault("tool_calls", [])
            for part in value:
                i = part.get("index", len(calls))
                while len(calls) <= i:
                    calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                call = calls[i]
                for field in ("id", "type"):
                    if part.get(field):
                        call[field] = part[field]
                fn = part.get("function") or {}
                call["function"]["name"] += fn.get("name") or ""
                call["function"]["arguments"] += fn.get("arguments") or ""
        elif key == "role":
            message["role"] = value
        elif isinstance(value, str):
            message[key] = (message.get(key) or "") + value
        else:
            message[key] = value


async def _gather(stream: Stream, *, chat: bool) -> dict[str, Any]:
    """Turn a chunk stream into the non-streamed response body."""
    head: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    usage: dict[str, Any] | None = None
    chunks = stream.chunks
    try:
        async for chunk in chunks:
            assert isinstance(chunk, dict)
            for key in ("id", "created", "model", "system_fingerprint"):
                if key in chunk:
                    head.setdefault(key, chunk[key])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk.get("choices") or ():
                i = int(c.get("index", 0))
                acc = choices.setdefault(i, {"index": i, "finish_reason": None, "logprobs": None})
                if chat:
                    _merge_delta(acc.setdefault("message", {"role": "assistant"}), c.get("delta") or {})
                    content = (c.get("logprobs") or {}).get("content")
                    if content:
                        acc["logprobs"] = {"content": [*((acc["logprobs"] or {}).get("content") or []), *content]}
                else:
                    acc["text"] = acc.get("text", "") + (c.get("text") or "")
                if c.get("finish_reason"):
                    acc["finish_reason"] = c["finish_reason"]
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    for acc in choices.values():
        message = acc.get("message")
        if message is not None and "content" not in message:
            message["content"] = None if message.get("tool_calls") else ""
    return {**head, "object": "chat.completion" if chat else "text_completion",
            "choices": [choices[i] for i in sorted(choices)],
            "usage": usage or {"prompt_tokens": stream.usage.prompt_tokens,
                               "completion_tokens": stream.usage.completion_tokens,
                               "total_tokens": stream.usage.prompt_tokens + stream.usage.completion_tokens}}


def _listener_pool(server: Any) -> EnginePool | None:
    """Keep-alive connections to llama-server's own listener, or None if it has none we can reach."""
    address = str(getattr(server, "listening_address", "") or "")
    m = re.fullmatch(r"https?://(127\.0\.0\.1|localhost):(\d+)/?", address)
    if not m or int(m.group(2)) == 0:
        log.warning("llama.cpp listens on %r; streaming in-process instead", address)
        return None
    # llama-server (cpp-httplib) closes the connection after each streamed answer, so keeping it
    # would only earn a failed write and a retry: one fresh loopback connection per stream
    return EnginePool("127.0.0.1", int(m.group(2)), max_pooled=0)


async def _stream_lost(exc: EngineConnectionError) -> BackendError:
    return BackendError(f"lost llama.cpp's stream: {exc}", status=502, type="server_error",
                        code="engine_stream_lost")


class _End:
    pass


_END = _End()


class LlamaCppBackend(Backend):
    """Chat, completions, embeddings and rerank from a GGUF model through xllamacpp."""

    def __init__(self, args: ShimArgs) -> None:
        super().__init__(args)
        caps = {"llm": {"chat", "completions"}, "embedding": {"embeddings"}, "rerank": {"rerank"}}
        self.capabilities = frozenset(caps[args.model_type])
        self.server: Any = None
        self.gguf: Path | None = None
        self.records: OrderedDict[str, StreamRecord] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None
        self.http: EnginePool | None = None
        self._active: set[EngineResponse] = set()
        self._health = Health(State.LOADING, "loading the model")
        # fail on unknown engine args before anything loads
        self._check_args()

    def _check_args(self) -> None:
        try:
            import xllamacpp
        except ImportError as exc:
            raise ImportError("--engine llama.cpp needs the xllamacpp package (the llama.cpp image installs it)") \
                from exc
        apply_engine_args(xllamacpp.CommonParams(), self.args.engine_args)

    def params(self) -> Any:
        """The ``CommonParams`` this backend starts llama.cpp with."""
        import xllamacpp

        args = self.args
        self.gguf = find_gguf(args.model, args.quantization)
        p = xllamacpp.CommonParams()
        p.model.path = str(self.gguf)
        p.model_alias = {args.served_model_name}
        p.port = 0
        p.hostnames = ["127.0.0.1"]
        p.n_parallel = DEFAULT_PARALLEL
        p.kv_unified = True  # every slot may use the whole context
        p.n_gpu_layers = 0 if args.device == "cpu" else 999
        if args.model_type == "embedding":
            p.embedding = True
        elif args.model_type == "rerank":
            p.embedding = True
            p.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_RANK
        apply_engine_args(p, args.engine_args)
        return p

    async def start(self) -> None:
        self._health = Health(State.LOADING, "loading the model")
        try:
            params = self.params()
            workers = max(int(params.n_parallel) * 2, 8)
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llamacpp")
            import xllamacpp

            self.server = await asyncio.to_thread(xllamacpp.Server, params)
            self.http = _listener_pool(self.server)
        except Exception as exc:
            self._health = Health(State.DEAD, f"llama.cpp failed to start: {exc}")
            if isinstance(exc, RuntimeError) and "init server" in str(exc):
                raise RuntimeError(f"llama.cpp could not load {self.gguf}; its log above says why") from exc
            raise
        self._health = Health(State.READY)
        log.info("llama.cpp serves %s from %s", self.args.served_model_name, self.gguf)

    async def stop(self) -> None:
        http, self.http = self.http, None
        if http is not None:
            for resp in list(self._active):
                resp.close()
            await http.close()
        server, self.server = self.server, None
        if server is not None:
            holder = [server]
            del server
            # dropping the last reference runs the destructor, which stops llama.cpp's loop and
            # joins its thread: do that off the event loop
            await asyncio.to_thread(holder.clear)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._health.state is State.READY:
            self._health = Health(State.LOADING, "stopped")

    def health(self) -> Health:
        return self._health

    # ---- requests -------------------------------------------------------------

    def _ready(self) -> Any:
        if self.server is None or self._health.state is not State.READY:
            raise BackendError("the model is not loaded yet", status=503, type="server_error",
                               code="model_loading")
        return self.server

    async def _call(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    async def chat(self, body: dict[str, Any]) -> dict[str, Any] | Stream:
        server = self._ready()
        return await self._generate(server.handle_chat_completions, body, "messages", chat=True)

    async def completions(self, body: dict[str, Any]) -> dict[str, Any] | Stream:
        server = self._ready()
        return await self._generate(server.handle_completions, body, "prompt", chat=False)

    async def _generate(self, handle: Any, body: dict[str, Any], param: str, *,
                        chat: bool) -> dict[str, Any] | Stream:
        if body.get("stream"):
            if self.http is not None:
                return await self._http_stream("/v1/chat/completions" if chat else "/v1/completions", body, param)
            return await self._stream(handle, body, param)
        # Non-streamed answers are streamed internally and put together here: llama.cpp can only
        # cancel a streamed task, and a client that goes away must stop the generation.
        inner = {**body, "stream": True, "stream_options": {"include_usage": True}}
        stream = await self._stream(handle, inner, param)
        return await _gather(stream, chat=chat)

    async def _stream(self, handle: Any, body: dict[str, Any], param: str) -> Stream:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        record = StreamRecord(id="")

        def on_chunk(chunk: str) -> bool:
            record.chunks += 1
            if record.cancelled:
                record.chunks_after_cancel += 1
                return True  # tells llama.cpp to cancel the task
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, chunk)
            return False

        def run() -> None:
            try:
                handle(json.dumps(body), on_chunk)
            finally:
                record.finished = True
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(queue.put_nowait, _END)

        task = loop.run_in_executor(self._pool, run)
        try:
            first = await queue.get()
        except BaseException:
            record.cancelled = True
            raise
        if first is _END:
            await task  # re-raises what llama.cpp raised, if anything
            raise BackendError("llama.cpp returned no output", status=500, type="server_error")
        head = self._parse(first, param)
        record.id = str(head.get("id", ""))
        self.records[record.id] = record
        while len(self.records) > _LLAMA_RECORDS:
            self.records.popitem(last=False)
        stream = Stream(chunks=None, usage=Usage())  # type: ignore[arg-type]

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            item: Any = head
            try:
                while True:
                    if isinstance(item, dict):
                        usage = item.get("usage")
                        if isinstance(usage, dict):
                            stream.usage.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                            stream.usage.completion_tokens = int(usage.get("completion_tokens") or 0)
                        item.pop("timings", None)
                        yield item
                    item = await queue.get()
                    if item is _END:
                        return
                    item = self._parse(item, param)
            finally:
                if not record.finished:
                    record.cancelled = True

        stream.chunks = chunks()
        return stream

    async def _http_stream(self, path: str, body: dict[str, Any], param: str) -> Stream:
        """A streamed answer relayed as bytes from llama-server's own listener."""
        pool = self.http
        assert pool is not None
        opts = dict(body.get("stream_options") or {})
        keep_usage = bool(opts.get("include_usage"))
        opts["include_usage"] = True  # always count tokens; the relay drops the usage event if not asked for
        payload = json.dumps({**body, "stream_options": opts}, separators=(",", ":"), ensure_ascii=False)
        try:
            resp = await pool.request("POST", path, payload.encode())
            if resp.status >= 400:
                raw = await resp.read()
        except EngineConnectionError as exc:
            raise BackendError(f"llama.cpp's server did not answer: {exc}", status=503, type="server_error",
                               code="engine_unavailable", retry_after=5) from exc
        if resp.status >= 400:
            try:
                err = json.loads(raw)
            except ValueError:
                err = {"message": raw.decode(errors="replace")[:500], "code": resp.status}
            if not isinstance(err, dict):
                err = {"message": str(err), "code": resp.status}
            raise _error(err, param)
        usage = Usage()
        return Stream(self._relay(resp, keep_usage, usage), usage)

    def _relay(self, resp: EngineResponse, keep_usage: bool, usage: Usage) -> AsyncIterator[bytes]:
        return relay_response(resp, usage, keep_usage=keep_usage, active=self._active, on_error=_stream_lost)

    @staticmethod
    def _parse(raw: str, param: str) -> dict[str, Any]:
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BackendError(f"llama.cpp sent a malformed chunk: {raw[:200]!r}", status=500,
                               type="server_error") from exc
        if not isinstance(item, dict) or "error" in item:
            raise _error(item if isinstance(item, dict) else {"message": str(item)}, param)
        return item

    async def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.args.model_type != "embedding":
            return await super().embeddings(body)
        server = self._ready()
        inputs = vec.embedding_inputs(body)
        request = {"input": inputs, "encoding_format": "float"}
        result = json.loads(await self._call(server.handle_embeddings, json.dumps(request)))
        if not isinstance(result, dict) or "error" in result or "data" not in result:
            raise _error(result if isinstance(result, dict) else {"message": str(result)}, "input")
        rows = sorted(result["data"], key=lambda d: d.get("index", 0))
        vectors = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        vectors = vec.resize(vectors, body.get("dimensions"), vectors.shape[1])
        tokens = int((result.get("usage") or {}).get("prompt_tokens") or 0)
        return vec.embeddings_response(self.args.served_model_name, vectors, body.get("encoding_format"),
                                       tokens)

    async def rerank(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.args.model_type != "rerank":
            return await super().rerank(body)
        server = self._ready()
        query, docs = vec.rerank_documents(body)
        request = {"query": query, "documents": docs}
        result = json.loads(await self._call(server.handle_rerank, json.dumps(request)))
        if not isinstance(result, dict) or "error" in result or "results" not in result:
            raise _error(result if isinstance(result, dict) else {"message": str(result)}, "documents")
        ranked = sorted(({"index": r["index"], "relevance_score": float(r["relevance_score"])}
                         for r in result["results"]), key=lambda r: r["relevance_score"], reverse=True)
        top_n = body.get("top_n")
        if top_n is not None:
            ranked = ranked[:top_n]
        if body.get("return_documents", True):
            for r in ranked:
                r["document"] = {"text": docs[r["index"]]}
        usage = result.get("usage") or {}
        tokens = int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
        return {"id": result.get("id") or new_id("rerank"), "model": self.args.served_model_name,
                "results": ranked, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
