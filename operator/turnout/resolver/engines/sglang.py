"""SGLang: CUDA GPUs; chosen by auto only when the operator config enables it.

Across nodes SGLang documents one tensor-parallel group over every GPU of every node
(``--tp 16 --nnodes 2 --node-rank R --dist-init-addr LEADER:PORT``; docs: multi-node deployment).
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

# Xinference's SGLang table (xinference/model/llm/sglang/core.py).
FORMATS: dict[str, tuple[str, ...] | None] = {
    "pytorch": ("none", "Int4", "Int8", "FP8"),
    "awq": None,
    "gptq": None,
    "fp8": None,
    "bnb": None,
}


def layout(devices: int, nodes: int) -> tuple[int, int]:
    """One tensor-parallel group over all devices of all nodes."""
    return devices * nodes, 1


def check_model(model: ResolvedModel, accelerator: str, ctx: Context) -> str | None:
    if reason := quantization_reason("sglang", model, FORMATS):
        return reason
    if model.model_type != "llm":
        return f"turnout serves {model.model_type} models with transformers, llama.cpp or vLLM"
    return architecture_reason("sglang", model, ctx)


ENGINE = Engine(
    name="sglang",
    on={"nvidia": On(rank=2, device="cuda", image="sglang-cuda")},
    check_model=check_model,
    backends={None: "turnout.shim.backends.sglang:SglangBackend"},
    check_node=fp8_node_reason,
    shm=True,
    splits_heads=True,
    multi_node=layout,
    auto=False,  # opt-in: the operator config's autoEngines
)
