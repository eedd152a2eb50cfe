"""vLLM: CUDA GPUs, and Ascend NPUs through vllm-ascend; across nodes with its multiprocessing backend.

Quantizations are compared in their canonical spelling (``turnout.resolver.quantization``): ``8bits``,
``Int8-W8A16`` and ``Int8`` are one thing. A ``pytorch`` spec with a quantization (``Int4``, ``fp8``) is a
checkpoint quantized ahead of time; vLLM reads the method from its config.json.

Across nodes vLLM documents tensor parallel within a node and pipeline parallel across nodes
(``--tensor-parallel-size 8 --pipeline-parallel-size 2 --nnodes 2 --node-rank R --master-addr LEADER``,
``--headless`` on the other nodes; docs/serving/parallelism_scaling.md), with no Ray cluster.
"""

from __future__ import annotations

from turnout.resolver.engines.base import (
    Context,
    Engine,
    On,
    architecture_reason,
    fp8_node_reason,
    quantization_reason,
)
from turnout.resolver.plan import ResolvedModel

# Xinference's vLLM table (xinference/model/llm/vllm/core.py): formats and quantizations.
FORMATS: dict[str, tuple[str, ...] | None] = {
    "pytorch": ("none", "Int4", "Int8", "FP8"),
    "awq": ("Int4",),
    "gptq": ("Int2", "Int3", "Int4", "Int8"),
    "fp8": None,
    "fp4": None,
    "bnb": None,
}
CHAT_AWQ = ("Int4", "Int8")


def layout(devices: int, nodes: int) -> tuple[int, int]:
    """Tensor parallel over one node's devices, one pipeline stage per node."""
    return devices, nodes


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
    on={
        "nvidia": On(rank=1, device="cuda", image="vllm-cuda"),
        "ascend": On(rank=1, device="npu", image="vllm-ascend"),
    },
    check_model=check_model,
    backends={None: "turnout.shim.backends.vllm:VllmBackend"},
    check_node=fp8_node_reason,
    shm=True,
    splits_heads=True,
    multi_node=layout,
)
