"""What every engine module provides: everything turnout knows about one engine, as one :class:`Engine`.

Its rules (two checks and a few flags), and per accelerator it runs on, auto's preference rank, the shim's
device and the image's name; the shim backend that serves it (a ``"module:Class"`` string the shim imports
lazily) and how one replica spans nodes. The tables the rest of turnout reads (``ENGINES``, ``PREFERENCE``,
``turnout.images.IMAGE_MATRIX``, ``turnout.shim.backends.BACKENDS``) are derived from these objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from turnout.hardware import NodeInfo
from turnout.resolver.plan import ResolvedModel

if TYPE_CHECKING:  # the registry is read by the shim and the image tools, which never load the catalog
    from turnout.catalog import Catalog

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
class On:
    """How an engine runs on one accelerator."""

    #: ``engine: auto`` tries the engines of an accelerator in rank order, lowest first
    rank: int
    device: str  # the shim's --device: cuda | npu | mps | cpu
    #: the image's name: built from ``images/<name>/Dockerfile``; on metal, the environment the host agent maps
    #: it to (Linux containers cannot reach Metal)
    image: str


@dataclass(frozen=True, eq=False)
class Engine:
    """One inference engine: its rules, where it runs, which image and shim backend serve it."""

    name: str
    on: Mapping[str, On]  # accelerator -> how it runs there; the hardware it can run on at all
    check_model: ModelCheck  # format, quantization, architecture, type on an accelerator
    #: model type -> the shim backend serving it, as ``"module:Class"`` (imported only by the shim, lazily);
    #: ``None`` as model type matches any type
    backends: Mapping[str | None, str] = field(default_factory=dict)
    check_node: NodeCheck = _any_node  # per-node limits (e.g. FP8 compute capability)
    shm: bool = False  # needs a large /dev/shm (NCCL, shared-memory IPC)
    #: tensor parallelism shards attention heads evenly: the size must divide num_attention_heads
    splits_heads: bool = False
    #: how a replica spans several nodes (engine's own multi-node mode); None: one node only
    multi_node: MultiNodeLayout | None = None
    #: On CPU: the resident memory (MiB) of turnout-shim serving a model with this engine, beyond the
    #: weights × headroom: interpreter, libraries, the engine's buffers; None: the operator config's
    #: memoryOverheadMib. Measured (docs/operator.md, "Resource requests"): the peak RSS (VmHWM) of the shim
    #: serving the engine's tiny builtin model on CPU after 9 chat requests, 8 at once, + 10%, rounded up to
    #: 64 MiB. The weights and their KV cache come on top (weights × memoryHeadroom).
    cpu_baseline_mib: int | None = None
    #: in the operator config's default autoEngines (``engine: auto`` may choose it); False: opt-in
    auto: bool = True

    @property
    def accelerators(self) -> tuple[str, ...]:
        """The hardware it can run on at all."""
        return tuple(self.on)


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
