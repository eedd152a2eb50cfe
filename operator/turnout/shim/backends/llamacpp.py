"""The llama.cpp backend: llama.cpp's own server code, in-process, through ``xllamacpp``.

``xllamacpp.Server`` runs llama-server's slots and continuous batching on a
thread of this process, and binds llama-server's own HTTP listener to a
random port on 127.0.0.1 (``Server.listening_address``). Every request goes
to that listener, over the same HTTP client and SSE relay as the proxy
backends (:mod:`turnout.wire.relay`): tokens go from llama.cpp's threads to its socket
and through the shim's event loop as bytes, never one by one through the GIL
(a callback into Python per token, with the event loop holding the GIL and a
5 ms switch interval, is what made the old in-process path slow).

Chat and completions are always asked for as streams. A client that goes
away closes the connection, and llama-server cancels a *streamed* task; a
non-streamed one it runs to the end (measured with this xllamacpp: a
900-token answer whose client left after 0.3 s generated all 900 tokens).
So a non-streamed request is streamed from llama-server and put back
together here (``_assemble.py``). Embeddings and rerank are plain requests.

``--model`` is a ``.gguf`` file or a folder holding one; with several,
``--quantization`` (e.g. ``Q4_K_M``) picks the file, and a split model
(``-00001-of-0000N.gguf``) is loaded from its first part.

Engine args (``--engine-args`` JSON) set fields of ``xllamacpp.CommonParams``
by name (``n_ctx``, ``n_parallel``, ``n_gpu_layers``, ``n_batch``,
``flash_attn_type``, ``cache_type_k``...), nested ones with a dot
(``"sampling.top_k": 40``, ``"cpuparams.n_threads": 8``), and llama-server
CLI spellings for the common ones (``ctx_size``, ``parallel``, ``ngl``,
``threads``). An unknown name fails at start with the list of known ones.
On CPU, llama.cpp's compute threads default to the CPUs the process may use
less one (:func:`turnout.shim.cpus.engine_threads`), so the shim's event loop
keeps a core; ``threads`` / ``threads_batch`` set them.

LoRA adapters (``--enable-lora``): llama.cpp loads adapters only when it starts. The ``--lora-modules``
(PEFT folders) are converted to GGUF LoRA files (:mod:`._gguf_lora`) and loaded at scale 0; a request that
names one as its ``model`` is sent with llama-server's per-request ``lora`` field at scale 1, so requests
for different adapters run side by side. llama-server reuses a slot's cached prompt without regard to the
adapter that computed it, so with adapters every request is sent with ``cache_prompt: false`` (no prefix
reuse). Loading any other adapter at run time answers 501 with the
reason: the control side restarts the pod with the adapter in ``--lora-modules``.

Chat content parts other than text (``image_url``, ``input_audio``) are a
client mistake answered 400 here unless a multimodal projector is set
(``"mmproj.path"``); llama-server itself answers them 500. With a projector, ``http(s)`` image URLs
(which llama-server would fetch itself) are refused unless the shim runs with ``--fetch-image-urls``.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from turnout import sources
from turnout.shim import toolcalls
from turnout.shim.backends import _vectors as vec
from turnout.shim.backends._assemble import Assembler
from turnout.shim.backends._images import refuse_fetch
from turnout.shim.backends._openai import reject_non_text
from turnout.shim.backends.base import Backend, Health, State, Stream
from turnout.shim.cpus import engine_threads
from turnout.shim.rerank import rerank_response
from turnout.shimargs import ShimArgs
from turnout.wire.client import EngineConnectionError, EnginePool, EngineProtocolError, EngineResponse
from turnout.wire.errors import OpenAIError
from turnout.wire.relay import idle_timeout_from_env, relay_response, stream_error
from turnout.wire.sse import Usage, event_data, split_events

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


def _check_gguf(path: Path) -> None:
    """A file that is not GGUF at all is named here (llama.cpp says why only in its own log)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"GGUF":
        raise RuntimeError(f"llama.cpp could not load {path}: not a GGUF file (it starts with {head!r}, "
                           "a GGUF file with b'GGUF')")


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


#: llama-server's message for a content part its model cannot read ("image input is not supported - hint: ...")
UNSUPPORTED_INPUT = re.compile(r"(image|audio|video|file) input is not supported\b")


def _error(payload: dict[str, Any], param: str | None = None) -> OpenAIError:
    err = payload.get("error", payload)
    if not isinstance(err, dict):
        err = {"message": str(err)}
    status = int(err.get("code") or 500) if str(err.get("code", "")).isdigit() else 500
    kind = str(err.get("type") or "server_error")
    code = None
    if status == 500 and UNSUPPORTED_INPUT.match(str(err.get("message") or "")):
        status, kind, code = 400, "invalid_request_error", "unsupported"  # llama-server's runtime_error
    elif kind == "exceed_context_size_error":
        kind, code = "invalid_request_error", "context_length_exceeded"
    elif kind == "not_supported_error":
        kind, code = "invalid_request_error", "unsupported"
    elif kind == "unavailable_error":
        kind = "server_error"
    elif status < 500:
        kind = "invalid_request_error"
    return OpenAIError(str(err.get("message") or "llama.cpp failed"), status=status, type=kind,
                       param=param if code == "context_length_exceeded" else None, code=code)


def _listener_pool(server: Any) -> EnginePool:
    """Connections to llama-server's own listener (one per request: see below)."""
    address = str(getattr(server, "listening_address", "") or "")
    m = re.fullmatch(r"https?://(127\.0\.0\.1|localhost):(\d+)/?", address)
    if not m or int(m.group(2)) == 0:
        raise RuntimeError(f"llama.cpp listens on {address!r}, not on a loopback port the shim can reach")
    # llama-server (cpp-httplib) closes the connection after each streamed answer, so keeping it
    # would only earn a failed write and a retry: one fresh loopback connection per request
    return EnginePool("127.0.0.1", int(m.group(2)), max_pooled=0)


class LlamaCppBackend(Backend):
    """Chat, completions, embeddings and rerank from a GGUF model through xllamacpp."""

    def __init__(self, args: ShimArgs) -> None:
        super().__init__(args)
        caps = {"llm": {"chat", "completions"}, "embedding": {"embeddings"}, "rerank": {"rerank"}}
        self.capabilities = frozenset(caps[args.model_type])
        self.server: Any = None
        self.gguf: Path | None = None
        self.http: EnginePool | None = None
        self.idle_timeout = idle_timeout_from_env()
        self._active: set[EngineResponse] = set()
        self._health = Health(State.LOADING, "loading the model")
        #: a multimodal projector is set (engine arg ``mmproj.path``): content parts other than text go to llama.cpp
        self.reads_media = False
        #: the --lora-modules loaded at start: name -> (llama.cpp adapter id, PEFT folder)
        self.lora_ids: dict[str, tuple[int, str]] = {}
        self._lora_dir: str | None = None
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
        if args.device == "cpu":
            # llama.cpp's default is every core; the shim's event loop runs in this process too, and compute
            # threads that share a core with it spin at every barrier (see turnout.shim.cpus). Measured on 2
            # cores, tiny GGUF, 8 streams: 2 threads burnt 385-1,156 µs of CPU per token (direct) and
            # 1,361-4,591 µs behind the shim; 1 thread 178-250 µs on both sides, and more tokens/s.
            # ``threads`` / ``threads_batch`` engine args override it.
            p.cpuparams.n_threads = p.cpuparams_batch.n_threads = engine_threads()
        if args.model_type == "embedding":
            p.embedding = True
        elif args.model_type == "rerank":
            p.embedding = True
            p.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_RANK
        apply_engine_args(p, args.engine_args)
        if args.enable_lora and args.lora_modules:
            self._convert_adapters(p)
        self.reads_media = bool(p.mmproj.path or p.mmproj.url or p.mmproj.hf_repo) and not p.no_mmproj
        return p

    def _convert_adapters(self, p: Any) -> None:
        """Each ``--lora-modules`` PEFT folder as a GGUF LoRA, loaded at scale 0 (applied per request)."""
        import xllamacpp

        from turnout.shim.backends._gguf_lora import convert

        assert self.gguf is not None
        self._lora_dir = tempfile.mkdtemp(prefix="turnout-lora-")
        infos = []
        for i, module in enumerate(self.args.lora_modules):
            try:
                folder = sources.locate(module.path)  # a builtin://, hf://... adapter is fetched first
                out = convert(folder, self.gguf, Path(self._lora_dir) / f"{i}.gguf")
            except (OSError, ValueError, KeyError, sources.SourceError) as exc:
                raise ValueError(f"LoRA adapter {module.name} ({module.path}) cannot be converted for llama.cpp: "
                                 f"{exc}") from exc
            infos.append(xllamacpp.CommonAdapterLoraInfo(str(out), 0.0))
            self.lora_ids[module.name] = (i, str(folder))
        p.lora_adapters = infos
        p.lora_init_without_apply = True

    async def load_adapter(self, name: str, path: str) -> None:
        """Only an adapter given in ``--lora-modules`` (llama.cpp loads adapters when it starts)."""
        known = self.lora_ids.get(name)
        if known is None or Path(known[1]) != Path(path):
            raise OpenAIError(f"llama.cpp loads LoRA adapters only when it starts: restart the server with "
                              f"--lora-modules {name}={path} to serve this adapter", status=501,
                              code="lora_needs_restart")

    async def unload_adapter(self, name: str) -> None:
        """Nothing to do in llama.cpp: the adapter stays loaded at scale 0, requests no longer name it."""

    async def start(self) -> None:
        self._health = Health(State.LOADING, "loading the model")
        try:
            params = self.params()
            _check_gguf(self.gguf)
            import xllamacpp

            self.server = await asyncio.to_thread(xllamacpp.Server, params)
            self.http = _listener_pool(self.server)
        except Exception as exc:
            self._health = Health(State.DEAD, f"llama.cpp failed to start: {exc}")
            if isinstance(exc, RuntimeError) and "init server" in str(exc):
                raise RuntimeError(f"llama.cpp could not load {self.gguf}; llama.cpp's log (the container's "
                                   "log) says why") from exc
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
        if self._health.state is State.READY:
            self._health = Health(State.LOADING, "stopped")
        lora_dir, self._lora_dir = self._lora_dir, None
        if lora_dir is not None:
            shutil.rmtree(lora_dir, ignore_errors=True)

    def health(self) -> Health:
        return self._health

    # ---- requests -------------------------------------------------------------

    async def _post(self, path: str, body: dict[str, Any], param: str) -> EngineResponse:
        """POST ``body`` to llama-server; an error answer becomes an OpenAIError."""
        pool = self.http
        if pool is None or self._health.state is not State.READY:
            raise OpenAIError("the model is not loaded yet", status=503, type="service_unavailable",
                              code="model_loading", retry_after=5)
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            resp = await pool.request("POST", path, payload)
            if resp.status < 400:
                return resp
            raw = await resp.read()
        except EngineProtocolError as exc:
            raise OpenAIError(f"llama.cpp's server answered something unusable: {exc}", status=502,
                              type="server_error", code="bad_engine_response") from exc
        except EngineConnectionError as exc:
            raise OpenAIError(f"llama.cpp's server did not answer: {exc}", status=503,
                              type="service_unavailable", code="engine_unavailable", retry_after=5) from exc
        raise _error(_json_or_text(raw, resp.status), param)

    async def _json(self, path: str, body: dict[str, Any], param: str) -> dict[str, Any]:
        resp = await self._post(path, body, param)
        try:
            raw = await resp.read()
        except EngineConnectionError as exc:
            raise OpenAIError(f"lost llama.cpp's answer: {exc}", status=502, type="server_error",
                              code="bad_engine_response") from exc
        finally:
            resp.close()
        result = _json_or_text(raw, 502)
        if "error" in result:
            raise _error(result, param)
        return result

    async def chat(self, body: dict[str, Any]) -> dict[str, Any] | Stream:
        if not self.reads_media:
            reject_non_text(body)
        else:
            refuse_fetch(body, self.args.fetch_image_urls)
        tools = toolcalls.tool_request(body)
        if tools.forced:
            return await self._forced_call(body, tools)
        return await self._generate("/v1/chat/completions", body, "messages", chat=True)

    async def _forced_call(self, body: dict[str, Any], tools: toolcalls.ToolRequest) -> dict[str, Any] | Stream:
        """``tool_choice`` ``required`` or named, as vLLM does it: the answer is constrained to the call's
        JSON schema (llama-server's ``json_schema`` grammar) and turned into ``tool_calls`` here.

        llama-server's own ``required`` depends on recognising the template's call format and is not
        honoured for every template; the schema always is. A stream is sent once the calls are whole.
        """
        if body.get("response_format") is not None:
            raise OpenAIError("response_format cannot be combined with a forced tool call (tool_choice "
                              "'required' or a named function)", param="response_format")
        schema = toolcalls.forced_json_schema(tools)
        asked = {**body, "stream": False, "tool_choice": "none",
                 "response_format": {"type": "json_schema", "json_schema": {"name": "tool_calls", "schema": schema}}}
        asked.pop("stream_options", None)
        answer = await self._generate("/v1/chat/completions", asked, "messages", chat=True)
        assert isinstance(answer, dict)
        for choice in answer["choices"]:
            message = choice.get("message") or {}
            calls = toolcalls.forced_calls(tools, message.get("content") or "")
            if calls:
                choice["message"] = {"role": "assistant", "content": None, "tool_calls": calls}
                choice["finish_reason"] = "tool_calls"
        if not body.get("stream"):
            return answer
        usage = answer.get("usage") or {}
        counted = Usage(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                        completion_tokens=int(usage.get("completion_tokens") or 0))
        return Stream(_replay(answer, include_usage=bool((body.get("stream_options") or {}).get("include_usage"))),
                      counted)

    async def completions(self, body: dict[str, Any]) -> dict[str, Any] | Stream:
        return await self._generate("/v1/completions", body, "prompt", chat=False)

    async def _generate(self, path: str, body: dict[str, Any], param: str, *, chat: bool) -> dict[str, Any] | Stream:
        streamed = bool(body.get("stream"))
        opts = dict(body.get("stream_options") or {}) if streamed else {}
        keep_usage = bool(opts.get("include_usage")) or not streamed
        opts["include_usage"] = True  # always count tokens; the relay drops the usage event if not asked for
        body = {**body, "stream": True, "stream_options": opts}
        if self.lora_ids:
            adapter = self.lora_ids.get(body.get("model", ""))
            if adapter is not None:
                body["model"] = self.args.served_model_name
                body["lora"] = [{"id": adapter[0], "scale": 1.0}]
            # llama-server reuses a slot's cached prompt whatever adapter computed it: with adapters, no reuse
            body["cache_prompt"] = False
        resp = await self._post(path, body, param)
        usage = Usage()
        relay = relay_response(resp, usage, keep_usage=keep_usage, active=self._active,
                               on_error=_stream_lost, idle_timeout=self.idle_timeout)
        fix = None if chat or body.get("logprobs") is None else _CompletionLogprobs()
        if streamed:
            return Stream(relay if fix is None else fix.stream(relay, param), usage)
        assembler = Assembler(chat=chat)
        try:
            async for events in relay:
                for event in split_events(events):
                    data = event_data(event)
                    if data:
                        item = _chunk(data, param)
                        assembler.add(item if fix is None else fix(item))
        finally:
            await relay.aclose()  # a cancelled call closes the connection: llama.cpp cancels the task
        return assembler.result()

    async def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.args.model_type != "embedding":
            return await super().embeddings(body)
        inputs = vec.embedding_inputs(body)
        result = await self._json("/v1/embeddings", {"input": inputs, "encoding_format": "float"}, "input")
        if "data" not in result:
            raise _error({"message": "llama.cpp answered embeddings without data"}, "input")
        rows = sorted(result["data"], key=lambda d: d.get("index", 0))
        vectors = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        vectors = vec.resize(vectors, body.get("dimensions"), vectors.shape[1])
        tokens = int((result.get("usage") or {}).get("prompt_tokens") or 0)
        return vec.embeddings_response(self.args.served_model_name, vectors, body.get("encoding_format"),
                                       tokens)

    async def rerank(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.args.model_type != "rerank":
            return await super().rerank(body)
        query, docs = vec.rerank_documents(body)
        result = await self._json("/v1/rerank", {"query": query, "documents": docs}, "documents")
        if "results" not in result:
            raise _error({"message": "llama.cpp answered rerank without results"}, "documents")
        usage = result.get("usage") or {}
        tokens = int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
        scores = {"id": result.get("id"), "results": result["results"],
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return rerank_response(scores, body, self.args.served_model_name, docs)


class _CompletionLogprobs:
    """llama-server writes completions logprobs in the chat shape (``{"content": [...]}``); OpenAI's
    completions shape is parallel lists: ``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``."""

    def __init__(self) -> None:
        self.offsets: dict[int, int] = {}

    def __call__(self, chunk: dict[str, Any]) -> dict[str, Any]:
        for choice in chunk.get("choices") or ():
            part = choice.get("logprobs")
            if not isinstance(part, dict) or "content" not in part:
                continue
            i = int(choice.get("index", 0))
            entries = part.get("content") or []
            offsets = []
            for entry in entries:
                offsets.append(self.offsets.get(i, 0))
                self.offsets[i] = offsets[-1] + len(entry.get("token", ""))
            choice["logprobs"] = {
                "tokens": [e.get("token", "") for e in entries],
                "token_logprobs": [e.get("logprob") for e in entries],
                "top_logprobs": [{t.get("token", ""): t.get("logprob") for t in e.get("top_logprobs") or ()}
                                 for e in entries],
                "text_offset": offsets,
            }
        return chunk

    async def stream(self, relay: Any, param: str) -> AsyncIterator[dict[str, Any]]:
        try:
            async for events in relay:
                for event in split_events(events):
                    data = event_data(event)
                    if data:
                        yield self(_chunk(data, param))
        finally:
            await relay.aclose()


async def _replay(answer: dict[str, Any], *, include_usage: bool) -> AsyncIterator[dict[str, Any]]:
    """A whole chat answer as OpenAI's stream: role, content or one delta per tool call, finish, usage."""
    head = {k: answer[k] for k in ("id", "created", "model", "system_fingerprint") if k in answer}
    head["object"] = "chat.completion.chunk"

    def chunk(index: int, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}]}

    for choice in answer["choices"]:
        i, message = choice["index"], choice.get("message") or {}
        yield chunk(i, {"role": "assistant", "content": ""})
        if message.get("content"):
            yield chunk(i, {"content": message["content"]})
        for k, call in enumerate(message.get("tool_calls") or ()):
            yield chunk(i, {"tool_calls": [{"index": k, **call}]})
        yield chunk(i, {}, choice.get("finish_reason"))
    if include_usage:
        yield {**head, "choices": [], "usage": answer.get("usage")}


async def _stream_lost(exc: EngineConnectionError) -> OpenAIError:
    return stream_error("llama.cpp", exc)


def _json_or_text(raw: bytes, status: int) -> dict[str, Any]:
    """llama-server's JSON answer, or its text wrapped as an error."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return {"error": {"message": raw.decode(errors="replace")[:500] or f"HTTP {status}", "code": status}}
    return obj if isinstance(obj, dict) else {"error": {"message": str(obj)[:500], "code": status}}


def _chunk(data: bytes, param: str) -> dict[str, Any]:
    item = _json_or_text(data, 502)
    if "error" in item:
        raise _error(item, param)
    item.pop("timings", None)
    return item
