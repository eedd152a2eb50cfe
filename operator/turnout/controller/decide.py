"""Decide: from what one reconcile observed, what to write. Pure: no I/O, no kopf, no API client.

A reconcile is observe → decide → act (:mod:`turnout.controller.reconcile` observes and acts).
:func:`decide` reads an :class:`Observed` — the ModelDeployment parsed once, the hardware, its
children and pods as last seen (typed views: :class:`~turnout.controller.world.Child`,
:class:`~turnout.controller.world.Pod`), the status last written — and returns a :class:`Decision`:
the children to apply (:class:`Manifest`: only those whose spec-hash, owner or replica count differ
from what was seen), the owned children to prune, the desired status (the API's
``ModelDeploymentStatus``) with its merge patch, and the Events to post. When the API server refuses a child,
the applier stops there and asks :func:`decide_after_apply_failure` what to write instead.

The cases, in the order :func:`decide` takes them: an invalid spec; no node known yet; a spec no
engine can serve (a placed deployment keeps serving its previous plan); a plan, rendered into
children.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from turnout.api import GROUP, KIND, VERSION, ModelDeployment, ModelDeploymentSpec
from turnout.api.types import EngineReason, ModelDeploymentStatus, ObjectMeta
from turnout.config import OperatorConfig
from turnout.controller import adapters as ad
from turnout.controller import status as st
from turnout.controller.world import SPEC_HASH_LABEL, Child, Pod, Problem, _plain, compact_child
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
    previous: ModelDeploymentStatus | None = None  # the last status: as we last wrote it, else the object's
    hardware: Hardware = field(default_factory=Hardware)
    #: (kind, name) -> child as last seen: from the watch, or from our own apply while the watch lags
    #: behind it (those first, then the watch's, each kind in that order).
    children: Mapping[tuple[str, str], Child] = field(default_factory=dict)
    owned: tuple[Owned, ...] = ()  # the candidates for pruning
    pods: tuple[Pod, ...] = ()  # the model server pods
    trigger: str = "create"  # create | spec | scale | resume | meta | world
    now: str = ""  # RFC 3339
    inference_pool: bool = False  # render an InferencePool (--inference-pool, and the cluster serves it)
    demand: ad.Demand | None = None  # the LoRA adapters' requests at the gateways (None: no fresh sample)

    @property
    def instance(self) -> str:
        return child_name(self.name)

    @property
    def selector(self) -> str:
        """The label selector of the model server pods (status.selector: the scale subresource's)."""
        return selector_string(selector(self.name))

    @property
    def deployment(self) -> Child | None:
        """The workload (Deployment or LeaderWorkerSet) as last seen: of the current name, else any this object has."""
        for kind in WORKLOADS:
            found = self.children.get((kind, self.instance))
            if found is not None:
                return found
        return next((c for (kind, _), c in self.children.items() if kind in WORKLOADS), None)


# ----- what to do -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """A child to apply: the object sent to the API server (``body``, as rendered) and its typed view."""

    body: dict[str, Any]
    view: Child

    @classmethod
    def of(cls, body: dict[str, Any]) -> Manifest:
        return cls(body, compact_child(body))

    @property
    def kind(self) -> str:
        return self.view.kind

    @property
    def name(self) -> str:
        return self.view.name

    @property
    def spec_hash(self) -> str | None:
        return self.view.spec_hash

    @property
    def replicas(self) -> int | None:
        return self.view.replicas


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
    plan_fields: ModelDeploymentStatus  # only the plan's fields set
    reason: str
    rejected: list[EngineReason]
    deployment: Child | None  # the Deployment as seen before this reconcile applied anything


@dataclass(frozen=True)
class Decision:
    """What one reconcile writes, in the order the applier writes it.

    Children are applied in order; then the prunes (each says ``Pruned``, or ``PruneFailed``);
    ``before_status`` is posted; the status patch is written; then ``after_status`` is posted when the
    status was written, ``unwritten`` when it was not (nothing changed, or the object is gone).
    """

    result: str  # skipped | invalid | rejected | planned | failed
    apply: tuple[Manifest, ...] = ()
    prune: tuple[Prune, ...] = ()
    status: ModelDeploymentStatus | None = None  # the desired status; None: nothing to say (skipped)
    since: ModelDeploymentStatus | None = None  # the status it replaces (as last written, else the object's)
    before_status: tuple[Event, ...] = ()
    after_status: tuple[Event, ...] = ()  # they follow the written status, so a retried reconcile never repeats them
    unwritten: tuple[Event, ...] = ()
    #: Internal errors caught on the way (what was being done, the exception), for the log.
    errors: tuple[tuple[str, BaseException], ...] = ()
    #: LoRA adapters to unload and load in the ready pods' engines (after the applies), per pod.
    adapters: tuple[ad.PodWork, ...] = ()
    basis: _Basis | None = field(default=None, repr=False, compare=False)

    @property
    def patch(self) -> dict[str, Any] | None:
        """The status merge patch the applier sends: from ``since`` to ``status``; None: nothing to write."""
        return st.status_patch(self.since, self.status) if self.status is not None else None


# ----- the decision -----------------------------------------------------------------------------


def decide(observed: Observed, config: OperatorConfig | None = None, cache: ResolverCache | None = None) -> Decision:
    """What to write for ``observed``: an invalid spec, no node yet, a rejection, or a plan (``cache``: the
    caller's resolver cache)."""
    o, config = observed, config or OperatorConfig()
    previous = o.previous or ModelDeploymentStatus()
    if o.deleting:
        return Decision("skipped")
    if o.trigger == "world" and previous.observed_generation != o.generation:
        return Decision("skipped")  # the spec changed and was not reconciled yet: that reconcile resolves afresh

    if o.spec is None:
        resolved = st.Cond("Resolved", "False", "InvalidSpec", o.spec_error or "invalid spec")
        desired = _serving_previous(o, resolved, None) or st.unresolved_status(
            phase="Failed", generation=o.generation, resolved=resolved, selector=o.selector,
            rejected=None, rollout=None, previous=o.previous, now=o.now,
        )
        return _with_status(Decision("invalid"), o, desired)

    if not o.hardware.nodes:
        resolved = st.Cond("Resolved", "Unknown", "WaitingForNodes", "no schedulable node is known yet")
        desired = _node_lost(o, resolved, None) or st.unresolved_status(
            phase="Resolving", generation=o.generation, selector=o.selector, resolved=resolved,
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
        desired = _node_lost(o, resolved, reasons) or _serving_previous(o, resolved, reasons)
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
        rejected = list(o.previous.rejected or rejected)
        prev_resolved = st.condition(o.previous, "Resolved")
        reason = str(prev_resolved.message) if prev_resolved else reason
    try:
        children = render_children(plan, o, config)
    except Exception as exc:  # a renderer bug must fail this object, not the operator
        basis = _Basis(o, plan_fields(plan, [], o, config), reason, rejected, o.deployment)
        problem = Problem("RenderFailed", f"cannot render the children: {exc}")
        return _failed(basis, problem, (*errors, ("rendering", exc)))

    apply: list[Manifest] = []
    rollout_event: Event | None = None
    rollout_brief = ""  # the rollout as said inside EngineSelected (which already names engine and image)
    workload = "LeaderWorkerSet" if plan.multi_node else "Deployment"
    deployment_before = o.children.get((workload, o.instance))
    deployment_after, desired_hash = deployment_before, None  # the workload once the applies are done
    for child in children:
        kind, name, want = child.kind, child.name, child.spec_hash
        seen = o.children.get((kind, name))
        if kind in WORKLOADS:
            desired_hash = want
        if not needs_apply(child, seen, o.uid):
            continue
        apply.append(child)
        if kind not in WORKLOADS:
            continue
        deployment_after = as_applied(child, seen)
        if seen is None or seen.spec_hash != want:
            rollout_event = Event("Normal", "RolloutStarted", f"rolling out {name} ({plan.engine} on "
                                  f"{plan.accelerator}, {plan.image}, spec-hash {want})")
            rollout_brief = f"rolling out {name} (spec-hash {want})"
        else:
            rollout_event = Event("Normal", "Scaled", f"scaled {name} from {seen.replicas} to "
                                  f"{child.replicas} replicas")

    wanted = {(c.kind, c.name) for c in children}
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
        if rollout_event.reason == "RolloutStarted" and selects_engine(o.previous, desired):
            # The first rollout of a (newly) chosen engine is said once, in EngineSelected (one Event fewer per
            # deployment at creation; kubectl describe still reads what was chosen, why, and what rolls out).
            fold = rollout_brief
        else:
            before = (rollout_event,)
    decision = Decision("planned", apply=tuple(apply), prune=prune, before_status=before, errors=errors,
                        basis=basis, adapters=ad.work(o.spec, o.pods, o.demand))
    decision = _with_status(decision, o, desired, rollout=fold)
    if fold is not None:  # no status write, so no EngineSelected: the rollout is said alone
        decision = replace(decision, unwritten=(rollout_event,))  # type: ignore[arg-type]
    return decision


def decide_after_apply_failure(decision: Decision, child: Manifest, why: str) -> Decision:
    """What to write instead of ``decision`` when the API server refused ``child`` (``why``: its message).

    Nothing is pruned and the status says ``Failed`` with ``ApplyFailed``; the children applied before
    it stay applied. The Deployment is applied last, so its rollout has not started.
    """
    if decision.basis is None:
        raise ValueError("only a decision with a plan applies children")
    problem = Problem("ApplyFailed", f"the API server refused {child.kind} {child.name}: {why}")
    return _failed(decision.basis, problem, decision.errors)


def _failed(basis: _Basis, problem: Problem, errors: tuple[tuple[str, BaseException], ...]) -> Decision:
    """A plan that could not be carried out: phase Failed, and the problem in Progressing and Degraded."""
    o = basis.observed
    assert o.spec is not None
    seen = st.observe_rollout(basis.deployment, o.pods, desired_replicas=o.spec.replicas, desired_hash=None)
    desired = _plan_status(basis, st.Rollout(seen.replicas, seen.ready, seen.updated, False, problem))
    desired = desired.model_copy(update={"phase": "Failed"})
    return _with_status(Decision("failed", errors=errors, basis=basis), o, desired)


def _with_status(decision: Decision, o: Observed, desired: ModelDeploymentStatus, *,
                 rollout: str | None = None) -> Decision:
    """``decision`` with the desired status, its patch and the Events that follow it once written."""
    decision = replace(decision, status=desired, since=o.previous)
    events = transition_events(o.previous, desired, rollout=rollout) if decision.patch is not None else ()
    return replace(decision, after_status=tuple(events))


def _plan_status(basis: _Basis, rollout: st.Rollout) -> ModelDeploymentStatus:
    o = basis.observed
    assert o.spec is not None
    desired = st.planned_status(generation=o.generation, plan_fields=basis.plan_fields, reason=basis.reason,
                                rejected=basis.rejected, desired_replicas=o.spec.replicas, rollout=rollout,
                                previous=o.previous, now=o.now)
    return desired.model_copy(update={"adapters": ad.status(o.spec, o.pods)})


def _node_lost(o: Observed, resolved: st.Cond, rejected: list[EngineReason] | None) -> ModelDeploymentStatus | None:
    """The status of a placed deployment whose pods' nodes left the resolver's view, or None when that is not so.

    A node that is not ready (or is cordoned, or tainted unreachable) leaves the resolver's view, so the
    unchanged spec no longer resolves, or no node is left at all; but the plan did not fail: its pods come back
    with the node, or are evicted and placed again. The children stay and status says why: NodeNotReady once
    the node lifecycle controller has marked the pods, NodeUnavailable before that (the node first leaves the
    view, its pods are marked a moment later).
    """
    prev = o.previous or ModelDeploymentStatus()
    deployment = o.deployment
    if not prev.engine or deployment is None or prev.observed_generation != o.generation:
        return None
    replicas = int(deployment.replicas or 0)
    rollout = st.observe_rollout(deployment, o.pods, desired_replicas=replicas, desired_hash=None)
    if rollout.problem is not None and rollout.problem.reason == "NodeNotReady":
        problem = rollout.problem
    else:
        seen = {n.name for n in o.hardware.nodes}
        away = sorted({p.node for p in o.pods if p.node and not p.deleting} - seen)
        if not away:
            return None
        problem = Problem("NodeUnavailable", f"the node{'s' if len(away) > 1 else ''} running its pods "
                                             f"({', '.join(away)}) {'are' if len(away) > 1 else 'is'} not ready or "
                                             "not schedulable")
    return st.previous_plan_status(generation=o.generation, resolved=resolved, rejected=rejected,
                                   plan_fields=st.plan_fields_of(prev), desired_replicas=replicas,
                                   rollout=rollout, previous=o.previous, now=o.now, problem=problem)


def _serving_previous(o: Observed, resolved: st.Cond, rejected: list[EngineReason] | None
                      ) -> ModelDeploymentStatus | None:
    """The status of a placed deployment whose new spec cannot be served, or None when that is not the case.

    Like a Deployment whose new pod template cannot start, the last good plan keeps serving: its children
    are left as they are, status keeps its engine and endpoint, and the conditions say that the spec
    (this generation) was not rolled out and why. Only a spec change gets here: when the world changes
    under an unchanged spec (a GPU node gone), the plan itself is what failed.
    """
    prev = o.previous or ModelDeploymentStatus()
    prev_resolved, prev_degraded = st.condition(prev, "Resolved"), st.condition(prev, "Degraded")
    already = prev_degraded is not None and prev_degraded.reason == st.SERVING_PREVIOUS_PLAN
    placed = prev_resolved is not None and prev_resolved.status == "True" and prev.observed_generation != o.generation
    if not prev.engine or not (already or placed):
        return None
    deployment = o.deployment
    if deployment is None:
        return None  # nothing serves: a plain rejection
    replicas = int(deployment.replicas or 0)  # what the previous plan asked for
    rollout = st.observe_rollout(deployment, o.pods, desired_replicas=replicas, desired_hash=None)
    return st.previous_plan_status(generation=o.generation, resolved=resolved, rejected=rejected,
                                   plan_fields=st.plan_fields_of(prev), desired_replicas=replicas,
                                   rollout=rollout, previous=o.previous, now=o.now)


# ----- the parts ----------------------------------------------------------------------------------


def choose(spec: ModelDeploymentSpec, previous: ModelDeploymentStatus | None, hw: Hardware, config: OperatorConfig,
           *, sticky: bool, cache: ResolverCache | None = None) -> tuple[Plan | Rejection, bool]:
    """Resolve; when sticky, keep the engine and accelerator already chosen while they still fit.

    Returns the choice and whether it is the kept placement (rather than the fresh choice).
    """
    cache = cache if cache is not None else ResolverCache()
    fresh = resolve(spec, hw, config, cache=cache)
    prev = previous or ModelDeploymentStatus()
    resolved = st.condition(prev, "Resolved")
    if not sticky or not prev.engine or not resolved or resolved.status != "True":
        return fresh, False
    if isinstance(fresh, Plan) and (fresh.engine, fresh.accelerator) == (prev.engine, prev.accelerator):
        return fresh, False
    pinned_spec = spec.model_copy(update={
        "engine": prev.engine,
        "accelerator": spec.accelerator.model_copy(update={"type": prev.accelerator or "auto"}),
    })
    pinned = resolve(pinned_spec, hw, config, cache=cache)
    if isinstance(pinned, Plan):
        return pinned, True
    return fresh, False


def render_children(plan: Plan, o: Observed, config: OperatorConfig) -> list[Manifest]:
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
    assert o.spec is not None
    md = ModelDeployment(metadata=ObjectMeta(name=o.name, namespace=o.namespace), spec=o.spec)
    for child in render(plan, md, config, inference_pool=o.inference_pool):
        child = _plain(child)  # nothing of the (memoized) plan is shared with what the client sends
        child["metadata"].setdefault("namespace", o.namespace)
        labels = child["metadata"].setdefault("labels", {})
        if SPEC_HASH_LABEL not in labels:  # the renderer hashes the Deployment; hash the rest here
            labels[SPEC_HASH_LABEL] = spec_hash(child)
        child["metadata"]["ownerReferences"] = [owner]
        children.append(Manifest.of(child))
    children.sort(key=lambda c: (APPLY_ORDER.get(c.kind, 9), c.name))
    return children


def needs_apply(child: Manifest, seen: Child | None, uid: str | None) -> bool:
    """Whether the child differs from what was seen: missing, another spec-hash, not owned, other replicas."""
    if seen is None:
        return True
    if child.spec_hash is None or seen.spec_hash != child.spec_hash:
        return True
    if uid and uid not in seen.owner_uids:
        return True
    return child.kind in WORKLOADS and seen.replicas != child.replicas


def as_applied(child: Manifest, seen: Child | None) -> Child:
    """The workload as applying ``child`` leaves it, for the status written right after.

    What was sent, with the rollout status last seen (an apply does not change it) and, when the spec
    changed, a generation the Deployment controller has not observed yet: a changed template or replica
    count is never a complete rollout in the status written with its apply.
    """
    sent = child.view
    if seen is None:
        return replace(sent, generation=1, status=None)
    changed = (seen.spec_hash, seen.replicas) != (sent.spec_hash, sent.replicas)
    return replace(sent, generation=int(seen.generation or 0) + (1 if changed else 0), status=seen.status)


def plan_fields(plan: Plan, children: Sequence[Manifest], o: Observed, config: OperatorConfig
                ) -> ModelDeploymentStatus:
    """The status fields that describe the plan: engine, accelerator, image, endpoint and so on."""
    endpoint = None
    for child in children:
        if child.kind == "Service":
            ports = (child.body.get("spec") or {}).get("ports") or []
            port = next((p for p in ports if p.get("name") == "http"), ports[0] if ports else None)
            number = port.get("port") if port else config.port
            endpoint = f"http://{child.name}.{o.namespace}.svc:{number}/v1"
            break
    model = getattr(plan, "model", None)
    return st.plan_status(
        engine=plan.engine,
        accelerator=plan.accelerator,
        image=plan.image,
        endpoint=endpoint,
        modelUri=getattr(model, "uri", None),
        **plan.status_fields(),
        # A multi-node replica is a group of pods: its leader stands for it (one pod per status.replicas, as an
        # HPA's Pods metrics and LeaderWorkerSet's own scale subresource count them).
        selector=selector_string(service_selector(o.name, plan)),
    )


def selector_string(labels: Mapping[str, str]) -> str:
    """A label selector in its string form (``k=v,k2=v2``), as status.selector and the scale subresource have it."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _prune_why(kind: str) -> str:
    if kind == "PersistentVolumeClaim":
        return ("the spec no longer asks for a cache claim (spec.cache); the cache is downloaded again "
                "if one is asked for later")
    return f"the current plan does not use this {kind}"


def _reasons(items: Iterable[Any]) -> list[EngineReason]:
    return [EngineReason(engine=str(r.engine), reason=str(r.reason)) for r in items or ()]


# ----- Events -------------------------------------------------------------------------------------


def selects_engine(prev: ModelDeploymentStatus | None, new: ModelDeploymentStatus) -> bool:
    """Whether writing ``new`` over ``prev`` chooses an engine, accelerator or image (an EngineSelected)."""
    resolved = st.condition(new, "Resolved")
    if resolved is None or resolved.status != "True":
        return False
    prev = prev or ModelDeploymentStatus()
    return (new.engine, new.accelerator, new.image) != (prev.engine, prev.accelerator, prev.image)


def transition_events(prev: ModelDeploymentStatus | None, new: ModelDeploymentStatus, *,
                      rollout: str | None = None) -> list[Event]:
    """Events for the changes from status ``prev`` to ``new``; ``rollout`` (the Deployment's first rollout of the
    chosen engine) is said in EngineSelected rather than in an Event of its own."""
    events = []
    old_res, new_res = st.condition(prev, "Resolved"), st.condition(new, "Resolved")
    if new_res is not None and new_res.status == "True":
        # A new deployment's first choice is in its status (engine, accelerator, image, the Resolved message)
        # and needs no Event: the steady path of a new deployment is its applies and one status write. A
        # choice that changes the one in force, or ends a rejection, is said.
        first = prev is None or (prev.engine is None and (old_res is None or old_res.status != "False"))
        if selects_engine(prev, new) and not first:
            message = f"{new.engine} on {new.accelerator} ({new.image}): {new_res.message}"
            if rollout:
                message += f"; {rollout}"
            events.append(Event("Normal", "EngineSelected", message))
    elif new_res is not None and new_res.status == "False" and (
        (old_res.status, old_res.reason, old_res.message) if old_res else (None, None, None)
    ) != ("False", new_res.reason, new_res.message):
        events.append(Event("Warning", str(new_res.reason), str(new_res.message)))
    old_deg, new_deg = st.condition(prev, "Degraded"), st.condition(new, "Degraded")
    if new_deg is not None and new_deg.status == "True" and (
        (old_deg.status, old_deg.reason) if old_deg else (None, None)
    ) != ("True", new_deg.reason):
        if new_deg.reason == st.SERVING_PREVIOUS_PLAN:
            events.append(Event("Warning", st.SERVING_PREVIOUS_PLAN, str(new_deg.message)))
        else:
            events.append(Event("Warning", "Degraded", f"{new_deg.reason}: {new_deg.message}"))
    if old_deg is not None and old_deg.status == "True" and new_deg is not None and new_deg.status == "False":
        events.append(Event("Normal", "Recovered", f"no longer {old_deg.reason}"))
    return events
