"""transformers: the fallback that runs anywhere; sentence-transformers for embedding and rerank."""

from __future__ import annotations

from turnout.resolver.engines.base import GPU_FORMATS, Context, Engine, On
from turnout.resolver.plan import ResolvedModel

FORMATS = ("pytorch", "gptq", "awq", "bnb", "fp4")
# Quantized kernels (AutoAWQ, GPTQ, bitsandbytes) exist for CUDA only.
CUDA_ONLY = GPU_FORMATS & set(FORMATS)


def check_model(model: ResolvedModel, accelerator: str, ctx: Context) -> str | None:
    if model.format not in FORMATS:
        if model.format == "fp8":
            return "transformers does not serve fp8 weights (vLLM or SGLang do, on compute capability >= 8.9)"
        return f"transformers does not serve {model.format} weights"
    if model.format in CUDA_ONLY and accelerator != "nvidia":
        return f"{model.format} weights need a CUDA GPU; {accelerator} cannot run them"
    quant = model.canonical_quantization
    if model.format == "pytorch" and quant == "FP8":
        return "transformers does not serve fp8 checkpoints (vLLM or SGLang do, on compute capability >= 8.9)"
    if model.format == "pytorch" and quant not in (None, "none") and accelerator != "nvidia":
        return f"a checkpoint quantized to {quant} needs a CUDA GPU; {accelerator} cannot run it"
    if model.model_type != "llm" and model.format != "pytorch":
        return f"{model.model_type} models are served from pytorch weights"
    return None


#: torch and transformers serving builtin://tiny-llama (`turnout up -f examples/tiny-chat.yaml`) peaked at 509 MiB
#: (how it is measured: ``Engine.cpu_baseline_mib``).
CPU_BASELINE_MIB = 576
ENGINE = Engine(
    name="transformers",
    on={
        "nvidia": On(rank=3, device="cuda", image="transformers-cuda"),
        "ascend": On(rank=2, device="npu", image="transformers-npu"),
        "metal": On(rank=3, device="mps", image="transformers-metal"),
        "cpu": On(rank=2, device="cpu", image="transformers-cpu"),
    },
    check_model=check_model,
    backends={
        "llm": "turnout.shim.backends.transformers:TransformersBackend",
        "embedding": "turnout.shim.backends.sentence:SentenceBackend",
        "rerank": "turnout.shim.backends.sentence:SentenceBackend",
    },
    cpu_baseline_mib=CPU_BASELINE_MIB,
)
