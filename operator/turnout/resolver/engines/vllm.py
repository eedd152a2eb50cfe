"""vLLM: CUDA GPUs, and Ascend NPUs through vllm-ascend."""

from __future__ import annotations

from turnout.resolver.engines.base import (
    Context,
    Engine,
    architecture_reason,
    fp8_node_reason,
    quantization_reason,
)
from turnout.resolver.plan import ResolvedModel

# Xinference's vLLM table (xinference/model/llm/vllm/core.py): formats and quantizations.
FORMATS: dict[str, tuple[str, ...] | None] = {
    "pytorch": ("none",),
    "awq": ("Int4", "4bit"),
    "gptq": ("Int3", "Int4", "Int8", "4bit", "8bit"),
    "fp8": None,
    "fp4": None,
    "bnb": None,
}
CHAT_AWQ = ("Int4", "Int8", "4bit", "8bit")


def check_model(model: ResolvedModel, accelerator: str, ctx: Context) -> str | None:
    if model.format == "gguf":
        return "gguf weights are served by llama.cpp (vLLM's GGUF loader is single-file and experimental)"
    table = dict(FORMATS)
    if "chat" in model.abilities:
        table["awq"] = CHAT_AWQ
    if reason := quantization_reason("vllm", model, table):
        return reason
    if accelerator == "ascend" and model.format != "pytorch":
        return f"vllm-ascend serves pytorch weights, not {model.format}"
    if model.model_type != "llm":
        if ctx.explicit:
            return None  # vLLM's pooling runner serves many embedding and rerank models
        return f"auto serves {model.model_type} models with transformers; set engine: vllm to use vLLM"
    return architecture_reason("vllm", model, ctx)


ENGINE = Engine(
    name="vllm",
    accelerators=("nvidia", "ascend"),
    check_model=check_model,
    check_node=fp8_node_reason,
    shm=True,
)
