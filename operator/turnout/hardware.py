"""Hardware classes from Kubernetes Node objects.

Pure: takes the Node dicts the API returns (or ``kubectl get nodes -o yaml``
prints) and says, per node, which accelerator it offers, how many devices,
how much memory each has. Unschedulable and NotReady nodes don't count, nor do
nodes the control plane taints as not ready or unreachable: a node that has just
registered carries ``node.kubernetes.io/not-ready`` until the node-lifecycle
controller has seen it Ready (the NodeTaint admission plugin adds it at creation,
whatever the Ready condition says), and one whose kubelet stopped reporting gets
``node.kubernetes.io/unreachable``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Labels and resources the resolver reads (and the renderer selects on).
NVIDIA_RESOURCE = "nvidia.com/gpu"
NVIDIA_PRODUCT = "nvidia.com/gpu.product"
NVIDIA_MEMORY = "nvidia.com/gpu.memory"  # MiB per device (GPU Feature Discovery)
NVIDIA_COUNT = "nvidia.com/gpu.count"
NVIDIA_CC_MAJOR = "nvidia.com/gpu.compute.major"
NVIDIA_CC_MINOR = "nvidia.com/gpu.compute.minor"
ASCEND_RESOURCE_PREFIX = "huawei.com/Ascend"
ASCEND_LABEL = "accelerator"  # accelerator=huawei-Ascend910
ACCELERATOR_LABEL = "turnout.dev/accelerator"  # set by the host agent: metal | cpu
METAL_RESOURCE = "turnout.dev/metal"
AGENT_TAINT = "turnout.dev/agent"
MEMORY_LABEL = "turnout.dev/memory"  # unified memory of a Metal host, e.g. 64Gi
#: Taints of the node-lifecycle controller (and the NodeTaint admission plugin) on nodes that are not ready.
NOT_READY_TAINTS = frozenset({"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"})

#: HBM per Ascend device when no label says otherwise (MiB).
ASCEND_MEMORY_MIB = {"Ascend910": 32768, "Ascend910B": 65536, "Ascend910B3": 65536, "Ascend310P": 24576}

_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "m": 1e-3,
}


def parse_quantity(value: Any) -> float:
    """A Kubernetes quantity (``16Gi``, ``500m``, ``8``) as a number; 0 when unreadable."""
    match = _QUANTITY.match(str(value).strip())
    if not match or match.group(2) not in _UNITS:
        return 0.0
    try:
        return float(match.group(1)) * _UNITS[match.group(2)]
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class Taint:
    key: str
    value: str | None
    effect: str


@dataclass(frozen=True)
class NodeInfo:
    """One schedulable node as the resolver sees it."""

    name: str
    accelerator: str  # nvidia | ascend | metal | cpu
    devices: int  # allocatable accelerator devices (0 on cpu)
    device_memory_mib: int | None  # per device; unified memory for metal; None if unknown
    product: str | None = None
    compute_capability: tuple[int, int] | None = None
    resource: str | None = None  # the extended resource to request, e.g. nvidia.com/gpu
    cpu_millis: int = 0
    memory_mib: int = 0  # allocatable host memory
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    arch: str = "amd64"


@dataclass(frozen=True)
class Hardware:
    """Every schedulable node, in name order."""

    nodes: tuple[NodeInfo, ...] = ()

    def of(self, accelerator: str) -> tuple[NodeInfo, ...]:
        return tuple(n for n in self.nodes if n.accelerator == accelerator)

    def accelerators(self) -> set[str]:
        return {n.accelerator for n in self.nodes}


def _ready(node: Mapping[str, Any]) -> bool:
    for taint in (node.get("spec") or {}).get("taints") or []:
        if isinstance(taint, Mapping) and taint.get("key") in NOT_READY_TAINTS:
            return False
    conditions = (node.get("status") or {}).get("conditions")
    if not conditions:
        return True  # objects written by hand (examples) carry no conditions
    for cond in conditions:
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def _int_label(labels: Mapping[str, str], key: str) -> int | None:
    try:
        return int(str(labels[key]))
    except (KeyError, ValueError):
        return None


def node_info(node: Mapping[str, Any]) -> NodeInfo | None:
    """One Node object as a NodeInfo, or None when it cannot take pods."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    if not isinstance(meta, Mapping) or not meta.get("name"):
        return None
    if spec.get("unschedulable") or not _ready(node):
        return None
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    alloc = status.get("allocatable") or status.get("capacity") or {}
    taints = tuple(
        Taint(str(t.get("key", "")), t.get("value"), str(t.get("effect", "")))
        for t in spec.get("taints") or []
        if isinstance(t, Mapping)
    )
    common = {
        "name": str(meta["name"]),
        "cpu_millis": int(parse_quantity(alloc.get("cpu", 0)) * 1000),
        "memory_mib": int(parse_quantity(alloc.get("memory", 0)) // 2**20),
        "labels": labels,
        "taints": taints,
        "arch": labels.get("kubernetes.io/arch", "amd64"),
    }
    gpus = int(parse_quantity(alloc.get(NVIDIA_RESOURCE, 0)))
    if gpus > 0:
        major, minor = _int_label(labels, NVIDIA_CC_MAJOR), _int_label(labels, NVIDIA_CC_MINOR)
        return NodeInfo(
            accelerator="nvidia",
            devices=gpus,
            device_memory_mib=_int_label(labels, NVIDIA_MEMORY),
            product=labels.get(NVIDIA_PRODUCT),
            compute_capability=(major, minor or 0) if major is not None else None,
            resource=NVIDIA_RESOURCE,
            **common,
        )
    for resource in sorted(alloc):
        if resource.startswith(ASCEND_RESOURCE_PREFIX) and parse_quantity(alloc[resource]) > 0:
            model = resource.split("/", 1)[1]
            return NodeInfo(
                accelerator="ascend",
                devices=int(parse_quantity(alloc[resource])),
                device_memory_mib=ASCEND_MEMORY_MIB.get(model, ASCEND_MEMORY_MIB["Ascend910"]),
                product=model,
                resource=resource,
                **common,
            )
    if labels.get(ACCELERATOR_LABEL) == "metal":
        unified = parse_quantity(labels.get(MEMORY_LABEL, 0)) // 2**20 or common["memory_mib"]
        return NodeInfo(
            accelerator="metal",
            devices=max(1, int(parse_quantity(alloc.get(METAL_RESOURCE, 1)))),
            device_memory_mib=int(unified),
            product=labels.get("turnout.dev/chip"),
            resource=METAL_RESOURCE if METAL_RESOURCE in alloc else None,
            **{**common, "arch": labels.get("kubernetes.io/arch", "arm64")},
        )
    return NodeInfo(accelerator="cpu", devices=0, device_memory_mib=None, **common)


def parse_nodes(nodes: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> Hardware:
    """Nodes (a list, or a ``v1 List``/``NodeList`` object) as Hardware."""
    if isinstance(nodes, Mapping):
        nodes = nodes.get("items") or []
    infos = [info for node in nodes if isinstance(node, Mapping) and (info := node_info(node))]
    return Hardware(tuple(sorted(infos, key=lambda n: n.name)))
