"""A real HTTP server speaking the shim's LoRA contract (vLLM's runtime API), for the operator's tests.

``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}``: 200, or 400 in the OpenAI error envelope when
the path is one of ``bad`` (as a shim answers a source it cannot fetch) or the name is loaded already (as vLLM
does); ``POST /v1/unload_lora_adapter`` ``{"lora_name"}``: 200, 404 for an adapter it does not hold;
``GET /v1/models``: the base and each adapter with ``parent``. It records every call, and requires ``key`` as
a Bearer when given.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web


def _error(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                        "code": code}}, status=status)


class LoraShim:
    def __init__(self, base: str = "chat", bad: tuple[str, ...] = (), key: str | None = None,
                 loaded: dict[str, str] | None = None) -> None:
        self.base = base
        self.bad = bad
        self.key = key
        self.loaded: dict[str, str] = dict(loaded or {})  # e.g. from --lora-modules
        self.busy = 0  # answer this many loads with 503 (a shim not ready to load yet)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/load_lora_adapter", self._load)
        self.app.router.add_post("/v1/unload_lora_adapter", self._unload)
        self.app.router.add_get("/v1/models", self._models)

    def _denied(self, request: web.Request) -> web.Response | None:
        if self.key and request.headers.get("Authorization") != f"Bearer {self.key}":
            return _error(401, "invalid API key", "invalid_api_key")
        return None

    async def _load(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(("load", body))
        denied = self._denied(request)
        if denied is not None:
            return denied
        if self.busy:
            self.busy -= 1
            return web.json_response({"error": {"message": "not ready to load adapters; retry shortly",
                                                "type": "service_unavailable", "param": None,
                                                "code": "model_loading"}}, status=503)
        if body["lora_path"] in self.bad:
            return _error(400, f"cannot fetch {body['lora_path']}: no such repository", "invalid_value")
        if body["lora_name"] in self.loaded:
            return _error(400, f"The lora adapter '{body['lora_name']}' has already been loaded.", "invalid_value")
        self.loaded[body["lora_name"]] = body["lora_path"]
        return web.json_response({"status": "ok"})

    async def _unload(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(("unload", body))
        denied = self._denied(request)
        if denied is not None:
            return denied
        if self.loaded.pop(body["lora_name"], None) is None:
            return _error(404, f"adapter {body['lora_name']!r} is not loaded", "not_found")
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        self.calls.append(("models", {}))
        denied = self._denied(request)
        if denied is not None:
            return denied
        data = [{"id": self.base, "object": "model"}]
        data += [{"id": n, "object": "model", "parent": self.base, "root": p} for n, p in self.loaded.items()]
        return web.json_response({"object": "list", "data": data})
