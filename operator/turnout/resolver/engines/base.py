"""What every engine module provides: its rules, as data plus two checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from turnout.catalog import Catalog
from turnout.hardware import NodeInfo
from turnout.resolver.plan import ResolvedModel

GPU_FORMATS = frozenset({"awq", "gptq", "fp8", "fp4", "bnb"})


@dataclass(frozen=True)
class Context:
    """What an engine's checks may look at besides the model and the hardware."""

    catalog: Catalog
    explicit: bool  # the user asked for this engine by name


#: A check returns None when the engine can do it, else the reason it cannot.
ModelCheck = Callable[[ResolvedModel, str, Context], "str | None"]
NodeCheck = Callable[[ResolvedModel, NodeInfo], "str | None"]
#: How an engine lays one replica over ``nodes`` nodes of ``devices`` devices each: (tensor, pipeline) parallel.
MultiNodeLayout = Callable[[int, int], "tuple[int, int]"]


def _any_node(model: ResolvedModel, node: NodeInfo) -> str | None:
    return None


@dataclass(frozen=True)
class Engine:
    """One inference engine's rules."""

    name: str
    accelerators: tuple[str, ...]  # hardware it can run on at all, in no particular order
    check_model: ModelCheck  # format, quantization, architecture, type on an accelerator
    check_node: NodeCheck = _any_node  # per-node limits (e.g. FP8 compute capability)
    shm: bool = False  # needs a large /dev/shm (NCCL, shared-memory IPC)
    #: tensor parallelism shards attention heads evenly: the size must divide num_attention_heads
    splits_heads: bool = False
    #: how a replica spans several nodes (engine's own multi-node mode); None: one node only
    multi_node: MultiNodeLayout | None = None
    #: On CPU: the resident memory (MiB) of turnout-shim serving a model with this engine, beyond the
    #: weights × headroom: interpreter, libraries, the engine's buffers. Measured (docs/operator.md,
    #: "Resource requests"); None: the operator config's memoryOverheadMib.
    cpu_baseline_mib: int | None = None


def architecture_reason(engine: str, model: ResolvedModel, ctx: Context) -> str | None:
    """vLLM and SGLang serve architectures on their lists; say why not otherwise."""
    if model.architecture is None:
        if ctx.explicit:
            return None  # the user vouches for it
        return f"architecture unknown: set model.architecture so auto can check it against {engine}'s list"
    if "vision" in model.abilities or "audio" in model.abilities or "omni" in model.abilities:
        known = ctx.catalog.engine_architectures(engine, "multimodal")
    elif model.abilities:
        known = frozenset().union(
            *(ctx.catalog.engine_architectures(engine, a) for a in ("chat", "generate") if a in model.abilities)
        )
    else:
        known = ctx.catalog.engine_architectures(engine)
    if model.architecture not in known:
        return f"architecture {model.architecture} is not in {engine}'s supported list"
    return None


def quantization_reason(engine: str, model: ResolvedModel, allowed: dict[str, tuple[str, ...] | None]) -> str | None:
    """Format and quantization against an engine's table (None: any quantization)."""
    if model.format not in allowed:
        return f"{engine} does not serve {model.format} weights (it serves {', '.join(allowed)})"
    quants = allowed[model.format]
    value = model.canonical_quantization
    if quants is None or value is None:
        return None
    if value.lower() not in {q.lower() for q in quants}:
        spelled = model.quantization if value == model.quantization else f"{model.quantization} (= {value})"
        return f"{engine} serves {model.format} only as {'/'.join(quants)}, not {spelled}"
    return None


def fp8_node_reason(model: ResolvedModel, node: NodeInfo) -> str | None:
    """FP8 weights need compute capability 8.9 (Ada) or newer."""
    if model.format != "fp8" and model.canonical_quantization != "FP8":
        return None
    cc = node.compute_capability
    if cc is None:
        return "fp8 needs compute capability >= 8.9; the node does not label it (nvidia.com/gpu.compute.*)"
    if cc < (8, 9):
        return f"fp8 needs compute capability >= 8.9; {node.product or node.name} has {cc[0]}.{cc[1]}"
    return None
