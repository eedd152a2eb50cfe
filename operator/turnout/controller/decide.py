"""Decide: from what one reconcile observed, what to write. Pure: no I/O, no kopf, no API client.

A reconcile is observe → decide → act (:mod:`turnout.controller.reconcile` observes and acts).
:func:`decide` reads an :class:`Observed` — the ModelDeployment parsed once, the hardware, its
children and pods as last seen — and returns a :class:`Decision`: the children to apply (only those
whose spec-hash, owner or replica count differ from what was seen), the owned children to prune, the
desired status with its merge patch, and the Events to post. When the API server refuses a child,
the applier stops there and asks :func:`decide_after_apply_failure` what to write instead.

The cases, in the order :func:`decide` takes them: an invalid spec; no node known yet; a spec no
engine can serve (a placed deployment keeps serving its previous plan); a plan, rendered into
children.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from turnout.api import GROUP, KIND, VERSION, ModelDeploymentSpec
from turnout.config import OperatorConfig
from turnout.controller import status as st
from turnout.controller.world import SPEC_HASH_LABEL, Problem, _plain
from turnout.hardware import Hardware
from turnout.render import INFERENCE_POOL_API_VERSION, LWS_API_VERSION, child_name, render, selector
from turnout.render.manifests import service_selector, spec_hash
from turnout.resolver import Plan, Rejection, ResolverCache, resolve

#: Children are applied claim first, the workload (Deployment or LeaderWorkerSet) last (so a refused child never
#: leaves a rollout started), and pruned in the reverse order.
APPLY_ORDER = {"PersistentVolumeClaim": 0, "Service": 1, "InferencePool": 1, "Deployment": 2, "LeaderWorkerSet": 2}
API_VERSIONS = {"Deployment": "apps/v1", "Service": "v1", "PersistentVolumeClaim": "v1",
                "LeaderWorkerSet": LWS_API_VERSION, "InferencePool": INFERENCE_POOL_API_VERSION}
#: The kinds that run the model server pods: a plan renders one of them (LeaderWorkerSet when multi-node).
WORKLOADS = ("Deployment", "LeaderWorkerSet")


# ----- what was observed ------------------------------------------------------------------------


@dataclass(frozen=True)
class Owned:
    """A child this very ModelDeployment owns (its instance label and an ownerReference to its uid)."""

    kind: str
    name: str
    uid: str
    deleting: bool = False  # already on its way out: a finalizer holds it, or our delete was sent
    refused: bool = False  # an earlier delete of it was refused, and an Event said so


@dataclass(frozen=True)
class Observed:
    """One ModelDeployment and the part of the world its reconcile reads, taken once at its start."""

    name: str
    namespace: str
    uid: str | None
    generation: int | None
    spec: ModelDeploymentSpec | None  # None when the spec is invalid (``spec_error`` says why)
    spec_error: str | None = None
    deleting: bool = False
    previous: Mapping[str, Any] | None = None  # the last status: as we last wrote it, else the object's
    hardware: Hardware = field(default_factory=Hardware)
    #: (kind, name) -> compact child as last seen: from the watch, or from our own apply while the watch lags
    #: behind it (those first, then the watch's, each kind in that order).
    children: Mapping[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    owned: tuple[Owned, ...] = ()  # the candidates for pruning
    pods: tuple[Mapping[str, Any], ...] = ()  # the model server pods (compact)
    trigger: str = "create"  # create | spec | scale | resume | meta | world
    now: str = ""  # RFC 3339
    inference_pool: bool = False  # render an InferencePool (--inference-pool, and the cluster serves it)

    @property
    def instance(self) -> str:
        return child_name(self.name)

    @property
    def selector(self) -> str:
        """The label selector of the model server pods (status.selector: the scale subresource's)."""
        return selector_string(selector(self.name))

    @property
    def deployment(self) -> Mapping[str, Any] | None:
        """The workload (Deployment or LeaderWorkerSet) as last seen: of the current name, else any this object has."""
        for kind in WORKLOADS:
            found = self.children.get((kind, self.instance))
            if found is not None:
                return found
        return next((c for (kind, _), c in self.children.items() if kind in WORKLOADS), None)


# ----- what to do -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Prune:
    """An owned child the plan no longer renders: delete it (guarded by its uid)."""

    kind: str
    name: str
    uid: str
    pruned: Event  # said once it is deleted
    say_refusal: bool = True  # False when a refusal was already said (it is tried again, not said again)

    @property
    def api_version(self) -> str:
        return API_VERSIONS[self.kind]

    def refused(self, why: str) -> Event | None:
        """The Event for a refused delete (``why``: the API server's message), or None when already said."""
        if not self.say_refusal:
            return None
        return Event("Warning", "PruneFailed",
                     f"cannot delete {self.kind} {self.name}, which the spec no longer asks for: {why}")


@dataclass(frozen=True)
class _Basis:
    """What the status of a plan is made of, kept for :func:`decide_after_apply_failure`."""

    observed: Observed
    plan_fields: Mapping[str, Any]
    reason: str
    rejected: list[dict[str, str]]
    deployment: Mapping[str, Any] | None  # the Deployment as seen before this reconcile applied anything


@dataclass(frozen=True)
class Decision:
    """What one reconcile writes, in the order the applier writes it.

    Children are applied in order; then the prunes (each says ``Pruned``, or ``PruneFailed``);
    ``before_status`` is posted; the status patch is written; then ``after_status`` is posted when the
    status was written, ``unwritten`` when it was not (nothing changed, or the object is gone).
    """

    result: str  # skipped | invalid | rejected | planned | failed
    apply: tuple[dict[str, Any], ...] = ()
    prune: tuple[Prune, ...] = ()
    status: dict[str, Any] | None = None  # the desired status; None: nothing to say (skipped)
    patch: dict[str, Any] | None = None  # the merge patch from the previous status; None: nothing to write
    before_status: tuple[Event, ...] = ()
    after_status: tuple[Event, ...] = ()  # they follow the written status, so a retried reconcile never repeats them
    unwritten: tuple[Event, ...] = ()
    #: Internal errors caught on the way (what was being done, the exception), for the log.
    errors: tuple[tuple[str, BaseException], ...] = ()
    basis: _Basis | None = field(default=None, repr=False, compare=False)


# ----- the decision -----------------------------------------------------------------------------


def decide(observed: Observed, config: OperatorConfig | None = None, cache: ResolverCache | None = None) -> Decision:
    """What to write for ``observed``: an invalid spec, no node yet, a rejection, or a plan (``cache``: the
    caller's resolver cache)."""
    o, config = observed, config or OperatorConfig()
    previous = o.previous or {}
    if o.deleting:
        return Decision("skipped")
    if o.trigger == "world" and previous.get("observedGeneration") != o.generation:
        return Decision("skipped")  # the spec changed and kopf's update handler has not run yet: it resolves afresh

    if o.spec is None:
        resolved = st.Cond("Resolved", "False", "InvalidSpec", o.spec_error or "invalid spec")
        desired = _serving_previous(o, resolved, None) or st.unresolved_status(
            phase="Failed", generation=o.generation, resolved=resolved, selector=o.selector,
            rejected=None, rollout=None, previous=o.previous, now=o.now,
        )
        return _with_status(Decision("invalid"), o, desired)

    if not o.hardware.nodes:
        desired = st.unresolved_status(
            phase="Resolving", generation=o.generation, selector=o.selector,
            resolved=st.Cond("Resolved", "Unknown", "WaitingForNodes", "no schedulable node is known yet"),
            rejected=None, rollout=None, previous=o.previous, now=o.now,
        )
        return _with_status(Decision("skipped"), o, desired)

    errors: tuple[tuple[str, BaseException], ...] = ()
    try:
        choice, kept = choose(o.spec, o.previous, o.hardware, config, sticky=o.trigger not in ("create", "spec"),
                              cache=cache)
    except Exception as exc:  # the resolver promises never to raise; never crash if it does
        choice, kept = Rejection(rejected=(), message=f"internal error while resolving: {exc}"), False
        errors = (("resolving", exc),)

    if isinstance(choice, Rejection):
        resolved = st.Cond("Resolved", "False", "Rejected", choice.message)
        reasons = _reasons(choice.rejected)
        desired = _serving_previous(o, resolved, reasons)
        if desired is None:
            deployment = o.deployment
            rollout = st.observe_rollout(deployment, o.pods, desired_replicas=o.spec.replicas,
                                         desired_hash=None) if deployment else None
            desired = st.unresolved_status(
                phase="Failed", generation=o.generation, resolved=resolved, selector=o.selector,
                rejected=reasons, rollout=rollout, previous=o.previous, now=o.now,
            )
        return _with_status(Decision("rejected", errors=errors), o, desired)

    return _planned(o, choice, kept, config, errors)


def _planned(o: Observed, plan: Plan, kept: bool, config: OperatorConfig,
             errors: tuple[tuple[str, BaseException], ...]) -> Decision:
    """Children of the plan, those of them to apply, what to prune, and the status once they are applied."""
    assert o.spec is not None
    rejected, reason = _reasons(plan.rejected), plan.reason
    if kept and o.previous is not None:  # the placement kept: keep saying why it was chosen
        rejected = list(o.previous.get("rejected") or rejected)
        prev_resolved = st.condition(o.previous, "Resolved")
        reason = str(prev_resolved.get("message")) if prev_resolved else reason
    try:
        children = render_children(plan, o, config)
    except Exception as exc:  # a renderer bug must fail this object, not the operator
        basis = _Basis(o, plan_fields(plan, [], o, config), reason, rejected, o.deployment)
        problem = Problem("RenderFailed", f"cannot render the children: {exc}")
        return _failed(basis, problem, (*errors, ("rendering", exc)))

    apply: list[dict[str, Any]] = []
    rollout_event: Event | None = None
    rollout_brief = ""  # the rollout as said inside EngineSelected (which already names engine and image)
    workload = "LeaderWorkerSet" if plan.multi_node else "Deployment"
    deployment_before = o.children.get((workload, o.instance))
    deployment_after, desired_hash = deployment_before, None  # the workload once the applies are done
    for child in children:
        kind, name = child["kind"], child["metadata"]["name"]
        want = (child["metadata"].get("labels") or {}).get(SPEC_HASH_LABEL)
        seen = o.children.get((kind, name))
        if kind in WORKLOADS:
            desired_hash = want
        if not needs_apply(child, seen, o.uid):
            continue
        apply.append(child)
        if kind not in WORKLOADS:
            continue
        deployment_after = as_applied(child, seen)
        if seen is None or (seen.get("labels") or {}).get(SPEC_HASH_LABEL) != want:
            rollout_event = Event("Normal", "RolloutStarted", f"rolling out {name} ({plan.engine} on "
                                  f"{plan.accelerator}, {plan.image}, spec-hash {want})")
            rollout_brief = f"rolling out {name} (spec-hash {want})"
        else:
            rollout_event = Event("Normal", "Scaled", f"scaled {name} from {seen.get('replicas')} to "
                                  f"{child['spec'].get('replicas')} replicas")

    wanted = {(c["kind"], c["metadata"]["name"]) for c in children}
    prune = tuple(
        Prune(c.kind, c.name, c.uid, Event("Normal", "Pruned", f"deleted {c.kind} {c.name}: {_prune_why(c.kind)}"),
              say_refusal=not c.refused)
        for c in sorted(o.owned, key=lambda c: (-APPLY_ORDER.get(c.kind, 9), c.name))
        if (c.kind, c.name) not in wanted and not c.deleting
    ) if children else ()

    basis = _Basis(o, plan_fields(plan, children, o, config), reason, rejected, deployment_before)
    rollout = st.observe_rollout(deployment_after, o.pods, desired_replicas=o.spec.replicas,
                                 desired_hash=desired_hash)
    desired = _plan_status(basis, rollout)
    fold = None
    before: tuple[Event, ...] = ()
    if rollout_event is not None:
        if rollout_event.reason == "RolloutStarted" and selects_engine(o.previous or {}, desired):
            # The first rollout of a (newly) chosen engine is said once, in EngineSelected (one Event fewer per
            # deployment at creation; kubectl describe still reads what was chosen, why, and what rolls out).
            fold = rollout_brief
        else:
            before = (rollout_event,)
    decision = Decision("planned", apply=tuple(apply), prune=prune, before_status=before, errors=errors,
                        basis=basis)
    decision = _with_status(decision, o, desired, rollout=fold)
    if fold is not None:  # no status write, so no EngineSelected: the rollout is said alone
        decision = replace(decision, unwritten=(rollout_event,))  # type: ignore[arg-type]
    return decision


def decide_after_apply_failure(decision: Decision, child: Mapping[str, Any], why: str) -> Decision:
    """What to write instead of ``decision`` when the API server refused ``child`` (``why``: its message).

    Nothing is pruned and the status says ``Failed`` with ``ApplyFailed``; the children applied before
    it stay applied. The Deployment is applied last, so its rollout has not started.
    """
    if decision.basis is None:
        raise ValueError("only a decision with a plan applies children")
    problem = Problem("ApplyFailed", f"the API server refused {child['kind']} {child['metadata']['name']}: {why}")
    return _failed(decision.basis, problem, decision.errors)


def _failed(basis: _Basis, problem: Problem, errors: tuple[tuple[str, BaseException], ...]) -> Decision:
    """A plan that could not be carried out: phase Failed, and the problem in Progressing and Degraded."""
    o = basis.observed
    assert o.spec is not None
    seen = st.observe_rollout(basis.deployment, o.pods, desired_replicas=o.spec.replicas, desired_hash=None)
    desired = _plan_status(basis, st.Rollout(seen.replicas, seen.ready, seen.updated, False, problem))
    desired["phase"] = "Failed"
    return _with_status(Decision("failed", errors=errors, basis=basis), o, desired)


def _with_status(decision: Decision, o: Observed, desired: dict[str, Any], *, rollout: str | None = None) -> Decision:
    """``decision`` with the desired status, its patch and the Events that follow it once written."""
    patch = st.status_patch(o.previous, desired)
    events = transition_events(o.previous or {}, desired, rollout=rollout) if patch is not None else ()
    return replace(decision, status=desired, patch=patch, after_status=tuple(events))


def _plan_status(basis: _Basis, rollout: st.Rollout) -> dict[str, Any]:
    o = basis.observed
    assert o.spec is not None
    return st.planned_status(generation=o.generation, plan_fields=basis.plan_fields, reason=basis.reason,
                             rejected=basis.rejected, desired_replicas=o.spec.replicas, rollout=rollout,
                             previous=o.previous, now=o.now)


def _serving_previous(o: Observed, resolved: st.Cond, rejected: list[dict[str, str]] | None) -> dict[str, Any] | None:
    """The status of a placed deployment whose new spec cannot be served, or None when that is not the case.

    Like a Deployment whose new pod template cannot start, the last good plan keeps serving: its children
    are left as they are, status keeps its engine and endpoint, and the conditions say that the spec
    (this generation) was not rolled out and why. Only a spec change gets here: when the world changes
    under an unchanged spec (a GPU node gone), the plan itself is what failed.
    """
    prev = o.previous or {}
    prev_resolved = st.condition(prev, "Resolved") or {}
    already = (st.condition(prev, "Degraded") or {}).get("reason") == st.SERVING_PREVIOUS_PLAN
    placed = prev_resolved.get("status") == "True" and prev.get("observedGeneration") != o.generation
    if not prev.get("engine") or not (already or placed):
        return None
    deployment = o.deployment
    if deployment is None:
        return None  # nothing serves: a plain rejection
    replicas = int(deployment.get("replicas") or 0)  # what the previous plan asked for
    rollout = st.observe_rollout(deployment, o.pods, desired_replicas=replicas, desired_hash=None)
    return st.previous_plan_status(generation=o.generation, resolved=resolved, rejected=rejected,
                                   plan_fields={k: prev.get(k) for k in st.PLAN_FIELDS}, desired_replicas=replicas,
                                   rollout=rollout, previous=o.previous, now=o.now)


# ----- the parts ----------------------------------------------------------------------------------


def choose(spec: ModelDeploymentSpec, previous: Mapping[str, Any] | None, hw: Hardware, config: OperatorConfig,
           *, sticky: bool, cache: ResolverCache | None = None) -> tuple[Plan | Rejection, bool]:
    """Resolve; when sticky, keep the engine and accelerator already chosen while they still fit.

    Returns the choice and whether it is the kept placement (rather than the fresh choice).
    """
    cache = cache if cache is not None else ResolverCache()
    fresh = resolve(spec, hw, config, cache=cache)
    prev = previous or {}
    resolved = st.condition(prev, "Resolved")
    if not sticky or not prev.get("engine") or not resolved or resolved.get("status") != "True":
        return fresh, False
    if isinstance(fresh, Plan) and (fresh.engine, fresh.accelerator) == (prev["engine"], prev.get("accelerator")):
        return fresh, False
    pinned_spec = spec.model_copy(update={
        "engine": prev["engine"],
        "accelerator": spec.accelerator.model_copy(update={"type": prev.get("accelerator") or "auto"}),
    })
    pinned = resolve(pinned_spec, hw, config, cache=cache)
    if isinstance(pinned, Plan):
        return pinned, True
    return fresh, False


def render_children(plan: Plan, o: Observed, config: OperatorConfig) -> list[dict[str, Any]]:
    """The plan's children, each with a spec-hash label and a controller ownerReference, in apply order."""
    owner = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": o.name,
        "uid": o.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    children = []
    md = {"metadata": {"name": o.name, "namespace": o.namespace}, "spec": o.spec}
    for child in render(plan, md, config, inference_pool=o.inference_pool):
        child = _plain(child)  # nothing of the (memoized) plan is shared with what the client sends
        child["metadata"].setdefault("namespace", o.namespace)
        labels = child["metadata"].setdefault("labels", {})
        if SPEC_HASH_LABEL not in labels:  # the renderer hashes the Deployment; hash the rest here
            labels[SPEC_HASH_LABEL] = spec_hash(child)
        child["metadata"]["ownerReferences"] = [owner]
        children.append(child)
    children.sort(key=lambda c: (APPLY_ORDER.get(c["kind"], 9), c["metadata"]["name"]))
    return children


def needs_apply(child: Mapping[str, Any], seen: Mapping[str, Any] | None, uid: str | None) -> bool:
    """Whether the child differs from what was seen: missing, another spec-hash, not owned, other replicas."""
    if seen is None:
        return True
    want = (child["metadata"].get("labels") or {}).get(SPEC_HASH_LABEL)
    if want is None or (seen.get("labels") or {}).get(SPEC_HASH_LABEL) != want:
        return True
    if uid and uid not in (seen.get("ownerUids") or []):
        return True
    return child["kind"] in WORKLOADS and seen.get("replicas") != (child.get("spec") or {}).get("replicas")


def as_applied(child: Mapping[str, Any], seen: Mapping[str, Any] | None) -> dict[str, Any]:
    """The workload as applying ``child`` leaves it, for the status written right after (compact form).

    What was sent, with the rollout status last seen (an apply does not change it) and, when the spec
    changed, a generation the Deployment controller has not observed yet: a changed template or replica
    count is never a complete rollout in the status written with its apply.
    """
    meta, spec = child["metadata"], child.get("spec") or {}
    labels = dict(meta.get("labels") or {})
    out: dict[str, Any] = {"kind": child["kind"], "name": meta["name"], "labels": labels,
                           "replicas": spec.get("replicas")}
    if seen is None:
        out["generation"] = 1
        return out
    changed = ((seen.get("labels") or {}).get(SPEC_HASH_LABEL), seen.get("replicas")) != (
        labels.get(SPEC_HASH_LABEL), spec.get("replicas"))
    out["generation"] = int(seen.get("generation") or 0) + (1 if changed else 0)
    if "status" in seen:
        out["status"] = seen["status"]
    return out


def plan_fields(plan: Plan, children: Sequence[Mapping[str, Any]], o: Observed, config: OperatorConfig
                ) -> dict[str, Any]:
    """The status fields that describe the plan: engine, accelerator, image, endpoint and so on."""
    endpoint = None
    for child in children:
        if child["kind"] == "Service":
            ports = (child.get("spec") or {}).get("ports") or []
            port = next((p for p in ports if p.get("name") == "http"), ports[0] if ports else None)
            number = port.get("port") if port else config.port
            endpoint = f"http://{child['metadata']['name']}.{o.namespace}.svc:{number}/v1"
            break
    model = getattr(plan, "model", None)
    return {
        "engine": plan.engine,
        "accelerator": plan.accelerator,
        "image": plan.image,
        "endpoint": endpoint,
        "modelUri": getattr(model, "uri", None),
        **plan.status_fields(),
        # A multi-node replica is a group of pods: its leader stands for it (one pod per status.replicas, as an
        # HPA's Pods metrics and LeaderWorkerSet's own scale subresource count them).
        "selector": selector_string(service_selector(o.name, plan)),
    }


def selector_string(labels: Mapping[str, str]) -> str:
    """A label selector in its string form (``k=v,k2=v2``), as status.selector and the scale subresource have it."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _prune_why(kind: str) -> str:
    if kind == "PersistentVolumeClaim":
        return ("the spec no longer asks for a cache claim (spec.cache); the cache is downloaded again "
                "if one is asked for later")
    return f"the current plan does not use this {kind}"


def _reasons(items: Iterable[Any]) -> list[dict[str, str]]:
    return [{"engine": str(r.engine), "reason": str(r.reason)} for r in items or ()]


# ----- Events -------------------------------------------------------------------------------------


def selects_engine(prev: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` over ``prev`` chooses an engine, accelerator or image (an EngineSelected)."""
    if (st.condition(new, "Resolved") or {}).get("status") != "True":
        return False
    return tuple(new.get(k) for k in ("engine", "accelerator", "image")) != tuple(
        prev.get(k) for k in ("engine", "accelerator", "image"))


def transition_events(prev: Mapping[str, Any], new: Mapping[str, Any], *, rollout: str | None = None) -> list[Event]:
    """Events for the changes from status ``prev`` to ``new``; ``rollout`` (the Deployment's first rollout of the
    chosen engine) is said in EngineSelected rather than in an Event of its own."""
    events = []
    old_res, new_res = st.condition(prev, "Resolved") or {}, st.condition(new, "Resolved") or {}
    if new_res.get("status") == "True":
        if selects_engine(prev, new):
            message = f"{new.get('engine')} on {new.get('accelerator')} ({new.get('image')}): {new_res.get('message')}"
            if rollout:
                message += f"; {rollout}"
            events.append(Event("Normal", "EngineSelected", message))
    elif new_res.get("status") == "False" and (
        (old_res.get("status"), old_res.get("reason"), old_res.get("message"))
        != ("False", new_res.get("reason"), new_res.get("message"))
    ):
        events.append(Event("Warning", str(new_res.get("reason")), str(new_res.get("message"))))
    old_deg, new_deg = st.condition(prev, "Degraded") or {}, st.condition(new, "Degraded") or {}
    if new_deg.get("status") == "True" and (old_deg.get("status"), old_deg.get("reason")) != (
        "True", new_deg.get("reason")
    ):
        if new_deg.get("reason") == st.SERVING_PREVIOUS_PLAN:
            events.append(Event("Warning", st.SERVING_PREVIOUS_PLAN, str(new_deg.get("message"))))
        else:
            events.append(Event("Warning", "Degraded", f"{new_deg.get('reason')}: {new_deg.get('message')}"))
    if old_deg.get("status") == "True" and new_deg.get("status") == "False":
        events.append(Event("Normal", "Recovered", f"no longer {old_deg.get('reason')}"))
    return events
