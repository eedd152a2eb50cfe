"""The engine dispatch table: one module per engine, one entry per module."""

from __future__ import annotations

from turnout.resolver.engines import llamacpp, mlx, sglang, transformers, vllm
from turnout.resolver.engines.base import Context, Engine

ENGINES: dict[str, Engine] = {
    e.name: e for e in (vllm.ENGINE, sglang.ENGINE, llamacpp.ENGINE, transformers.ENGINE, mlx.ENGINE)
}

#: Which engines `auto` tries on each accelerator, best first.
PREFERENCE: dict[str, tuple[str, ...]] = {
    "nvidia": ("vllm", "sglang", "transformers", "llama.cpp"),
    "ascend": ("vllm", "transformers"),
    "metal": ("mlx", "llama.cpp", "transformers"),
    "cpu": ("llama.cpp", "transformers"),
}

#: The shim's --device for each accelerator.
DEVICE = {"nvidia": "cuda", "ascend": "npu", "metal": "mps", "cpu": "cpu"}

__all__ = ["DEVICE", "ENGINES", "PREFERENCE", "Context", "Engine"]
