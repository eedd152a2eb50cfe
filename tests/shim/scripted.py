"""A scripted backend and an in-thread uvicorn server, for testing ``create_app`` itself.

``ScriptedBackend`` implements the ``Backend`` interface the way in-process
backends do (dict chunks) and answers by the first message's content; it
records what the app did to it (closed streams, cancelled calls).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from shimproc import wait_until

from turnout.shim.backends.base import Backend, Health, State, Stream
from turnout.shimargs import ShimArgs
from turnout.wire.errors import OpenAIError
from turnout.wire.sse import Usage

SERVED = "scripted"


class ScriptedBackend(Backend):
    """Answers by the first message's content; counts what the app does to its streams."""

    capabilities = frozenset({"chat", "completions", "rerank"})

    def __init__(self, args: ShimArgs, *, fail_start: str | None = None) -> None:
        super().__init__(args)
        self.release = threading.Event()
        self.release.set()
        self.fail_start = fail_start
        self.state = State.LOADING
        self.death: Health | None = None  # set to make health() report it
        self.closed = 0
        self.cancelled = 0
        self.stopped = False

    async def start(self) -> None:
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        if self.fail_start:
            raise RuntimeError(self.fail_start)
        self.state = State.READY

    async def stop(self) -> None:
        self.stopped = True

    def health(self) -> Health:
        return self.death or Health(self.state)

    async def chat(self, body: dict[str, Any]) -> dict[str, Any] | Stream:
        # The first message's content picks the script; a message without one (valid: an assistant turn with
        # tool calls) or with content parts runs the plain answer.
        first = (body.get("messages") or [{}])[0]
        script = first.get("content") if isinstance(first, dict) else None
        if not body.get("stream"):
            if script == "slow":
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    self.cancelled += 1
                    raise
            if script == "busy":
                raise OpenAIError("my queue is full", status=429, type="rate_limit_error", code="busy",
                                  retry_after=2.5)
            return {"id": "x", "object": "chat.completion", "created": 1, "model": "internal",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
        usage = Usage()
        return Stream(self._chunks(script, usage), usage)

    async def _chunks(self, script: str, usage: Usage) -> AsyncIterator[dict[str, Any]]:
        def chunk(content: str, reason: str | None = None) -> dict[str, Any]:
            return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "internal",
                    "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": reason}]}

        try:
            if script == "slow":
                while True:
                    yield chunk("tick ")
                    await asyncio.sleep(0.01)
            yield chunk("a")
            yield chunk("b")
            if script == "backend-error":
                raise OpenAIError("the model fell over", status=500, type="server_error", code="boom")
            if script == "crash":
                raise RuntimeError("secret internal detail")
            yield chunk("", "stop")
            usage.prompt_tokens, usage.completion_tokens = 3, 2
            if script == "with-usage":
                yield {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "internal",
                       "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
        finally:
            self.closed += 1

    async def rerank(self, body: dict[str, Any]) -> dict[str, Any]:
        scores = [len(set(body["query"].split()) & set(d.split())) for d in body["documents"]]
        return {"results": [{"index": i, "relevance_score": s} for i, s in enumerate(scores)],
                "usage": {"prompt_tokens": 7}}


class ServerThread:
    def __init__(self, app: Any, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base_url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_until(lambda: self.server.started, "uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def _args(port: int) -> ShimArgs:
    return ShimArgs(engine="transformers", model="/m", served_model_name=SERVED, port=port)


def scripted_args(port: int) -> ShimArgs:
    return ShimArgs(engine="transformers", model="/m", served_model_name=SERVED, port=port)
