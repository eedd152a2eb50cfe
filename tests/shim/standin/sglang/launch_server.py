"""Stand-in for ``python -m sglang.launch_server``: SGLang's documented HTTP API, no model.

It takes SGLang's command line (``--model-path``, ``--served-model-name``,
``--host``, ``--port``, ``--tp-size``, ``--device``, ``--is-embedding`` and
any other ``--flag [value]``) and serves what the shim relies on:

* ``GET /health``: 503 while "loading" (``$STANDIN_LOAD_SECONDS``), then 200
  with an empty body, as SGLang does;
* ``GET /get_model_info`` (``model_path``, ``tokenizer_path``,
  ``is_generation``) and ``GET /get_server_info`` (the parsed arguments);
* ``GET /v1/models``, ``POST /v1/chat/completions`` and ``/v1/completions``
  (streamed and not; SSE chunks as SGLang writes them: compact JSON with
  ``"usage":null``, a first chunk carrying the role, a usage-only chunk
  when ``stream_options.include_usage``, then ``data: [DONE]``);
* ``POST /v1/responses`` (SGLang serves the Responses API): a ``response`` object, or streamed its
  events (``event: <type>`` lines, ``response.created`` ... ``response.completed``, no ``[DONE]``);
* ``POST /v1/embeddings`` and ``POST /v1/rerank`` (SGLang's list answer)
  with ``--is-embedding``;
* errors as SGLang writes them: ``{"object": "error", "message", "type",
  "param", "code"}``.

With ``--nnodes N --node-rank R`` (R >= 1) it does what SGLang's other ranks do: no HTTP server; it
runs until SIGTERM, writing its parsed arguments to ``$STANDIN_WORKER_FILE`` when that is set.

Generation is deterministic: token ``i`` is ``"w<i>"`` followed by a space.
Test hooks (not part of SGLang): a request field ``standin_delay`` (seconds
per token), prompts containing ``[standin:error400]`` (engine rejects) or
``[standin:midstream-error]`` (error event after two tokens), and
``GET /standin/stats`` (pid, streams started/finished/disconnected, tokens
generated, the last request body).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
import uuid
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="sglang.launch_server")
    p.add_argument("--model-path", required=True)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--tp-size", "--tp", type=int, default=1)
    p.add_argument("--device", default="cuda", choices=["cuda", "xpu", "hpu", "npu", "cpu"])
    p.add_argument("--is-embedding", action="store_true")
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--dist-init-addr", default=None)
    return p.parse_known_args(argv)


def error(message: str, status: int, etype: str = "BadRequestError") -> JSONResponse:
    return JSONResponse({"object": "error", "message": message, "type": etype, "param": None,
                         "code": status}, status_code=status)


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


class Engine:
    def __init__(self, ns: argparse.Namespace, extra: list[str]) -> None:
        self.ns = ns
        self.extra = extra
        self.name = ns.served_model_name or ns.model_path
        self.ready_at = time.monotonic() + float(os.environ.get("STANDIN_LOAD_SECONDS", "0.5"))
        self.default_delay = float(os.environ.get("STANDIN_TOKEN_DELAY", "0"))
        self.stats: dict[str, Any] = {"pid": os.getpid(), "streams_started": 0, "streams_finished": 0,
                                      "disconnects": 0, "tokens": 0, "last_body": None, "requests": 0}
        #: LoRA adapters loaded through /load_lora_adapter (SGLang's runtime API): name -> path
        self.adapters: dict[str, str] = {}

    def ready(self) -> bool:
        return time.monotonic() >= self.ready_at

    # -- routes -------------------------------------------------------------------------------

    async def health(self, _: Request) -> Response:
        return Response(status_code=200 if self.ready() else 503)

    async def model_info(self, _: Request) -> Response:
        return JSONResponse({"model_path": self.ns.model_path, "tokenizer_path": self.ns.model_path,
                             "is_generation": not self.ns.is_embedding})

    async def server_info(self, _: Request) -> Response:
        return JSONResponse({**vars(self.ns), "unparsed": self.extra, "argv": sys.argv[1:]})

    async def stats_route(self, _: Request) -> Response:
        return JSONResponse({**self.stats, "adapters": self.adapters})

    async def models(self, _: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": self.name, "object": "model", "created": 0, "owned_by": "sglang", "root": self.name}]})

    async def _body(self, request: Request) -> dict[str, Any] | Response:
        if not self.ready():
            return error("Server is not ready", 503, "ServiceUnavailableError")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error("Invalid JSON body", 400)
        self.stats["requests"] += 1
        self.stats["last_body"] = body
        if body.get("model") not in (None, self.name):
            return error(f"The model `{body.get('model')}` does not exist.", 404, "NotFoundError")
        if body.get("lora_path") is not None and body["lora_path"] not in self.adapters:
            return error(f"LoRA adapter {body['lora_path']} is not loaded", 400)
        return body

    async def load_lora(self, request: Request) -> Response:
        """SGLang's answer shape: 200 ``{"success": true, "loaded_adapters"}``, 400 with ``error_message``."""
        body = json.loads(await request.body())
        if "--enable-lora" not in self.extra:
            return JSONResponse({"success": False, "error_message": "LoRA is not enabled"}, status_code=400)
        self.adapters[body["lora_name"]] = body["lora_path"]
        return JSONResponse({"success": True, "error_message": "", "loaded_adapters": self.adapters})

    async def unload_lora(self, request: Request) -> Response:
        body = json.loads(await request.body())
        if self.adapters.pop(body["lora_name"], None) is None:
            return JSONResponse({"success": False, "error_message": f"{body['lora_name']} is not loaded"},
                                status_code=400)
        return JSONResponse({"success": True, "error_message": "", "loaded_adapters": self.adapters})

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def _generate(self, request: Request, chat: bool) -> Response:
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        if self.ns.is_embedding:
            return error("This model does not support generation", 400)
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                return error("messages is required", 400)
            prompt = " ".join(str(m.get("content") or "") for m in msgs if isinstance(m, dict))
        else:
            prompt = body.get("prompt")
            prompt = prompt if isinstance(prompt, str) else json.dumps(prompt)
        if "[standin:error400]" in prompt:
            return error("The engine rejects this prompt (stand-in error)", 400)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 16
        if max_tokens > 4096:
            return error(f"max_tokens={max_tokens} is larger than the context length 4096", 400)
        n = int(body.get("n") or 1)
        prompt_tokens = max(1, len(prompt.split()))
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        delay = float(body.get("standin_delay", self.default_delay))
        tokens, finish = [], "length"
        for i in range(max_tokens):
            word = f"w{i}"
            if word in stops:
                finish = "stop"
                break
            tokens.append(word + " ")
        cid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens) * n,
                 "total_tokens": prompt_tokens + len(tokens) * n}
        if not body.get("stream"):
            if delay:
                await asyncio.sleep(delay * len(tokens))
            self.stats["tokens"] += len(tokens) * n
            text = "".join(tokens)
            if chat:
                choices = [{"index": i, "message": {"role": "assistant", "content": text, "tool_calls": None},
                            "logprobs": None, "finish_reason": finish} for i in range(n)]
                obj = "chat.completion"
            else:
                choices = [{"index": i, "text": text, "logprobs": None, "finish_reason": finish}
                           for i in range(n)]
                obj = "text_completion"
            return JSONResponse({"id": cid, "object": obj, "created": created, "model": self.name,
                                 "choices": choices, "usage": usage})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        midstream_error = "[standin:midstream-error]" in prompt
        return StreamingResponse(
            self._stream(cid, created, chat, tokens, finish, n, delay, include_usage, usage, midstream_error),
            media_type="text/event-stream")

    async def responses(self, request: Request) -> Response:
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        if not isinstance(body.get("input"), (str, list)):
            return error("input is required", 400)
        words = [f"w{i} " for i in range(int(body.get("max_output_tokens") or 4))]
        rid, mid = "resp_" + uuid.uuid4().hex, "msg_" + uuid.uuid4().hex
        part = {"type": "output_text", "text": "".join(words), "annotations": [], "logprobs": None}
        item = {"id": mid, "type": "message", "role": "assistant", "status": "completed", "content": [part]}
        usage = {"input_tokens": 3, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": len(words),
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 3 + len(words)}
        done = {"id": rid, "object": "response", "created_at": int(time.time()), "model": self.name,
                "status": "completed", "output": [item], "parallel_tool_calls": True, "tool_choice": "auto",
                "tools": [], "usage": usage}
        if not body.get("stream"):
            return JSONResponse(done)
        start = {**done, "status": "in_progress", "output": [], "usage": None}
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": start},
            {"type": "response.output_item.added", "output_index": 0,
             "item": {**item, "status": "in_progress", "content": []}},
            {"type": "response.content_part.added", "item_id": mid, "output_index": 0, "content_index": 0,
             "part": {**part, "text": ""}},
            *({"type": "response.output_text.delta", "item_id": mid, "output_index": 0, "content_index": 0,
               "delta": w, "logprobs": []} for w in words),
            {"type": "response.output_text.done", "item_id": mid, "output_index": 0, "content_index": 0,
             "text": part["text"], "logprobs": []},
            {"type": "response.content_part.done", "item_id": mid, "output_index": 0, "content_index": 0,
             "part": part},
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": "response.completed", "response": done},
        ]

        async def stream():
            for seq, event in enumerate(events):
                yield f"event: {event['type']}\ndata: " + dumps({**event, "sequence_number": seq}) + "\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def _stream(self, cid: str, created: int, chat: bool, tokens: list[str], finish: str, n: int,
                      delay: float, include_usage: bool, usage: dict[str, int], midstream_error: bool):
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(i: int, text: str | None, reason: str | None, role: bool = False) -> str:
            if chat:
                delta: dict[str, Any] = {"role": "assistant"} if role else {}
                delta["content"] = text
                choice: dict[str, Any] = {"index": i, "delta": delta, "logprobs": None,
                                          "finish_reason": reason}
            else:
                choice = {"index": i, "text": text or "", "logprobs": None, "finish_reason": reason}
            return "data: " + dumps({"id": cid, "object": obj, "created": created, "model": self.name,
                                     "choices": [choice], "usage": None}) + "\n\n"

        self.stats["streams_started"] += 1
        try:
            if chat:
                for i in range(n):
                    yield chunk(i, "", None, role=True)
            for k, tok in enumerate(tokens):
                if midstream_error and k == 2:
                    yield "data: " + dumps({"error": {"message": "stand-in engine failed mid-stream",
                                                      "type": "InternalServerError", "code": 500}}) + "\n\n"
                    yield "data: [DONE]\n\n"
                    self.stats["streams_finished"] += 1
                    return
                if delay:
                    await asyncio.sleep(delay)
                for i in range(n):
                    self.stats["tokens"] += 1
                    yield chunk(i, tok, None)
            for i in range(n):
                yield chunk(i, "", finish)
            if include_usage:
                yield "data: " + dumps({"id": cid, "object": obj, "created": created, "model": self.name,
                                        "choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"
            self.stats["streams_finished"] += 1
        except asyncio.CancelledError:
            self.stats["disconnects"] += 1
            raise

    async def embeddings(self, request: Request) -> Response:
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        if not self.ns.is_embedding:
            return error("This model does not support embeddings; launch with --is-embedding", 400)
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        data = [{"object": "embedding", "index": i, "embedding": _vector(str(x))} for i, x in enumerate(inputs)]
        tokens = sum(len(str(x).split()) for x in inputs)
        return JSONResponse({"object": "list", "model": self.name, "data": data,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def rerank(self, request: Request) -> Response:
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        if not self.ns.is_embedding:
            return error("This model does not support rerank; launch with --is-embedding", 400)
        query = str(body.get("query", ""))
        qwords = set(query.lower().split())
        out = []
        for i, doc in enumerate(body.get("documents") or []):
            words = set(str(doc).lower().split())
            score = len(qwords & words) / (len(qwords | words) or 1)
            out.append({"score": score, "document": doc, "index": i,
                        "meta_info": {"prompt_tokens": len(words) + len(qwords)}})
        out.sort(key=lambda r: r["score"], reverse=True)
        return JSONResponse(out)


def _vector(text: str, dim: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [b / 255.0 for b in digest[:dim]]


def main() -> None:
    ns, extra = parse(sys.argv[1:])
    if ns.node_rank >= 1:  # a non-zero rank of a multi-node group serves no HTTP
        if os.environ.get("STANDIN_WORKER_FILE"):
            with open(os.environ["STANDIN_WORKER_FILE"], "w") as out:
                json.dump({**vars(ns), "unparsed": extra, "pid": os.getpid()}, out)
        while True:
            time.sleep(3600)
    engine = Engine(ns, extra)
    app = Starlette(routes=[
        Route("/health", engine.health),
        Route("/get_model_info", engine.model_info),
        Route("/get_server_info", engine.server_info),
        Route("/standin/stats", engine.stats_route),
        Route("/v1/models", engine.models),
        Route("/v1/chat/completions", engine.chat, methods=["POST"]),
        Route("/v1/completions", engine.completions, methods=["POST"]),
        Route("/v1/responses", engine.responses, methods=["POST"]),
        Route("/v1/embeddings", engine.embeddings, methods=["POST"]),
        Route("/v1/rerank", engine.rerank, methods=["POST"]),
        Route("/load_lora_adapter", engine.load_lora, methods=["POST"]),
        Route("/unload_lora_adapter", engine.unload_lora, methods=["POST"]),
    ])
    uvicorn.run(app, host=ns.host, port=ns.port, log_level="warning")


if __name__ == "__main__":
    main()
