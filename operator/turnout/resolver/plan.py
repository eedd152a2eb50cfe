"""What the resolver returns: a Plan, or a Rejection that says why for every engine."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from turnout.resolver.quantization import canonical


@dataclass(frozen=True)
class EngineReason:
    """Why one engine was not chosen."""

    engine: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"engine": self.engine, "reason": self.reason}


@dataclass(frozen=True)
class ResolvedModel:
    """The model as the plan will serve it."""

    uri: str
    format: str
    quantization: str | None
    architecture: str | None
    size_b: float | None
    model_type: str  # llm | embedding | rerank
    family: str | None = None
    abilities: tuple[str, ...] = ()
    attention_heads: int | None = None  # config.json num_attention_heads, when known

    def __hash__(self) -> int:
        # Hashed on every memo lookup of the resolver: computed once per (immutable) object.
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash((self.uri, self.format, self.quantization, self.architecture, self.size_b,
                           self.model_type, self.family, self.abilities, self.attention_heads))
            object.__setattr__(self, "_hash", cached)
        return cached

    @property
    def canonical_quantization(self) -> str | None:
        """The quantization as engine rules read it (``8bits`` -> ``Int8``); ``quantization`` keeps the spelling."""
        return canonical(self.format, self.quantization)

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "uri": self.uri,
            "format": self.format,
            "quantization": self.quantization,
            "architecture": self.architecture,
            "size": self.size_b,
            "type": self.model_type,
            "attentionHeads": self.attention_heads,
        }


@dataclass(frozen=True)
class Placement:
    """Where the pods go and what they ask the scheduler for."""

    accelerator: str
    devices: int  # accelerator devices per pod (0 on cpu); a replica has nodes_per_replica pods
    resource: str | None  # extended resource, e.g. nvidia.com/gpu
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[tuple[tuple[str, str], ...], ...] = ()  # each a sorted tuple of (field, value)
    product: str | None = None
    memory_needed_mib: int | None = None
    memory_available_mib: int | None = None
    nodes: tuple[str, ...] = ()  # nodes that fit, for the record
    nodes_per_replica: int = 1  # pods of one replica, one per node: > 1 is a LeaderWorkerSet group
    usable_per_device_mib: int | None = None  # what one device offers the engine

    @property
    def multi_node(self) -> bool:
        return self.nodes_per_replica > 1

    def describe(self) -> str:
        """Where one replica runs, e.g. ``4 × NVIDIA-H100-80GB-HBM3`` or ``2 nodes × 8 × NVIDIA-H100-80GB-HBM3``."""
        if self.accelerator in ("cpu", "metal") or not self.devices:
            return self.accelerator
        what = f"{self.devices} × {self.product or self.accelerator}"
        return f"{self.nodes_per_replica} nodes × {what}" if self.multi_node else what

    def to_dict(self) -> dict[str, Any]:
        return {
            "accelerator": self.accelerator,
            "devices": self.devices,
            "nodesPerReplica": self.nodes_per_replica,
            "resource": self.resource,
            "product": self.product,
            "nodeSelector": dict(self.node_selector),
            "tolerations": [dict(t) for t in self.tolerations],
            "memoryNeededMiB": self.memory_needed_mib,
            "memoryAvailableMiB": self.memory_available_mib,
            "usablePerDeviceMiB": self.usable_per_device_mib,
            "nodes": list(self.nodes),
        }


#: What a plan chose, first in its dict; a rejection writes them as null so both results have one shape.
CHOSEN_FIELDS = ("engine", "accelerator", "image", "tensorParallelSize", "pipelineParallelSize", "nodesPerReplica",
                 "placedOn", "model")


@dataclass(frozen=True)
class Plan:
    """The engine, image, model and placement chosen for one ModelDeployment."""

    engine: str
    accelerator: str
    image: str
    device: str  # the shim's --device: cuda | npu | mps | cpu
    tensor_parallel_size: int
    model: ResolvedModel
    placement: Placement
    reason: str
    candidates: tuple[str, ...] = ()
    rejected: tuple[EngineReason, ...] = ()
    notes: tuple[str, ...] = ()
    shm: bool = False  # the engine needs a large /dev/shm (vLLM, SGLang)
    pipeline_parallel_size: int = 1  # vLLM across nodes: one pipeline stage per node

    ok = True

    @property
    def multi_node(self) -> bool:
        """One replica spans several nodes (rendered as a LeaderWorkerSet)."""
        return self.placement.multi_node

    def status_fields(self) -> dict[str, Any]:
        """The sizing fields of ModelDeployment status (camelCase, as the API has them)."""
        return {
            "tensorParallelSize": self.tensor_parallel_size,
            "pipelineParallelSize": self.pipeline_parallel_size,
            "nodesPerReplica": self.placement.nodes_per_replica,
            "devicesPerNode": self.placement.devices,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "accelerator": self.accelerator,
            "image": self.image,
            "tensorParallelSize": self.tensor_parallel_size,
            "pipelineParallelSize": self.pipeline_parallel_size,
            "nodesPerReplica": self.placement.nodes_per_replica,
            "placedOn": self.placement.describe(),
            "model": self.model.to_dict(),
            "placement": self.placement.to_dict(),
            "reason": self.reason,
            "candidates": list(self.candidates),
            "rejected": [r.to_dict() for r in self.rejected],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Rejection:
    """No engine can serve the deployment here; one reason per engine."""

    message: str
    rejected: tuple[EngineReason, ...] = field(default_factory=tuple)

    ok = False
    engine = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **dict.fromkeys(CHOSEN_FIELDS),
            "reason": self.message,
            "candidates": [],
            "rejected": [r.to_dict() for r in self.rejected],
        }


def grouped_reasons(rejected: Iterable[tuple[str, str]]) -> list[str]:
    """``engine, engine: reason`` lines from (engine, reason) pairs, one per distinct reason, in first-seen order.

    For people (``plan``, ``up``): status.rejected keeps one entry per engine.
    """
    groups: dict[str, list[str]] = {}
    for engine, reason in rejected:
        groups.setdefault(reason, []).append(engine)
    return [f"{', '.join(engines)}: {reason}" for reason, engines in groups.items()]


def explain_rejection(message: str, rejected: Iterable[tuple[str, str]]) -> list[str]:
    """A rejection's message, then its grouped reasons; one line when every engine gave the message itself."""
    pairs = list(rejected)
    if pairs and all(reason == message for _, reason in pairs):
        return [f"{message} (all engines: {', '.join(engine for engine, _ in pairs)})"]
    return [message, *grouped_reasons(pairs)]
