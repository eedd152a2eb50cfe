"""The Node the agent registers, its status, and its Lease heartbeat."""

from __future__ import annotations

import datetime
import platform
import socket
from collections.abc import Mapping
from typing import Any

from turnout.agent.config import AgentConfig
from turnout.hardware import ACCELERATOR_LABEL, AGENT_TAINT, MEMORY_LABEL, METAL_RESOURCE
from turnout.localhw import Probes, detect_node

LEASE_NAMESPACE = "kube-node-lease"
#: The marker virtual-kubelet providers use, so admins can keep DaemonSets off agent nodes.
TYPE_LABEL = "type"
TYPE_VALUE = "virtual-kubelet"
AGENT_VERSION = "v0.1.0-turnout-agent"
#: Marks the Node as a turnout host agent's. Under ``node.kubernetes.io/``, which NodeRestriction lets a
#: node set on itself (``kubernetes.io/role`` it refuses).
AGENT_LABEL = "node.kubernetes.io/turnout-agent"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    """A ``MicroTime`` (Lease renewTime)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def detect_address(server: str | None = None) -> str:
    """This host's outward address: the source address of a route towards the API server (no packet is sent)."""
    host = "10.255.255.255"
    if server:
        host = server.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]") or host
    for target in (host, "10.255.255.255"):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.connect((socket.gethostbyname(target), 443))
                address = sock.getsockname()[0]
        except OSError:
            continue
        # Loopback is no pod IP (EndpointSlices reject it): a local API server (kind) needs the LAN address.
        if address and not address.startswith(("0.", "127.")):
            return address
    return "127.0.0.1"


def accelerator_of(config: AgentConfig, detected: Mapping[str, Any]) -> str:
    """``metal`` or ``cpu``: the flag, or with ``auto`` what local detection found."""
    if config.accelerator != "auto":
        return config.accelerator
    labels = (detected.get("metadata") or {}).get("labels") or {}
    return "metal" if labels.get(ACCELERATOR_LABEL) == "metal" else "cpu"


def _memory_quantity(raw: Any) -> str:
    try:
        return f"{int(raw) // 2**20}Mi"
    except (TypeError, ValueError):
        return "0"


def node_labels(config: AgentConfig, accelerator: str, detected: Mapping[str, Any]) -> dict[str, str]:
    labels = dict((detected.get("metadata") or {}).get("labels") or {})
    memory = (detected.get("status") or {}).get("allocatable", {}).get("memory", 0)
    out = {
        "kubernetes.io/hostname": config.node_name,
        "kubernetes.io/os": labels.get("kubernetes.io/os", platform.system().lower()),
        "kubernetes.io/arch": labels.get("kubernetes.io/arch", platform.machine()),
        AGENT_LABEL: "true",
        "node.kubernetes.io/instance-type": f"turnout-agent-{accelerator}",
        TYPE_LABEL: TYPE_VALUE,
        ACCELERATOR_LABEL: accelerator,
    }
    if accelerator == "metal":
        out[MEMORY_LABEL] = _memory_quantity(memory)
    out.update(config.extra_labels)
    return dict(sorted(out.items()))


def node_object(config: AgentConfig, address: str, probes: Probes | None = None) -> dict[str, Any]:
    """The Node to register: labels, taint, capacity from the real host, conditions, address."""
    detected = detect_node(probes)
    accelerator = accelerator_of(config, detected)
    alloc = (detected.get("status") or {}).get("allocatable") or {}
    capacity = {
        "cpu": str(alloc.get("cpu", "1")),
        "memory": _memory_quantity(alloc.get("memory", 0)),
        "pods": str(config.max_pods),
    }
    if accelerator == "metal":
        capacity[METAL_RESOURCE] = "1"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": config.node_name,
            "labels": node_labels(config, accelerator, detected),
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "turnout.dev/agent-version": AGENT_VERSION},
        },
        "spec": {"taints": [{"key": AGENT_TAINT, "value": "true", "effect": "NoSchedule"}]},
        "status": node_status(config, address, capacity),
    }


def _condition(type_: str, status: str, reason: str, message: str, stamp: str) -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}


def node_status(config: AgentConfig, address: str, capacity: Mapping[str, str], *, ready: bool = True,
                reason: str | None = None, message: str = "turnout host agent is posting ready status",
                ) -> dict[str, Any]:
    """The Node's status; the Ready condition's reason is ``AgentReady``/``AgentNotReady`` unless given."""
    stamp = now()
    reason = reason or ("AgentReady" if ready else "AgentNotReady")
    conditions = [
        _condition("Ready", "True" if ready else "False", reason, message, stamp),
        _condition("MemoryPressure", "False", "AgentHasSufficientMemory", "not monitored by the agent", stamp),
        _condition("DiskPressure", "False", "AgentHasNoDiskPressure", "not monitored by the agent", stamp),
        _condition("PIDPressure", "False", "AgentHasSufficientPID", "not monitored by the agent", stamp),
        _condition("NetworkUnavailable", "False", "AgentNetworkReady", "host network", stamp),
    ]
    return {
        "capacity": dict(capacity),
        "allocatable": dict(capacity),
        "conditions": conditions,
        "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": config.node_name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "architecture": platform.machine(),
            "operatingSystem": platform.system().lower(),
            "osImage": f"{platform.system()} {platform.release()}",
            "kernelVersion": platform.release(),
            "kubeletVersion": AGENT_VERSION,
            "kubeProxyVersion": "",
            "containerRuntimeVersion": "turnout-agent://native-processes",
            "machineID": "", "systemUUID": "", "bootID": "",
        },
    }


def merge_conditions(previous: list[dict[str, Any]] | None, fresh: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fresh conditions, keeping ``lastTransitionTime`` from ``previous`` where the status did not change."""
    before = {c.get("type"): c for c in previous or []}
    out = []
    for cond in fresh:
        old = before.get(cond["type"])
        if old and old.get("status") == cond["status"] and old.get("lastTransitionTime"):
            cond = {**cond, "lastTransitionTime": old["lastTransitionTime"]}
        out.append(cond)
    return out


def lease_object(config: AgentConfig, node_uid: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": config.node_name, "namespace": LEASE_NAMESPACE}
    if node_uid:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": config.node_name, "uid": node_uid}]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {"holderIdentity": config.node_name, "leaseDurationSeconds": config.lease_seconds,
                 "renewTime": micro_now()},
    }
