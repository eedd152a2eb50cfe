"""What the controller knows about the cluster: compact copies of watched objects.

kopf's indexes hold these compact views (kopf fills every index before any
handler runs, so the first reconcile already sees all nodes). The functions
here are pure: they reduce Node objects to the fields the hardware parser
reads, children (Deployment, Service, ...) and Pods to the typed views the
reconcile's observe → decide → act passes along (:class:`Child`, :class:`Pod`),
and diagnose failing pods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from turnout.render.manifests import INSTANCE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, SPEC_HASH_LABEL

#: On a model server pod: the LoRA adapters its engine holds, as the operator loaded them (JSON, see
#: :mod:`turnout.controller.adapters`); the gateway routes an adapter's requests to the pods that hold it.
ADAPTERS_ANNOTATION = "turnout.dev/adapters"
#: LeaderWorkerSet's label of a group's pod index: 0 is the leader (it serves the API), others run the engine only
LWS_WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"

__all__ = ["ADAPTERS_ANNOTATION", "INSTANCE_LABEL", "MANAGED_BY", "MANAGED_BY_LABEL", "SPEC_HASH_LABEL"]


def _plain(value: Any) -> Any:
    """A deep plain copy of a (possibly kopf-wrapped) mapping or list."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def lean_copy(body: Mapping[str, Any], *, drop_annotations: tuple[str, ...] = ()) -> dict[str, Any]:
    """A plain copy of an object without ``metadata.managedFields`` (and the named annotations).

    A real API server sends managedFields with every object, often larger than the spec; nothing here
    reads them, so they are never copied.
    """
    out = {str(k): _plain(v) for k, v in body.items() if k != "metadata"}
    meta = body.get("metadata") or {}
    lean = {str(k): _plain(v) for k, v in meta.items() if k not in ("managedFields", "annotations")}
    annotations = {str(k): v for k, v in (meta.get("annotations") or {}).items() if k not in drop_annotations}
    if annotations:
        lean["annotations"] = annotations
    out["metadata"] = lean
    return out


def compact_node(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a Node the hardware parser reads; heartbeat noise (times) dropped."""
    meta, spec, status = body.get("metadata", {}), body.get("spec", {}) or {}, body.get("status", {}) or {}
    conditions = [
        {"type": c.get("type"), "status": c.get("status")}
        for c in status.get("conditions") or []
        if c.get("type") == "Ready"
    ]
    return {
        "metadata": {"name": meta.get("name"), "labels": _plain(meta.get("labels") or {})},
        "spec": {"unschedulable": bool(spec.get("unschedulable")), "taints": _plain(spec.get("taints") or [])},
        "status": {
            "allocatable": _plain(status.get("allocatable") or {}),
            "capacity": _plain(status.get("capacity") or {}),
            "conditions": conditions,
        },
    }


def owner_name(body: Mapping[str, Any], kind: str) -> str | None:
    """The name of the controlling owner of the given kind, if any."""
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == kind:
            return str(ref.get("name"))
    return None


def _int(value: Any) -> int:
    return int(value or 0)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class ObjectCondition:
    """A condition of a watched object (a Pod's, a Deployment's or a LeaderWorkerSet's)."""

    type: str | None
    status: str | None = None
    reason: str | None = None
    message: str | None = None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> ObjectCondition:
        return cls(*(_opt_str(body.get(k)) for k in ("type", "status", "reason", "message")))


@dataclass(frozen=True)
class WorkloadStatus:
    """The rollout status of a Deployment or LeaderWorkerSet (both have these fields)."""

    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    observed_generation: int = 0
    conditions: tuple[ObjectCondition, ...] = ()

    @classmethod
    def of(cls, status: Mapping[str, Any]) -> WorkloadStatus:
        return cls(_int(status.get("replicas")), _int(status.get("readyReplicas")),
                   _int(status.get("updatedReplicas")), _int(status.get("observedGeneration")),
                   tuple(ObjectCondition.of(c) for c in status.get("conditions") or []))

    def condition(self, type_: str) -> ObjectCondition | None:
        return next((c for c in self.conditions if c.type == type_), None)


@dataclass(frozen=True)
class Child:
    """A Deployment, LeaderWorkerSet, Service, InferencePool or claim as last seen: identity, labels, owners,
    replicas and rollout status (``status`` None when the object has none yet)."""

    kind: str
    name: str
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    owner_uids: tuple[str, ...] = ()
    deleting: bool = False  # held by a finalizer (a claim a pod still mounts): already on its way out
    replicas: int | None = None  # spec.replicas, for the kinds that have one
    status: WorkloadStatus | None = None

    @property
    def spec_hash(self) -> str | None:
        return self.labels.get(SPEC_HASH_LABEL)


def compact_child(body: Mapping[str, Any]) -> Child:
    """The :class:`Child` view of a watched object (or of what an apply returned)."""
    meta = body.get("metadata", {}) or {}
    spec = body.get("spec", {}) or {}
    status = body.get("status") or {}
    return Child(
        kind=str(body.get("kind")),
        name=str(meta.get("name")),
        namespace=_opt_str(meta.get("namespace")),
        uid=_opt_str(meta.get("uid")),
        resource_version=_opt_str(meta.get("resourceVersion")),
        generation=meta.get("generation"),
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        owner_uids=tuple(sorted(str(r.get("uid")) for r in meta.get("ownerReferences") or [])),
        deleting=bool(meta.get("deletionTimestamp")),
        replicas=spec.get("replicas"),
        status=WorkloadStatus.of(status) if status else None,
    )


@dataclass(frozen=True)
class Waiting:
    reason: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Terminated:
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None

    @property
    def failed(self) -> bool:
        return self.reason == "OOMKilled" or self.exit_code not in (None, 0)


@dataclass(frozen=True)
class ContainerState:
    """One of a container's states (``state`` or ``lastState``): waiting, running or terminated."""

    waiting: Waiting | None = None
    running: bool = False
    terminated: Terminated | None = None

    @classmethod
    def of(cls, state: Mapping[str, Any]) -> ContainerState:
        waiting, terminated = state.get("waiting") or {}, state.get("terminated") or {}
        return cls(
            Waiting(_opt_str(waiting.get("reason")), _opt_str(waiting.get("message"))) if waiting else None,
            "running" in state,
            Terminated(_opt_str(terminated.get("reason")), _opt_str(terminated.get("message")),
                       terminated.get("exitCode")) if terminated else None,
        )


@dataclass(frozen=True)
class Container:
    name: str | None
    ready: bool = False
    restart_count: int = 0
    state: ContainerState = ContainerState()
    last_state: ContainerState = ContainerState()


@dataclass(frozen=True)
class Pod:
    """A model server Pod: phase, scheduling and container states (init containers first)."""

    name: str | None
    deleting: bool = False
    hash: str | None = None  # its spec-hash label
    node: str | None = None  # spec.nodeName, once scheduled
    phase: str | None = None
    conditions: tuple[ObjectCondition, ...] = ()
    containers: tuple[Container, ...] = ()
    ip: str | None = None  # status.podIP: where its shim answers
    adapters: str | None = None  # its turnout.dev/adapters annotation: the LoRA adapters its engine holds
    worker: bool = False  # a LeaderWorkerSet group's pod other than its leader: its shim serves no API

    @property
    def ready(self) -> bool:
        return not self.deleting and any(c.type == "Ready" and c.status == "True" for c in self.conditions)

    @property
    def restarts(self) -> int:
        return sum(c.restart_count for c in self.containers)


def compact_pod(body: Mapping[str, Any]) -> Pod:
    """The :class:`Pod` view of a watched Pod."""
    meta, status = body.get("metadata", {}) or {}, body.get("status", {}) or {}
    return Pod(
        name=_opt_str(meta.get("name")),
        deleting=bool(meta.get("deletionTimestamp")),
        hash=(meta.get("labels") or {}).get(SPEC_HASH_LABEL),
        node=_opt_str((body.get("spec") or {}).get("nodeName")),
        phase=_opt_str(status.get("phase")),
        conditions=tuple(ObjectCondition.of(c) for c in status.get("conditions") or []),
        containers=tuple(
            Container(_opt_str(cs.get("name")), bool(cs.get("ready")), _int(cs.get("restartCount")),
                      ContainerState.of(cs.get("state") or {}), ContainerState.of(cs.get("lastState") or {}))
            for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
        ),
        ip=_opt_str(status.get("podIP")),
        adapters=_opt_str((meta.get("annotations") or {}).get(ADAPTERS_ANNOTATION)),
        worker=(meta.get("labels") or {}).get(LWS_WORKER_INDEX_LABEL, "0") != "0",
    )


@dataclass(frozen=True)
class Problem:
    """Why model server pods are not serving: a CamelCase reason and a message for people."""

    reason: str
    message: str


_PULL = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull")
_CONFIG = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")
# Lower is worse: the first problem found at the lowest rank is reported.
_RANK = {**{r: 0 for r in _PULL}, **{r: 1 for r in _CONFIG}, "OOMKilled": 2, "CrashLoopBackOff": 3,
         "NodeNotReady": 4, "Unschedulable": 5}


def _crash(cs: Container) -> Terminated | None:
    """The failed termination that explains why a container is not serving, or None.

    A container cycles through terminated (Error/OOMKilled), waiting (CrashLoopBackOff) and running (its
    next try, not ready yet) while its process keeps failing; every phase of that cycle reports the same
    termination, so the Degraded condition does not flap between tries. A container that is ready again,
    or whose last run ended well, is not crashing.
    """
    state, last = cs.state, cs.last_state.terminated
    if state.terminated is not None:
        return state.terminated if state.terminated.failed else None
    if (state.waiting is not None and state.waiting.reason == "CrashLoopBackOff") or (
            state.running and not cs.ready and cs.restart_count):
        return last if last is not None and last.failed else None
    return None


def _node_lost(pod: Pod) -> bool:
    """Ready False while ContainersReady is still True: the kubelet stopped reporting and the node lifecycle
    controller marked the pod (it flips only the pod's Ready condition; the kubelet writes both)."""
    conds = {c.type: c.status for c in pod.conditions}
    return conds.get("Ready") == "False" and conds.get("ContainersReady") == "True"


def diagnose(pods: Iterable[Pod]) -> Problem | None:
    """The worst problem among the pods, or None when none is failing.

    A container whose process keeps failing is CrashLoopBackOff with its last exit code and termination
    message (the shim writes its engine's error there) from its first failure on, OOMKilled when the
    kernel killed it; Unschedulable carries the scheduler's message.
    """
    found: list[tuple[int, str, Problem]] = []
    for pod in pods:
        if pod.deleting:
            continue
        name = pod.name
        for cond in pod.conditions:
            if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
                msg = f"pod {name} cannot be scheduled: {cond.message or 'no node fits'}"
                found.append((_RANK["Unschedulable"], str(name), Problem("Unschedulable", msg)))
        if _node_lost(pod):
            msg = (f"pod {name}: its node {pod.node} stopped reporting (the node controller marked the pod not "
                   "ready); it serves again when the node is back, or is evicted after its toleration")
            found.append((_RANK["NodeNotReady"], str(name), Problem("NodeNotReady", msg)))
        for cs in pod.containers:
            waiting = cs.state.waiting or Waiting()
            reason = waiting.reason
            where = f"pod {name} container {cs.name}"
            crash = _crash(cs)
            if reason in _PULL or reason in _CONFIG:
                msg = f"{where}: {reason}: {waiting.message or ''}".rstrip(": ")
                found.append((_RANK[str(reason)], str(name), Problem(str(reason), msg)))
            elif crash is not None and crash.reason == "OOMKilled":
                msg = f"{where} was killed for using more memory than its limit (restarts: {cs.restart_count})"
                found.append((_RANK["OOMKilled"], str(name), Problem("OOMKilled", msg)))
            elif crash is not None or reason == "CrashLoopBackOff":
                crash = crash or Terminated()
                # The termination message: what the shim wrote (its engine's error), else the log's last lines.
                detail = crash.message or crash.reason or waiting.message or ""
                exit_code = crash.exit_code
                restarts = cs.restart_count
                msg = f"{where} keeps crashing (restarts: {restarts}" if restarts else f"{where} exited (restarts: 0"
                msg += f", last exit code {exit_code})" if exit_code is not None else ")"
                if detail:
                    msg += f": {str(detail).strip()}"
                found.append((_RANK["CrashLoopBackOff"], str(name), Problem("CrashLoopBackOff", msg)))
    if not found:
        return None
    found.sort(key=lambda item: (item[0], item[1]))
    return found[0][2]
