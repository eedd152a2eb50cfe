"""What the controller knows about the cluster: compact copies of watched objects.

kopf's indexes hold these compact views (kopf fills every index before any
handler runs, so the first reconcile already sees all nodes). The functions
here are pure: they reduce Node, Deployment and Pod objects to the fields the
controller reads, and diagnose failing pods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from turnout.render.manifests import INSTANCE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, SPEC_HASH_LABEL

__all__ = ["INSTANCE_LABEL", "MANAGED_BY", "MANAGED_BY_LABEL", "SPEC_HASH_LABEL"]


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


def compact_child(body: Mapping[str, Any]) -> dict[str, Any]:
    """A Deployment, Service or claim: identity, labels, owners, replicas and rollout status."""
    meta = body.get("metadata", {})
    spec = body.get("spec", {}) or {}
    out: dict[str, Any] = {
        "kind": body.get("kind"),
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "uid": meta.get("uid"),
        "resourceVersion": meta.get("resourceVersion"),
        "generation": meta.get("generation"),
        "labels": _plain(meta.get("labels") or {}),
        "ownerUids": sorted(str(r.get("uid")) for r in meta.get("ownerReferences") or []),
    }
    if meta.get("deletionTimestamp"):
        out["deleting"] = True  # held by a finalizer (a claim a pod still mounts): already on its way out
    if "replicas" in spec:
        out["replicas"] = spec.get("replicas")
    status = body.get("status") or {}
    if status:
        out["status"] = {
            k: _plain(status[k])
            for k in ("replicas", "readyReplicas", "updatedReplicas", "availableReplicas",
                      "unavailableReplicas", "observedGeneration", "conditions")
            if k in status
        }
    return out


def compact_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """A model server Pod: phase, scheduling and container states."""
    meta, status = body.get("metadata", {}), body.get("status", {}) or {}
    return {
        "name": meta.get("name"),
        "deleting": bool(meta.get("deletionTimestamp")),
        "hash": (meta.get("labels") or {}).get(SPEC_HASH_LABEL),
        "phase": status.get("phase"),
        "conditions": [
            {k: c.get(k) for k in ("type", "status", "reason", "message")}
            for c in status.get("conditions") or []
        ],
        "containers": [
            {
                "name": cs.get("name"),
                "ready": bool(cs.get("ready")),
                "restartCount": cs.get("restartCount", 0),
                "state": _plain(cs.get("state") or {}),
                "lastState": _plain(cs.get("lastState") or {}),
            }
            for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
        ],
    }


@dataclass(frozen=True)
class Problem:
    """Why model server pods are not serving: a CamelCase reason and a message for people."""

    reason: str
    message: str


_PULL = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull")
_CONFIG = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")
# Lower is worse: the first problem found at the lowest rank is reported.
_RANK = {**{r: 0 for r in _PULL}, **{r: 1 for r in _CONFIG}, "OOMKilled": 2, "CrashLoopBackOff": 3,
         "Unschedulable": 4}


def _crash(cs: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The failed termination that explains why a container is not serving, or None.

    A container cycles through terminated (Error/OOMKilled), waiting (CrashLoopBackOff) and running (its
    next try, not ready yet) while its process keeps failing; every phase of that cycle reports the same
    termination, so the Degraded condition does not flap between tries. A container that is ready again,
    or whose last run ended well, is not crashing.
    """
    state = cs.get("state") or {}
    terminated = state.get("terminated") or {}
    last = (cs.get("lastState") or {}).get("terminated") or {}
    if terminated:
        return terminated if _failed(terminated) else None
    if (state.get("waiting") or {}).get("reason") == "CrashLoopBackOff" or (
            "running" in state and not cs.get("ready") and cs.get("restartCount", 0)):
        return last if _failed(last) else None
    return None


def _failed(terminated: Mapping[str, Any]) -> bool:
    return terminated.get("reason") == "OOMKilled" or terminated.get("exitCode") not in (None, 0)


def diagnose(pods: Iterable[Mapping[str, Any]]) -> Problem | None:
    """The worst problem among the pods, or None when none is failing.

    A container whose process keeps failing is CrashLoopBackOff with its last exit code and termination
    message (the shim writes its engine's error there) from its first failure on, OOMKilled when the
    kernel killed it; Unschedulable carries the scheduler's message.
    """
    found: list[tuple[int, str, Problem]] = []
    for pod in pods:
        if pod.get("deleting"):
            continue
        name = pod.get("name")
        for cond in pod.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" \
                    and cond.get("reason") == "Unschedulable":
                msg = f"pod {name} cannot be scheduled: {cond.get('message') or 'no node fits'}"
                found.append((_RANK["Unschedulable"], str(name), Problem("Unschedulable", msg)))
        for cs in pod.get("containers") or []:
            state = cs.get("state") or {}
            waiting = state.get("waiting") or {}
            reason = waiting.get("reason")
            where = f"pod {name} container {cs.get('name')}"
            crash = _crash(cs)
            if reason in _PULL or reason in _CONFIG:
                msg = f"{where}: {reason}: {waiting.get('message') or ''}".rstrip(": ")
                found.append((_RANK[reason], str(name), Problem(reason, msg)))
            elif crash is not None and crash.get("reason") == "OOMKilled":
                msg = (f"{where} was killed for using more memory than its limit "
                       f"(restarts: {cs.get('restartCount', 0)})")
                found.append((_RANK["OOMKilled"], str(name), Problem("OOMKilled", msg)))
            elif crash is not None or reason == "CrashLoopBackOff":
                crash = crash or {}
                # The termination message: what the shim wrote (its engine's error), else the log's last lines.
                detail = crash.get("message") or crash.get("reason") or waiting.get("message") or ""
                exit_code = crash.get("exitCode")
                restarts = cs.get("restartCount", 0)
                msg = f"{where} keeps crashing (restarts: {restarts}" if restarts else f"{where} exited (restarts: 0"
                msg += f", last exit code {exit_code})" if exit_code is not None else ")"
                if detail:
                    msg += f": {str(detail).strip()}"
                found.append((_RANK["CrashLoopBackOff"], str(name), Problem("CrashLoopBackOff", msg)))
    if not found:
        return None
    found.sort(key=lambda item: (item[0], item[1]))
    return found[0][2]
