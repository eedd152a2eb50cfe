"""llama.cpp: GGUF weights on CPU, CUDA or Metal."""

from __future__ import annotations

from turnout.resolver.engines.base import Context, Engine
from turnout.resolver.plan import ResolvedModel


def check_model(model: ResolvedModel, accelerator: str, ctx: Context) -> str | None:
    if model.format != "gguf":
        return f"llama.cpp serves gguf weights, not {model.format}"
    if model.model_type == "llm" and model.abilities and not {"chat", "generate"} & set(model.abilities):
        return "llama.cpp serves chat or generate models"
    return None


ENGINE = Engine(name="llama.cpp", accelerators=("nvidia", "metal", "cpu"), check_model=check_model)
