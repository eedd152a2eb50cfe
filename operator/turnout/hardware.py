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
ASCEND_LABEL = "accelerator"  # accelerator=huawei-Ascend910 (every 910 series chip), huawei-Ascend310P, ...
ASCEND_CHIP_LABEL = "node.kubernetes.io/npu.chip.name"  # the chip as npu-smi names it: 910B3, 910ProB, 310P3
ASCEND_TYPE_LABEL = "accelerator-type"  # the server: module-910b-8, card-910b-2, module, card, half
ACCELERATOR_LABEL = "turnout.dev/accelerator"  # set by the host agent: metal | cpu
METAL_RESOURCE = "turnout.dev/metal"
AGENT_TAINT = "turnout.dev/agent"
MEMORY_LABEL = "turnout.dev/memory"  # unified memory of a Metal host, e.g. 64Gi
#: Taints of the node-lifecycle controller (and the NodeTaint admission plugin) on nodes that are not ready.
NOT_READY_TAINTS = frozenset({"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"})

#: HBM per NPU (MiB) by the chip name the Ascend device plugin writes into node.kubernetes.io/npu.chip.name
#: (docs/hardware.md has the table and its sources). 910B4 is the 32 GB member of the 910B series.
ASCEND_CHIP_MEMORY_MIB = {
    "910A": 32768,
    "910ProA": 32768,
    "910PremiumA": 32768,
    "910ProB": 32768,
    "910B1": 65536,
    "910B2": 65536,
    "910B2C": 65536,
    "910B3": 65536,
    "910B4": 32768,
    "310P1": 24576,
    "310P2": 24576,
    "310P3": 24576,
    "310P4": 24576,
    "310": 8192,
}
#: By extended resource, when the node has no chip label. The MindCluster plugin calls every 910 series chip
#: (910A and 910B alike) huawei.com/Ascend910, so that name keeps the smaller, 32 GB, figure; older plugins and
#: HAMi name the 910B series huawei.com/Ascend910B (B4 separately).
ASCEND_MEMORY_MIB = {
    "Ascend910": 32768,
    "Ascend910A": 32768,
    "Ascend910B": 65536,
    "Ascend910B1": 65536,
    "Ascend910B2": 65536,
    "Ascend910B3": 65536,
    "Ascend910B4": 32768,
    "Ascend310P": 24576,
    "Ascend310": 8192,
}
#: What an Ascend node is assumed to have when neither its chip nor its resource name is known (MiB).
ASCEND_DEFAULT_MIB = 32768

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
    #: the node label that picks nodes of this product, e.g. (nvidia.com/gpu.product, NVIDIA-H100-80GB-HBM3)
    product_label: tuple[str, str] | None = None
    #: how device memory was worked out when no label gave it (said in the plan), e.g. an assumed default
    memory_note: str | None = None


LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"


@dataclass(frozen=True)
class ClusterFeatures:
    """APIs the cluster serves that change what can be planned (set from API discovery).

    ``leader_worker_set``: LeaderWorkerSet (``leaderworkerset.x-k8s.io/v1``) is served, so a model
    larger than one node can run as one group of pods across several nodes.
    """

    leader_worker_set: bool = False

    @classmethod
    def from_api_versions(cls, versions: Iterable[str]) -> ClusterFeatures:
        """From the group/versions the API server serves, as ``kubectl api-versions`` prints them."""
        served = {str(v).strip() for v in versions}
        return cls(leader_worker_set=LWS_API_VERSION in served)


@dataclass(frozen=True)
class Hardware:
    """Every schedulable node, in name order, and the cluster features that matter to plans."""

    nodes: tuple[NodeInfo, ...] = ()
    features: ClusterFeatures = field(default_factory=ClusterFeatures)

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
        product = labels.get(NVIDIA_PRODUCT)
        return NodeInfo(
            accelerator="nvidia",
            devices=gpus,
            device_memory_mib=_int_label(labels, NVIDIA_MEMORY),
            product=product,
            compute_capability=(major, minor or 0) if major is not None else None,
            resource=NVIDIA_RESOURCE,
            product_label=(NVIDIA_PRODUCT, product) if product else None,
            **common,
        )
    for resource in sorted(alloc):
        if resource.startswith(ASCEND_RESOURCE_PREFIX) and parse_quantity(alloc[resource]) > 0:
            return _ascend_node(resource, int(parse_quantity(alloc[resource])), labels, common)
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


def ascend_memory(resource_model: str, labels: Mapping[str, str]) -> tuple[int, str, str | None]:
    """(MiB per NPU, product, note) for an Ascend node: the chip label, else the resource name, else a default.

    The note is None when the memory is known, else it says what was assumed (the plan repeats it).
    """
    chip = labels.get(ASCEND_CHIP_LABEL, "").strip()
    if chip in ASCEND_CHIP_MEMORY_MIB:
        return ASCEND_CHIP_MEMORY_MIB[chip], f"Ascend{chip}", None
    if chip:
        return ASCEND_DEFAULT_MIB, f"Ascend{chip}", (
            f"Ascend chip {chip} ({ASCEND_CHIP_LABEL}) is not in turnout's table: assumed "
            f"{ASCEND_DEFAULT_MIB // 1024} GiB per NPU (see docs/hardware.md)"
        )
    if resource_model not in ASCEND_MEMORY_MIB:
        return ASCEND_DEFAULT_MIB, resource_model, (
            f"huawei.com/{resource_model} is not in turnout's table and {ASCEND_CHIP_LABEL} is not set: assumed "
            f"{ASCEND_DEFAULT_MIB // 1024} GiB per NPU (see docs/hardware.md)"
        )
    mib = ASCEND_MEMORY_MIB[resource_model]
    if resource_model != "Ascend910":
        return mib, resource_model, None
    server = labels.get(ASCEND_TYPE_LABEL, "")
    which = f"{ASCEND_TYPE_LABEL}={server} says a 910B server, but " if "910b" in server.lower() else ""
    return mib, resource_model, (
        f"{which}{ASCEND_CHIP_LABEL} is not set: assumed {mib // 1024} GiB per NPU for huawei.com/Ascend910 "
        "(910A, 910B4; the other 910B chips have 64; see docs/hardware.md)"
    )


def _ascend_node(resource: str, devices: int, labels: Mapping[str, str], common: dict[str, Any]) -> NodeInfo:
    model = resource.split("/", 1)[1]
    mib, product, note = ascend_memory(model, labels)
    chip = labels.get(ASCEND_CHIP_LABEL, "").strip()
    if chip:
        selector: tuple[str, str] | None = (ASCEND_CHIP_LABEL, chip)
    elif labels.get(ASCEND_LABEL):
        selector = (ASCEND_LABEL, labels[ASCEND_LABEL])
    else:
        selector = None
    return NodeInfo(
        accelerator="ascend",
        devices=devices,
        device_memory_mib=mib,
        product=product,
        resource=resource,
        product_label=selector,
        memory_note=note,
        **common,
    )


def parse_nodes(
    nodes: Iterable[Mapping[str, Any]] | Mapping[str, Any], features: ClusterFeatures | None = None
) -> Hardware:
    """Nodes (a list, or a ``v1 List``/``NodeList`` object) as Hardware, with the cluster's features."""
    if isinstance(nodes, Mapping):
        nodes = nodes.get("items") or []
    infos = [info for node in nodes if isinstance(node, Mapping) and (info := node_info(node))]
    return Hardware(tuple(sorted(infos, key=lambda n: n.name)), features or ClusterFeatures())
