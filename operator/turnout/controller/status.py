"""The ModelDeployment status: pure functions from what was decided and observed.

Conditions follow ``metav1.Condition``: type, status, reason, message,
observedGeneration and a lastTransitionTime that moves only when the
condition's status does.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from turnout.controller.world import SPEC_HASH_LABEL, Problem, diagnose

CONDITION_TYPES = ("Resolved", "Available", "Progressing", "Degraded")
#: Reason of Progressing and Degraded while a rejected spec leaves the last good plan serving.
SERVING_PREVIOUS_PLAN = "ServingPreviousPlan"
#: Phase (and Available's reason) of a deployment whose plan is applied with replicas 0 and no pod left: nothing is
#: wrong (Degraded False), nothing serves (Available False); the turnout gateway scales it back up on a request.
SCALED_TO_ZERO = "ScaledToZero"
#: Status fields that describe the plan being served.
#: Status fields that describe the plan being served (the sizing ones from ``Plan.status_fields()``).
PLAN_FIELDS = ("engine", "accelerator", "image", "endpoint", "modelUri", "tensorParallelSize",
               "pipelineParallelSize", "nodesPerReplica", "devicesPerNode", "selector")


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Cond:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str = ""


def merge_conditions(
    previous: Iterable[Mapping[str, Any]] | None, desired: Sequence[Cond], generation: int | None, now: str
) -> list[dict[str, Any]]:
    """Desired conditions, keeping each one's lastTransitionTime while its status is unchanged."""
    before = {c.get("type"): c for c in previous or [] if isinstance(c, Mapping)}
    out = []
    for cond in desired:
        prev = before.get(cond.type)
        same = prev is not None and prev.get("status") == cond.status and prev.get("lastTransitionTime")
        item: dict[str, Any] = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": prev["lastTransitionTime"] if same else now,
        }
        if generation is not None:
            item["observedGeneration"] = generation
        out.append(item)
    return out


def condition(status: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for cond in (status or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == type_:
            return cond
    return None


@dataclass(frozen=True)
class Rollout:
    """The observed state of the model server Deployment and its pods."""

    replicas: int
    ready: int
    updated: int
    complete: bool
    problem: Problem | None


def observe_rollout(
    deployment: Mapping[str, Any] | None,
    pods: Iterable[Mapping[str, Any]],
    *,
    desired_replicas: int,
    desired_hash: str | None,
) -> Rollout:
    """How far the workload is from running ``desired_replicas`` replicas of ``desired_hash``.

    The workload is a Deployment, or a LeaderWorkerSet (a replica is a group of pods): both status have
    ``replicas``, ``readyReplicas``, ``updatedReplicas`` and ``observedGeneration``. A LeaderWorkerSet's
    ``Available`` condition must be True as well, and neither ``Progressing`` nor ``UpdateInProgress``
    (groups still being created or updated).
    """
    pods = list(pods)
    if deployment is None:
        return Rollout(0, 0, 0, False, diagnose(pods))
    st = deployment.get("status") or {}
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    total = int(st.get("replicas") or 0)
    synced = (
        int(st.get("observedGeneration") or 0) >= int(deployment.get("generation") or 0)
        and (desired_hash is None or (deployment.get("labels") or {}).get(SPEC_HASH_LABEL) == desired_hash)
        and deployment.get("replicas", desired_replicas) == desired_replicas
    )
    complete = synced and updated >= desired_replicas and ready >= desired_replicas and total == desired_replicas
    if complete and deployment.get("kind") == "LeaderWorkerSet":
        conds = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
        complete = (conds.get("Available") == "True" or desired_replicas == 0) \
            and "True" not in (conds.get("Progressing"), conds.get("UpdateInProgress"))
    problem = diagnose(pods)
    if problem is None:
        for cond in st.get("conditions") or []:
            if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
                problem = Problem("ProgressDeadlineExceeded", str(cond.get("message") or "rollout stalled"))
    return Rollout(total, ready, updated, complete, problem)


def planned_status(
    *,
    generation: int | None,
    plan_fields: Mapping[str, Any],
    reason: str,
    rejected: list[dict[str, str]],
    desired_replicas: int,
    rollout: Rollout,
    previous: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    """Status of a deployment with a plan (engine chosen), from its rollout."""
    problem = rollout.problem
    if problem is not None:
        phase = "Degraded"
    elif rollout.complete:
        phase = SCALED_TO_ZERO if desired_replicas == 0 else "Ready"
    else:
        phase = "Deploying"
    if rollout.ready > 0:
        available = Cond("Available", "True", "ReplicasReady", f"{rollout.ready}/{desired_replicas} replicas ready")
    elif desired_replicas == 0:
        available = Cond("Available", "False", SCALED_TO_ZERO, "replicas is 0")
    else:
        available = Cond("Available", "False", "NoReplicasReady", f"0/{desired_replicas} replicas ready")
    if problem is not None:
        progressing = Cond("Progressing", "False", problem.reason, f"rollout stalled: {problem.message}")
    elif rollout.complete:
        progressing = Cond("Progressing", "False", "RolloutComplete",
                           f"{desired_replicas} replicas run the current spec")
    else:
        progressing = Cond("Progressing", "True", "RolloutInProgress",
                           f"{rollout.updated}/{desired_replicas} updated, {rollout.ready}/{desired_replicas} ready")
    degraded = (Cond("Degraded", "True", problem.reason, problem.message) if problem
                else Cond("Degraded", "False", "AsExpected"))
    conds = [Cond("Resolved", "True", "EngineSelected", reason), available, progressing, degraded]
    return _status(phase, conds, generation, previous, now, replicas=rollout.replicas, ready=rollout.ready,
                   rejected=rejected, **plan_fields)


def unresolved_status(
    *,
    phase: str,
    selector: str | None = None,
    generation: int | None,
    resolved: Cond,
    rejected: list[dict[str, str]] | None,
    rollout: Rollout | None,
    previous: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    """Status of a deployment without a plan: invalid, rejected, or waiting for nodes."""
    ready = rollout.ready if rollout else 0
    available = (Cond("Available", "True", "ReplicasReady", f"{ready} replicas of an earlier plan ready")
                 if ready else Cond("Available", "False", "NotResolved", "no engine is chosen"))
    progressing = (Cond("Progressing", "True", resolved.reason, resolved.message) if phase == "Resolving"
                   else Cond("Progressing", "False", resolved.reason, "nothing to roll out"))
    conds = [resolved, available, progressing, Cond("Degraded", "False", "NotResolved", "no engine is chosen")]
    return _status(phase, conds, generation, previous, now,
                   replicas=rollout.replicas if rollout else 0, ready=ready, rejected=rejected or None,
                   selector=selector)


def previous_plan_status(
    *,
    generation: int | None,
    resolved: Cond,
    rejected: list[dict[str, str]] | None,
    plan_fields: Mapping[str, Any],
    desired_replicas: int,
    rollout: Rollout,
    previous: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    """Status of a placed deployment whose new spec cannot be served: the previous plan keeps serving.

    Phase Degraded; Resolved is False with the rejection (``rejected`` names each engine's reason);
    Progressing and Degraded carry :data:`SERVING_PREVIOUS_PLAN`; engine, image and endpoint stay those
    of the plan that serves.
    """
    what = f"{plan_fields.get('engine')} on {plan_fields.get('accelerator')} ({plan_fields.get('image')})"
    if rollout.ready > 0:
        available = Cond("Available", "True", "ReplicasReady",
                         f"{rollout.ready}/{desired_replicas} replicas of the previous plan ready")
    elif desired_replicas == 0:
        available = Cond("Available", "False", "ScaledToZero", "the previous plan runs 0 replicas")
    else:
        available = Cond("Available", "False", "NoReplicasReady",
                         f"0/{desired_replicas} replicas of the previous plan ready")
    conds = [
        resolved,
        available,
        Cond("Progressing", "False", SERVING_PREVIOUS_PLAN,
             f"spec generation {generation} is not rolled out: {resolved.reason}"),
        Cond("Degraded", "True", SERVING_PREVIOUS_PLAN,
             f"spec generation {generation} cannot be served ({resolved.reason}: {resolved.message}); "
             f"the previous plan keeps serving: {what}"),
    ]
    return _status("Degraded", conds, generation, previous, now, replicas=rollout.replicas, ready=rollout.ready,
                   rejected=rejected, **plan_fields)


def _status(
    phase: str,
    conds: list[Cond],
    generation: int | None,
    previous: Mapping[str, Any] | None,
    now: str,
    *,
    replicas: int,
    ready: int,
    rejected: list[dict[str, str]] | None,
    **plan_fields: Any,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": phase,
        "engine": plan_fields.get("engine"),
        "accelerator": plan_fields.get("accelerator"),
        "image": plan_fields.get("image"),
        "endpoint": plan_fields.get("endpoint"),
        "modelUri": plan_fields.get("modelUri"),
        **{k: plan_fields.get(k) for k in PLAN_FIELDS[5:9]},
        "selector": plan_fields.get("selector"),
        "replicas": replicas,
        "readyReplicas": ready,
        "rejected": rejected or None,
        "observedGeneration": generation,
        "conditions": merge_conditions((previous or {}).get("conditions"), conds, generation, now),
    }
    return {k: v for k, v in status.items() if v is not None}


def status_patch(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch from ``current`` to ``desired`` (None when they are equal).

    Keys the operator owns but no longer sets are removed with ``null``; the
    status of kopf or other writers (unknown keys) is left alone.
    """
    current = dict(current or {})
    owned = {"phase", *PLAN_FIELDS, "replicas", "readyReplicas", "rejected", "observedGeneration", "conditions"}
    patch: dict[str, Any] = {}
    for key in owned:
        if key in desired:
            if current.get(key) != desired[key]:
                patch[key] = desired[key]
        elif current.get(key) is not None:
            patch[key] = None
    return patch or None
