"""LoRA adapters of the served model: which are loaded, under which names, and which to unload first.

``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` (vLLM's runtime API) go through
:class:`Adapters`: it checks the folder is a PEFT adapter no larger than ``--max-lora-rank``, unloads the
least recently used adapter that no request is using when ``--max-loras`` are loaded, and only then asks the
backend to load it. ``lora_path`` is a local folder, or a source URI the shim fetches first as it fetches
``--model`` (``builtin://``, ``hf://``, ``s3://``, ``pvc://``: :mod:`turnout.sources`). A request names an
adapter as its ``model``; it holds the adapter (``acquire`` / ``release``) until its answer ends, so an
unload waits for the requests using it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turnout import sources
from turnout.shim.backends.base import Backend
from turnout.wire.errors import OpenAIError

log = logging.getLogger("turnout.shim")

#: what a PEFT adapter folder holds
CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class AdapterInfo:
    """A PEFT adapter folder, read before loading it."""

    path: Path
    rank: int
    base_model: str | None
    config: dict[str, Any]


async def fetch_adapter(path: str) -> str:
    """``path`` as a local folder: a source URI other than ``file://`` is fetched (or built) first; a 400
    saying why when it cannot be."""
    if "://" not in path or path.startswith("file://"):
        return path[len("file://"):] if path.startswith("file://") else path
    try:
        sources.check_builtin(path, adapter=True)
        return str(await asyncio.to_thread(sources.locate, path))
    except sources.SourceError as exc:
        raise OpenAIError(f"lora_path: {exc}", param="lora_path", code="invalid_adapter") from None


def read_adapter(path: str) -> AdapterInfo:
    """The adapter in the local folder ``path``, or a 400 saying why it is not one."""
    folder = Path(path)
    if not folder.is_dir():
        raise OpenAIError(f"lora_path {path!r} is not a folder on this server", param="lora_path",
                          code="invalid_adapter")
    config_file = folder / CONFIG_FILE
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise OpenAIError(f"lora_path {path!r} is not a PEFT adapter: it has no {CONFIG_FILE}",
                          param="lora_path", code="invalid_adapter") from None
    except (OSError, ValueError) as exc:
        raise OpenAIError(f"{config_file} is not readable JSON: {exc}", param="lora_path",
                          code="invalid_adapter") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        raise OpenAIError(f"{config_file} is not a LoRA adapter's config (peft_type must be LORA)",
                          param="lora_path", code="invalid_adapter")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise OpenAIError(f"lora_path {path!r} has no {' or '.join(WEIGHT_FILES)}", param="lora_path",
                          code="invalid_adapter")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise OpenAIError(f"{config_file}: r must be a positive integer, got {rank!r}", param="lora_path",
                          code="invalid_adapter")
    return AdapterInfo(folder, rank, config.get("base_model_name_or_path"), config)


@dataclass
class Loaded:
    """One loaded adapter: where it came from, when a request last named it, how many use it now."""

    name: str
    path: str
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    unloading: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def card(self, parent: str, created: int) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": created, "owned_by": "turnout",
                "parent": parent, "root": self.path}


class Adapters:
    """The adapters loaded into one backend, at most ``max_loras``, of rank at most ``max_rank``."""

    def __init__(self, backend: Backend, served: str, *, enabled: bool, max_loras: int, max_rank: int) -> None:
        self.backend = backend
        self.served = served
        self.enabled = enabled
        self.max_loras = max_loras
        self.max_rank = max_rank
        self.loaded: dict[str, Loaded] = {}
        self._lock = asyncio.Lock()

    def names(self) -> list[str]:
        return [name for name, a in self.loaded.items() if not a.unloading]

    def known(self) -> str:
        return ", ".join(repr(n) for n in [self.served, *self.names()])

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise OpenAIError("LoRA adapters are not enabled on this server (start it with --enable-lora)",
                              status=400, code="lora_not_enabled")

    async def load(self, name: str, path: str) -> bool:
        """Load ``path`` as ``name``; False when that very adapter was loaded already."""
        self._check_enabled()
        if not name or name == self.served:
            raise OpenAIError(f"lora_name must be non-empty and differ from the base model's name {self.served!r}",
                              param="lora_name", code="invalid_adapter")
        info = read_adapter(await fetch_adapter(path))
        if info.rank > self.max_rank:
            raise OpenAIError(f"adapter {name!r} has rank {info.rank}, above this server's --max-lora-rank "
                              f"{self.max_rank}", param="lora_path", code="adapter_rank_too_large")
        async with self._lock:
            current = self.loaded.get(name)
            if current is not None and not current.unloading and current.path == path:
                current.last_used = time.monotonic()
                return False
            if current is not None:
                await self._unload(current)
            while len(self.loaded) >= self.max_loras:
                idle = [a for a in self.loaded.values() if a.in_flight == 0 and not a.unloading]
                if not idle:
                    raise OpenAIError(f"all {self.max_loras} adapter slots (--max-loras) are serving requests; "
                                      "retry shortly", status=429, code="adapter_slots_busy", retry_after=1)
                victim = min(idle, key=lambda a: a.last_used)
                log.info("unloading adapter %s (least recently used) to load %s", victim.name, name)
                await self._unload(victim)
            await self.backend.load_adapter(name, str(info.path))
            self.loaded[name] = Loaded(name, path)
            log.info("loaded adapter %s from %s", name, path)
            return True

    async def unload(self, name: str) -> None:
        """Unload ``name`` once the requests using it are answered; 404 when it is not loaded."""
        self._check_enabled()
        async with self._lock:
            current = self.loaded.get(name)
            if current is None or current.unloading:
                raise OpenAIError(f"adapter {name!r} is not loaded; loaded: {', '.join(self.names()) or 'none'}",
                                  status=404, param="lora_name", code="adapter_not_found")
            await self._unload(current)
        log.info("unloaded adapter %s", name)

    async def _unload(self, adapter: Loaded) -> None:
        adapter.unloading = True  # new requests for it are refused from now on
        if adapter.in_flight:
            await adapter.idle.wait()
        try:
            await self.backend.unload_adapter(adapter.name)
        finally:
            self.loaded.pop(adapter.name, None)

    def acquire(self, model: str | None) -> str | None:
        """The adapter a request names as its ``model`` (held until :meth:`release`), None for the base
        model; a 404 naming the served models for anything else."""
        if model is None or model == self.served:
            return None
        adapter = self.loaded.get(model)
        if adapter is None or adapter.unloading:
            raise OpenAIError(f"model '{model}' does not exist; this server serves {self.known()}",
                              status=404, param="model", code="model_not_found")
        adapter.in_flight += 1
        adapter.idle.clear()
        adapter.last_used = time.monotonic()
        return model

    def release(self, name: str | None) -> None:
        adapter = self.loaded.get(name) if name is not None else None
        if adapter is None:
            return
        adapter.in_flight -= 1
        if adapter.in_flight == 0:
            adapter.idle.set()

    def cards(self, created: int) -> list[dict[str, Any]]:
        return [a.card(self.served, created) for a in self.loaded.values() if not a.unloading]
