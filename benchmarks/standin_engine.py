"""A stand-in OpenAI engine server for the data-path benchmark: streams SSE chunks, no model.

    python benchmarks/standin_engine.py --port 9000 [--token-delay 0.02]

It takes vLLM's server command line (``-m vllm.entrypoints.openai.api_server
--model M --served-model-name S --host H --port P``; unknown flags are
ignored), so the shim's vLLM proxy backend can start it as its engine
(``TURNOUT_VLLM_PYTHON`` pointing at a wrapper script that runs this file).

Routes: ``GET /health``, ``GET /v1/models`` and streamed or plain
``POST /v1/chat/completions`` and ``/v1/completions``. Each answer has
``max_tokens`` tokens (default 16), chunks written the way vLLM writes them
(a role chunk first, one chunk per token, a usage chunk when
``stream_options.include_usage``, then ``data: [DONE]``).

Pace: ``--token-delay`` seconds per token (env ``STANDIN_TOKEN_DELAY``);
tokens are scheduled from the request's start, so a stream does not drift
behind its rate; ``0`` streams as fast as the event loop can, yielding to
other streams every few chunks. The app is raw ASGI on uvicorn (httptools),
so the stand-in itself costs as little CPU per chunk as Python allows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import uvicorn

YIELD_EVERY = 4


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="standin_engine", description=__doc__.split("\n")[0])
    p.add_argument("-m", dest="module", default=None, help="ignored (vLLM's module name)")
    p.add_argument("--model", default="standin")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-delay", type=float, default=float(os.environ.get("STANDIN_TOKEN_DELAY", "0")))
    ns, _unknown = p.parse_known_args(argv)
    return ns


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class StandinEngine:
    """The ASGI app."""

    def __init__(self, name: str, token_delay: float) -> None:
        self.name = name
        self.delay = token_delay

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/health":
            await self._plain(send, 200, b"")
        elif method == "GET" and path == "/v1/models":
            await self._plain(send, 200, _dumps({"object": "list", "data": [
                {"id": self.name, "object": "model", "created": 0, "owned_by": "standin", "root": self.name,
                 "max_model_len": 4096}]}))
        elif method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            body = b""
            while True:
                msg = await receive()
                body += msg.get("body", b"")
                if not msg.get("more_body"):
                    break
            try:
                req = json.loads(body)
            except ValueError:
                await self._plain(send, 400, _dumps({"object": "error", "message": "invalid JSON",
                                                     "type": "BadRequestError", "param": None, "code": 400}))
                return
            await self._generate(send, req, chat=path == "/v1/chat/completions")
        else:
            await self._plain(send, 404, _dumps({"detail": "Not Found"}))

    @staticmethod
    async def _plain(send: Any, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    async def _generate(self, send: Any, req: dict[str, Any], *, chat: bool) -> None:
        n = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
        prompt_tokens = 8
        created = int(time.time())
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{os.urandom(8).hex()}"
        obj = "chat.completion.chunk" if chat else "text_completion"
        if not req.get("stream"):
            text = "".join(f"w{i} " for i in range(n))
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                      if chat else {"index": 0, "text": text, "finish_reason": "length"})
            if self.delay:
                await asyncio.sleep(self.delay * n)
            await self._plain(send, 200, _dumps({
                "id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": self.name, "choices": [choice],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}}))
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        head = (f'data: {{"id":"{rid}","object":"{obj}","created":{created},"model":"{self.name}",'
                f'"choices":[{{"index":0,').encode()
        if chat:
            await send({"type": "http.response.body", "more_body": True,
                        "body": head + b'"delta":{"role":"assistant","content":""},"logprobs":null,'
                                       b'"finish_reason":null}]}\n\n'})
        start = time.monotonic()
        for i in range(n):
            if self.delay:
                wait = start + i * self.delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            elif i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            last = i == n - 1
            finish = b'"length"' if last else b"null"
            piece = f"w{i} ".encode()
            if chat:
                chunk = head + b'"delta":{"content":"' + piece + b'"},"logprobs":null,"finish_reason":' + finish
            else:
                chunk = head + b'"text":"' + piece + b'","logprobs":null,"finish_reason":' + finish
            await send({"type": "http.response.body", "body": chunk + b"}]}\n\n", "more_body": True})
        tail = b""
        if (req.get("stream_options") or {}).get("include_usage"):
            tail += (f'data: {{"id":"{rid}","object":"{obj}","created":{created},"model":"{self.name}",'
                     f'"choices":[],"usage":{{"prompt_tokens":{prompt_tokens},"completion_tokens":{n},'
                     f'"total_tokens":{prompt_tokens + n}}}}}\n\n').encode()
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n"})


def main(argv: list[str] | None = None) -> None:
    ns = parse(sys.argv[1:] if argv is None else argv)
    app = StandinEngine(ns.served_model_name or ns.model, ns.token_delay)
    uvicorn.run(app, host=ns.host, port=ns.port, log_level="warning", access_log=False,
                http="httptools", lifespan="on", backlog=4096)


if __name__ == "__main__":
    main()
