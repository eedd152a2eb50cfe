"""The ModelDeployment status: pure functions from what was decided and observed.

The status is the API's own model (:class:`turnout.api.ModelDeploymentStatus`, the source of the
CRD's status schema): built here, diffed into the merge patch the controller writes
(:func:`status_patch`), read back from the object by :func:`read_status`.
Conditions follow ``metav1.Condition``: type, status, reason, message,
observedGeneration and a lastTransitionTime that moves only when the
condition's status does.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from turnout.api.types import Condition, EngineReason, ModelDeploymentStatus
from turnout.controller.world import Child, Pod, Problem, WorkloadStatus, diagnose

CONDITION_TYPES = ("Resolved", "Available", "Progressing", "Degraded")
#: Reason of Progressing and Degraded while a rejected spec leaves the last good plan serving.
SERVING_PREVIOUS_PLAN = "ServingPreviousPlan"
#: Phase (and Available's reason) of a deployment whose plan is applied with replicas 0 and no pod left: nothing is
#: wrong (Degraded False), nothing serves (Available False); the turnout gateway scales it back up on a request.
SCALED_TO_ZERO = "ScaledToZero"
#: Status fields that describe the plan being served (the sizing ones from ``Plan.status_fields()``).
PLAN_FIELDS = ("engine", "accelerator", "image", "endpoint", "model_uri", "tensor_parallel_size",
               "pipeline_parallel_size", "nodes_per_replica", "devices_per_node", "selector")
#: The status fields the operator owns, as written on the wire (every field of the status model).
OWNED = tuple(f.alias or name for name, f in ModelDeploymentStatus.model_fields.items())


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Cond:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str = ""


def merge_conditions(
    previous: Iterable[Condition] | None, desired: Sequence[Cond], generation: int | None, now: str
) -> list[Condition]:
    """Desired conditions, keeping each one's lastTransitionTime while its status is unchanged."""
    before = {c.type: c for c in previous or []}
    out = []
    for cond in desired:
        prev = before.get(cond.type)
        same = prev is not None and prev.status == cond.status and prev.last_transition_time
        out.append(Condition(type=cond.type, status=cond.status,
                             reason=cond.reason, message=cond.message, observed_generation=generation,
                             last_transition_time=prev.last_transition_time if same else now))
    return out


def condition(status: ModelDeploymentStatus | None, type_: str) -> Condition | None:
    for cond in (status.conditions if status is not None else None) or []:
        if cond.type == type_:
            return cond
    return None


def plan_status(**fields: Any) -> ModelDeploymentStatus:
    """A status holding only the plan's fields (``fields`` by wire or Python name, as ``Plan.status_fields()``)."""
    return ModelDeploymentStatus.model_validate(fields)


def plan_fields_of(status: ModelDeploymentStatus | None) -> ModelDeploymentStatus:
    """The plan's fields of ``status`` alone."""
    return ModelDeploymentStatus(**{k: getattr(status, k) for k in PLAN_FIELDS} if status is not None else {})


@dataclass(frozen=True)
class Rollout:
    """The observed state of the model server Deployment and its pods."""

    replicas: int
    ready: int
    updated: int
    complete: bool
    problem: Problem | None


def observe_rollout(
    deployment: Child | None,
    pods: Iterable[Pod],
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
    st = deployment.status or WorkloadStatus()
    asked = desired_replicas if deployment.replicas is None else deployment.replicas
    synced = (
        st.observed_generation >= int(deployment.generation or 0)
        and (desired_hash is None or deployment.spec_hash == desired_hash)
        and asked == desired_replicas
    )
    complete = synced and st.updated_replicas >= desired_replicas and st.ready_replicas >= desired_replicas \
        and st.replicas == desired_replicas
    if complete and deployment.kind == "LeaderWorkerSet":
        conds = {c.type: c.status for c in st.conditions}
        complete = (conds.get("Available") == "True" or desired_replicas == 0) \
            and "True" not in (conds.get("Progressing"), conds.get("UpdateInProgress"))
    problem = diagnose(pods)
    if problem is None:
        for cond in st.conditions:
            if cond.type == "Progressing" and cond.reason == "ProgressDeadlineExceeded":
                problem = Problem("ProgressDeadlineExceeded", str(cond.message or "rollout stalled"))
    return Rollout(st.replicas, st.ready_replicas, st.updated_replicas, complete, problem)


def planned_status(
    *,
    generation: int | None,
    plan_fields: ModelDeploymentStatus,
    reason: str,
    rejected: list[EngineReason],
    desired_replicas: int,
    rollout: Rollout,
    previous: ModelDeploymentStatus | None,
    now: str,
) -> ModelDeploymentStatus:
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
                   rejected=rejected, plan=plan_fields)


def unresolved_status(
    *,
    phase: str,
    selector: str | None = None,
    generation: int | None,
    resolved: Cond,
    rejected: list[EngineReason] | None,
    rollout: Rollout | None,
    previous: ModelDeploymentStatus | None,
    now: str,
) -> ModelDeploymentStatus:
    """Status of a deployment without a plan: invalid, rejected, or waiting for nodes."""
    ready = rollout.ready if rollout else 0
    available = (Cond("Available", "True", "ReplicasReady", f"{ready} replicas of an earlier plan ready")
                 if ready else Cond("Available", "False", "NotResolved", "no engine is chosen"))
    progressing = (Cond("Progressing", "True", resolved.reason, resolved.message) if phase == "Resolving"
                   else Cond("Progressing", "False", resolved.reason, "nothing to roll out"))
    conds = [resolved, available, progressing, Cond("Degraded", "False", "NotResolved", "no engine is chosen")]
    return _status(phase, conds, generation, previous, now,
                   replicas=rollout.replicas if rollout else 0, ready=ready, rejected=rejected or None,
                   plan=ModelDeploymentStatus(selector=selector))


def previous_plan_status(
    *,
    generation: int | None,
    resolved: Cond,
    rejected: list[EngineReason] | None,
    plan_fields: ModelDeploymentStatus,
    desired_replicas: int,
    rollout: Rollout,
    previous: ModelDeploymentStatus | None,
    now: str,
    problem: Problem | None = None,
) -> ModelDeploymentStatus:
    """Status of a placed deployment whose new spec cannot be served: the previous plan keeps serving.

    Phase Degraded; Resolved is False with the rejection (``rejected`` names each engine's reason);
    Progressing and Degraded carry :data:`SERVING_PREVIOUS_PLAN`; engine, image and endpoint stay those
    of the plan that serves. With ``problem`` (the plan's pods lost their node), Progressing and Degraded
    carry that problem instead: the world, not the spec, is what cannot be served.
    """
    what = f"{plan_fields.engine} on {plan_fields.accelerator} ({plan_fields.image})"
    if rollout.ready > 0:
        available = Cond("Available", "True", "ReplicasReady",
                         f"{rollout.ready}/{desired_replicas} replicas of the previous plan ready")
    elif desired_replicas == 0:
        available = Cond("Available", "False", "ScaledToZero", "the previous plan runs 0 replicas")
    else:
        available = Cond("Available", "False", "NoReplicasReady",
                         f"0/{desired_replicas} replicas of the previous plan ready")
    if problem is not None:
        progressing = Cond("Progressing", "False", problem.reason, f"rollout stalled: {problem.message}")
        degraded = Cond("Degraded", "True", problem.reason,
                        f"{problem.message}; the plan is kept ({what}) while {resolved.reason}: {resolved.message}")
    else:
        progressing = Cond("Progressing", "False", SERVING_PREVIOUS_PLAN,
                           f"spec generation {generation} is not rolled out: {resolved.reason}")
        degraded = Cond("Degraded", "True", SERVING_PREVIOUS_PLAN,
                        f"spec generation {generation} cannot be served ({resolved.reason}: {resolved.message}); "
                        f"the previous plan keeps serving: {what}")
    conds = [resolved, available, progressing, degraded]
    return _status("Degraded", conds, generation, previous, now, replicas=rollout.replicas, ready=rollout.ready,
                   rejected=rejected, plan=plan_fields)


def _status(
    phase: str,
    conds: list[Cond],
    generation: int | None,
    previous: ModelDeploymentStatus | None,
    now: str,
    *,
    replicas: int,
    ready: int,
    rejected: list[EngineReason] | None,
    plan: ModelDeploymentStatus,
) -> ModelDeploymentStatus:
    """The whole status: the plan's fields (of ``plan``), the phase, the replicas and the conditions."""
    return plan_fields_of(plan).model_copy(update={
        "phase": phase,
        "replicas": replicas,
        "ready_replicas": ready,
        "rejected": rejected or None,
        "observed_generation": generation,
        "conditions": merge_conditions(previous.conditions if previous is not None else None, conds, generation,
                                       now),
    })


def wire(status: ModelDeploymentStatus | None) -> dict[str, Any]:
    """The status as the API has it (camelCase, unset fields left out)."""
    return status.model_dump(by_alias=True, exclude_none=True, mode="json") if status is not None else {}


def read_status(raw: Mapping[str, Any] | None) -> ModelDeploymentStatus | None:
    """The status of an object as read from the API: the fields the operator owns (others, kopf's, are not
    read); a field that does not parse is left out (it is written again)."""
    if raw is None:
        return None
    owned = {k: raw[k] for k in OWNED if raw.get(k) is not None}
    try:
        return ModelDeploymentStatus.model_validate(owned)
    except ValidationError as exc:
        bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
        return ModelDeploymentStatus.model_validate({k: v for k, v in owned.items() if k not in bad})


def status_patch(current: ModelDeploymentStatus | None, desired: ModelDeploymentStatus) -> dict[str, Any] | None:
    """The merge patch from ``current`` to ``desired`` (None when they are equal).

    Fields the operator owns but no longer sets are removed with ``null``; the
    status of kopf or other writers (unknown keys) is left alone.
    """
    before, after = wire(current), wire(desired)
    patch: dict[str, Any] = {}
    for key in OWNED:
        if key in after:
            if before.get(key) != after[key]:
                patch[key] = after[key]
        elif before.get(key) is not None:
            patch[key] = None
    return patch or None
