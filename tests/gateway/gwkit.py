"""Helpers for the gateway tests: in-loop HTTP servers, object builders, a recording upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

MDS = ("turnout.dev", "v1alpha1", "modeldeployments")
SLICES = ("discovery.k8s.io", "v1", "endpointslices")
SECRETS = ("", "v1", "secrets")
NS = "models"


@asynccontextmanager
async def serve(app: Any, port: int) -> AsyncIterator[uvicorn.Server]:
    """``app`` on 127.0.0.1:``port`` in this event loop (uvicorn with httptools), until the block ends."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                           http="httptools", access_log=False))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the server stopped while starting")
        await asyncio.sleep(0.01)
    try:
        yield server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def model_deployment(name: str, *, served: str | None = None, replicas: int | None = None,
                     routing: dict[str, Any] | None = None, api_key_secret: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"uri": "builtin://tiny-llama.gguf", "type": "llm", "size": 0.01}}
    if served:
        spec["servedModelName"] = served
    if replicas is not None:
        spec["replicas"] = replicas
    if routing is not None:
        spec["routing"] = routing
    if api_key_secret:
        spec["apiKeySecretRef"] = {"name": api_key_secret, "key": "api-key"}
    return {"apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


def endpoint_slice(service: str, name: str, ports: list[int], *, ready: bool = True) -> dict[str, Any]:
    """An EndpointSlice as the EndpointSlice controller writes it for a turnout model Service."""
    return {
        "metadata": {"name": name, "namespace": NS, "labels": {
            "kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by":
            "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": p, "protocol": "TCP"} for p in ports[:1]] or [],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready, "serving": ready,
                                                                  "terminating": False}} for _ in ports[:1]],
    }


class Upstream:
    """A model server stand-in that records what reaches it: headers, bodies, and clients going away.

    ``POST`` answers JSON naming ``name``; with ``"stream": true`` it streams events every ``delay`` seconds
    (``max_tokens`` of them, or until the client disconnects: ``disconnected`` is set).
    """

    def __init__(self, name: str, delay: float = 0.01) -> None:
        self.name = name
        self.delay = delay
        self.requests: list[tuple[dict[bytes, bytes], bytes]] = []
        self.paths: list[str] = []
        self.disconnected = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                if (await receive())["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        self.requests.append((dict(scope["headers"]), body))
        self.paths.append(scope["path"])
        req = json.loads(body or b"{}")
        if not req.get("stream"):
            out = json.dumps({"id": "x", "object": "chat.completion", "model": self.name, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": f"from {self.name}"},
                 "finish_reason": "stop"}]}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": out})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        watcher = asyncio.ensure_future(receive())
        try:
            for i in range(int(req.get("max_tokens") or 10**6)):
                chunk = json.dumps({"id": "x", "object": "chat.completion.chunk", "model": self.name, "choices": [
                    {"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]}).encode()
                await send({"type": "http.response.body", "body": b"data: " + chunk + b"\n\n", "more_body": True})
                done, _ = await asyncio.wait({watcher}, timeout=self.delay)
                if done:
                    self.disconnected.set()
                    return
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        finally:
            watcher.cancel()
