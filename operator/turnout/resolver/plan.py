"""What the resolver returns: a Plan, or a Rejection that says why for every engine."""

from __future__ import annotations

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
        }


@dataclass(frozen=True)
class Placement:
    """Where the pods go and what they ask the scheduler for."""

    accelerator: str
    devices: int  # accelerator devices per replica (0 on cpu)
    resource: str | None  # extended resource, e.g. nvidia.com/gpu
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[tuple[tuple[str, str], ...], ...] = ()  # each a sorted tuple of (field, value)
    product: str | None = None
    memory_needed_mib: int | None = None
    memory_available_mib: int | None = None
    nodes: tuple[str, ...] = ()  # nodes that fit, for the record

    def to_dict(self) -> dict[str, Any]:
        return {
            "accelerator": self.accelerator,
            "devices": self.devices,
            "resource": self.resource,
            "product": self.product,
            "nodeSelector": dict(self.node_selector),
            "tolerations": [dict(t) for t in self.tolerations],
            "memoryNeededMiB": self.memory_needed_mib,
            "memoryAvailableMiB": self.memory_available_mib,
            "nodes": list(self.nodes),
        }


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

    ok = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "accelerator": self.accelerator,
            "image": self.image,
            "tensorParallelSize": self.tensor_parallel_size,
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
            "engine": None,
            "accelerator": None,
            "image": None,
            "tensorParallelSize": None,
            "model": None,
            "reason": self.message,
            "candidates": [],
            "rejected": [r.to_dict() for r in self.rejected],
        }
