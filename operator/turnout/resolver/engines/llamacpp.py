"""llama.cpp: GGUF weights on CPU, CUDA or Metal."""

from __future__ import annotations

from turnout.resolver.engines.base import Context, Engine, On
from turnout.resolver.plan import ResolvedModel


def check_model(model: ResolvedModel, accelerator: str, ctx: Context) -> str | None:
    if model.format != "gguf":
        return f"llama.cpp serves gguf weights, not {model.format}"
    if model.model_type == "llm" and model.abilities and not {"chat", "generate"} & set(model.abilities):
        return "llama.cpp serves chat or generate models"
    return None


#: xllamacpp serving builtin://tiny-llama.gguf (`turnout up -f examples/tiny-chat-gguf.yaml`) peaked at 107 MiB
#: (how it is measured: ``Engine.cpu_baseline_mib``).
CPU_BASELINE_MIB = 128
ENGINE = Engine(
    name="llama.cpp",
    on={
        "nvidia": On(rank=4, device="cuda", image="llamacpp-cuda"),
        "metal": On(rank=2, device="mps", image="llamacpp-metal"),
        "cpu": On(rank=1, device="cpu", image="llamacpp-cpu"),
    },
    check_model=check_model,
    backends={None: "turnout.shim.backends.llamacpp:LlamaCppBackend"},
    cpu_baseline_mib=CPU_BASELINE_MIB,
)
