"""The reconcile loop: one ModelDeployment → hardware → plan → children → status and Events.

Handlers stay thin: kopf's create/update/resume handlers and the world work
queue (nodes, Deployments, Pods) all call :meth:`Controller.reconcile`, which
is serialized per object. Nothing is written when nothing changed: children
are applied only when their spec-hash (or replicas) differs from what the
watch shows, status only when it differs from the last status.

After the wanted children are applied, children this ModelDeployment owns
(its instance label and an ownerReference to its uid) that the plan no longer
asks for are deleted (pruned). A spec no engine can serve leaves a placed
deployment's children as they are: the last good plan keeps serving and the
status says so (``ServingPreviousPlan``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from turnout.api import GROUP, KIND, PLURAL, VERSION, ModelDeploymentSpec
from turnout.config import OperatorConfig
from turnout.controller import status as st
from turnout.controller.metrics import Metrics
from turnout.controller.workqueue import RetryLater, WorkQueue
from turnout.controller.world import INSTANCE_LABEL, SPEC_HASH_LABEL, Problem, compact_child
from turnout.hardware import Hardware, parse_nodes
from turnout.kube import Credentials, KubeClient, PermanentApiError, TransientApiError
from turnout.render import child_name, render, selector
from turnout.render.manifests import spec_hash
from turnout.resolver import Plan, Rejection, resolve

logger = logging.getLogger("turnout.controller")

# kopf index ids (they are also the handlers' keyword arguments).
IDX_MDS = "turnout_mds"
IDX_NODES = "turnout_nodes"
IDX_CHILDREN = {
    "Deployment": "turnout_deployments",
    "Service": "turnout_services",
    "PersistentVolumeClaim": "turnout_claims",
}
IDX_PODS = "turnout_pods"
INDEX_IDS = (IDX_MDS, IDX_NODES, *IDX_CHILDREN.values(), IDX_PODS)

_APPLY_ORDER = {"PersistentVolumeClaim": 0, "Service": 1, "Deployment": 2}
_API_VERSIONS = {"Deployment": "apps/v1", "Service": "v1", "PersistentVolumeClaim": "v1"}
# Pruned children go at once and the garbage collector removes their dependents (ReplicaSets, Pods) after:
# nothing waits on them, and a child of the same name can be created again right away (foreground deletion
# would keep the old object, finalizer and all, until its pods are gone, and block that).
PRUNE_PROPAGATION = "Background"
Key = tuple[str, str]
REPORTING_CONTROLLER = f"{GROUP}/operator"
#: What the operator did (an Event's ``action``) for each reason it reports; others are "Reconcile".
EVENT_ACTIONS = {"EngineSelected": "Resolve", "Rejected": "Resolve", "InvalidSpec": "Validate",
                 "RolloutStarted": "Apply", "Scaled": "Apply", "Pruned": "Prune", "PruneFailed": "Prune"}


@dataclass(frozen=True)
class Outcome:
    """What one reconcile did (for metrics and tests)."""

    result: str  # applied | status | unchanged | rejected | invalid | failed | skipped
    applied: tuple[str, ...] = ()
    status_written: bool = False
    pruned: tuple[str, ...] = ()


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in ("spec", *err["loc"]))
    return f"{where}: {err['msg']}"


def _reasons(items: Iterable[Any]) -> list[dict[str, str]]:
    return [{"engine": str(r.engine), "reason": str(r.reason)} for r in items or ()]


class Controller:
    """State shared by all handlers of one operator instance."""

    def __init__(self, config: OperatorConfig, *, workers: int = 4, retry_base: float = 1.0,
                 concurrency: int = 32) -> None:
        self.config = config
        self.retry_base = retry_base  # first back-off delay after a transient API error (seconds)
        self.metrics = Metrics(self._statuses)
        self.client: KubeClient | None = None
        self.credentials: Credentials | None = None  # one identity for our client and kopf's session
        self.indices: Mapping[str, Any] = {}
        self.queue = WorkQueue(self._work, workers=workers, base_delay=retry_base / 2)
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()
        self._locks: defaultdict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Children as our applies returned them, until the watch shows them: (kind, namespace, owner) -> name -> copy.
        self._applied: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
        self._written: dict[str, dict[str, Any]] = {}
        self._hardware: Hardware | None = None
        self._hw_cache: tuple[list[Any], Hardware] | None = None
        # At most this many reconciles build manifests and wait on the API at once: a burst of creates
        # (kopf runs one handler per object at once) would otherwise hold every object's rendered children
        # and responses in memory together, for no more throughput (the API server is the bottleneck).
        self._active = asyncio.Semaphore(concurrency)
        self._instances: dict[Key, str] = {}  # (namespace, instance label) -> ModelDeployment name
        # uids of children deleted by pruning whose DELETED event has not arrived yet (not deleted twice).
        self._pruning: set[str] = set()
        self._prune_refused: set[str] = set()  # uids whose delete was refused and said so in an Event

    # ----- wiring -------------------------------------------------------------------------------

    def bind(self, indices: Mapping[str, Any], client: KubeClient) -> None:
        self.indices = {k: indices[k] for k in INDEX_IDS if k in indices}
        self.client = client

    def _index(self, idx: str) -> Mapping[Any, Any]:
        return self.indices.get(idx) or {}

    def _values(self, idx: str, key: Hashable) -> list[dict[str, Any]]:
        store = self._index(idx).get(key)
        return list(store) if store is not None else []

    def _statuses(self) -> list[Mapping[str, Any]]:
        return [self._previous_status(body) or {} for store in self._index(IDX_MDS).values() for body in store]

    def hardware(self) -> Hardware:
        """The nodes' hardware, parsed again only when the node index holds other objects.

        One Hardware object per node set: the resolver memoizes per Hardware object, so parsing afresh on
        every reconcile would also keep one cache entry (and one Hardware) per reconcile alive.
        """
        nodes = [node for store in self._index(IDX_NODES).values() for node in store]
        cached = self._hw_cache
        # kopf stores each node's compact copy as a new object on every change; we hold the ones parsed, so
        # comparing identities is exact (a held object's id cannot be reused).
        if cached is None or len(cached[0]) != len(nodes) or any(
                a is not b for a, b in zip(cached[0], nodes, strict=True)):
            cached = self._hw_cache = (nodes, parse_nodes(nodes))
        return cached[1]

    def md_keys(self) -> list[Key]:
        return sorted(self._index(IDX_MDS).keys())

    # ----- world events -------------------------------------------------------------------------

    def nodes_changed(self) -> bool:
        """Called on every Node event: when the hardware differs, every deployment is looked at again."""
        hw = self.hardware()
        if hw == self._hardware:
            return False
        self._hardware = hw
        for key in self.md_keys():
            self.queue.add(key)
        return True

    def child_changed(self, namespace: str | None, owner: str | None) -> None:
        if namespace and owner and (namespace, owner) in self._index(IDX_MDS):
            self.queue.add((namespace, owner))

    def child_event(self, kind: str, body: Mapping[str, Any], event_type: str | None, owner: str | None) -> None:
        """A child's watch event: retire our own copy once the watch shows that object, then look again.

        The echo of our own apply (the very version it returned) changes nothing that reconcile did not
        already see, so it queues no reconcile (at scale that halves the reconciles per deployment).
        """
        meta = body.get("metadata") or {}
        namespace = meta.get("namespace") or ""
        if event_type == "DELETED":
            self._pruning.discard(str(meta.get("uid")))
            self._prune_refused.discard(str(meta.get("uid")))
        mine = self._applied.get((kind, namespace, owner or ""), {}).get(meta.get("name") or "")
        if mine is not None and mine.get("uid") == meta.get("uid"):
            echo = event_type != "DELETED" and mine.get("resourceVersion") == meta.get("resourceVersion")
            if echo or event_type == "DELETED":
                self._retire(kind, namespace, owner or "", meta.get("name") or "")
            if echo:
                return
        self.child_changed(meta.get("namespace"), owner)

    def _retire(self, kind: str, namespace: str, owner: str, name: str) -> None:
        mine = self._applied.get((kind, namespace, owner))
        if mine is not None:
            mine.pop(name, None)
            if not mine:
                del self._applied[(kind, namespace, owner)]

    def pod_changed(self, namespace: str | None, instance: str | None) -> None:
        if namespace and instance:
            self.child_changed(namespace, self._instances.get((namespace, instance), instance))

    def forget(self, namespace: str, name: str, uid: str | None) -> None:
        """The ModelDeployment is gone: drop what is remembered about it."""
        self._locks.pop((namespace, name), None)
        self._instances.pop((namespace, child_name(name)), None)
        self.queue.forget((namespace, name))
        if uid:
            self._written.pop(uid, None)
        for kind in IDX_CHILDREN:
            self._applied.pop((kind, namespace, name), None)

    async def _work(self, key: Hashable) -> None:
        namespace, name = key  # type: ignore[misc]
        bodies = self._values(IDX_MDS, (namespace, name))
        if not bodies:
            return
        try:
            await self.reconcile(bodies[0], trigger="world")
        except TransientApiError as exc:
            raise RetryLater(str(exc), exc.retry_after) from exc

    # ----- the reconcile --------------------------------------------------------------------------

    async def reconcile(self, body: Mapping[str, Any], *, trigger: str) -> Outcome:
        """Bring one ModelDeployment's children and status in line with its spec and the world.

        ``trigger``: create or spec (resolve afresh), scale, resume, meta or world
        (keep the engine already chosen while its placement holds).
        Raises :class:`TransientApiError` for the caller to retry.
        """
        md = _plain(body)
        meta = md.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        async with self._locks[key], self._active:
            started = time.perf_counter()
            try:
                outcome = await self._reconcile(md, trigger)
            except TransientApiError:
                self.metrics.reconciles.labels(result="retry").inc()
                raise
            except Exception:
                self.metrics.reconciles.labels(result="error").inc()
                raise
            finally:
                self.metrics.duration.observe(time.perf_counter() - started)
            self.metrics.reconciles.labels(result=outcome.result).inc()
            logger.debug("reconciled %s/%s (%s): %s", key[0], key[1], trigger, outcome)
            return outcome

    async def _reconcile(self, md: dict[str, Any], trigger: str) -> Outcome:
        meta = md["metadata"]
        if meta.get("deletionTimestamp"):
            return Outcome("skipped")
        generation = meta.get("generation")
        previous = self._previous_status(md)
        if trigger == "world" and (previous or {}).get("observedGeneration") != generation:
            # The spec changed and kopf's update handler has not run yet: it will resolve afresh.
            return Outcome("skipped")
        now = st.now_rfc3339()

        try:
            spec = ModelDeploymentSpec.model_validate(md.get("spec") or {})
        except ValidationError as exc:
            resolved = st.Cond("Resolved", "False", "InvalidSpec", _first_error(exc))
            desired = self._serving_previous(md, previous, resolved, None, now) or st.unresolved_status(
                phase="Failed", generation=generation, resolved=resolved,
                rejected=None, rollout=None, previous=previous, now=now,
            )
            written = await self._write_status(md, previous, desired)
            return Outcome("invalid", status_written=written)

        hw = self.hardware()
        instance = child_name(meta["name"])
        self._instances[(meta["namespace"], instance)] = meta["name"]
        rollout_pods = self._values(IDX_PODS, (meta["namespace"], instance))
        if not hw.nodes:
            desired = st.unresolved_status(
                phase="Resolving", generation=generation,
                resolved=st.Cond("Resolved", "Unknown", "WaitingForNodes", "no schedulable node is known yet"),
                rejected=None, rollout=None, previous=previous, now=now,
            )
            written = await self._write_status(md, previous, desired)
            return Outcome("skipped", status_written=written)

        sticky = trigger not in ("create", "spec")
        try:
            decision, kept = self._choose(spec, previous, hw, sticky=sticky)
        except Exception as exc:  # the resolver promises never to raise; never crash if it does
            logger.exception("resolving %s/%s failed", meta["namespace"], meta["name"])
            decision, kept = Rejection(rejected=[], message=f"internal error while resolving: {exc}"), False

        if isinstance(decision, Rejection):
            resolved = st.Cond("Resolved", "False", "Rejected", decision.message)
            desired = self._serving_previous(md, previous, resolved, _reasons(decision.rejected), now)
            if desired is None:
                deployment = self._observed(md, "Deployment", None)
                rollout = st.observe_rollout(deployment, rollout_pods, desired_replicas=spec.replicas,
                                             desired_hash=None) if deployment else None
                desired = st.unresolved_status(
                    phase="Failed", generation=generation, resolved=resolved,
                    rejected=_reasons(decision.rejected), rollout=rollout, previous=previous, now=now,
                )
            written = await self._write_status(md, previous, desired)
            return Outcome("rejected", status_written=written)

        plan: Plan = decision
        applied: list[str] = []
        rollout_event: tuple[str, str] | None = None
        rollout_brief = ""  # the rollout as said inside EngineSelected (which already names engine and image)
        apply_problem: Problem | None = None
        desired_hash: str | None = None
        try:
            children = self._children(plan, md)
        except Exception as exc:  # a renderer bug must fail this object, not the operator
            logger.exception("rendering %s/%s failed", meta["namespace"], meta["name"])
            children, apply_problem = [], Problem("RenderFailed", f"cannot render the children: {exc}")
        for child in children:
            kind, name = child["kind"], child["metadata"]["name"]
            want = (child["metadata"].get("labels") or {}).get(SPEC_HASH_LABEL)
            if kind == "Deployment":
                desired_hash = want
            observed = self._observed(md, kind, name)
            if not self._needs_apply(child, observed, meta.get("uid")):
                continue
            try:
                response = await self.client.apply(child)  # type: ignore[union-attr]
            except PermanentApiError as exc:
                apply_problem = Problem("ApplyFailed", f"the API server refused {kind} {name}: {exc.message}")
                break
            self.metrics.writes.labels(kind="apply").inc()
            compact = compact_child(response)
            compact["owner"] = meta["name"]
            self._applied.setdefault((kind, meta["namespace"], meta["name"]), {})[name] = compact
            applied.append(f"{kind}/{name}")
            if kind == "Deployment":
                old_hash = (observed or {}).get("labels", {}).get(SPEC_HASH_LABEL)
                if observed is None or old_hash != want:
                    rollout_event = ("RolloutStarted", f"rolling out {name} ({plan.engine} on {plan.accelerator}, "
                                     f"{plan.image}, spec-hash {want})")
                    rollout_brief = f"rolling out {name} (spec-hash {want})"
                else:
                    rollout_event = ("Scaled", f"scaled {name} from {observed.get('replicas')} to "
                                     f"{child['spec'].get('replicas')} replicas")

        pruned: list[str] = []
        if apply_problem is None and children:
            pruned = await self._prune(md, children)
        deployment = self._observed(md, "Deployment", None)
        rollout = st.observe_rollout(deployment, rollout_pods, desired_replicas=spec.replicas,
                                     desired_hash=desired_hash)
        if apply_problem is not None:
            rollout = st.Rollout(rollout.replicas, rollout.ready, rollout.updated, False, apply_problem)
        rejected = _reasons(plan.rejected)
        reason = plan.reason
        if kept and previous is not None:
            rejected = list(previous.get("rejected") or rejected)
            prev_resolved = st.condition(previous, "Resolved")
            reason = str(prev_resolved.get("message")) if prev_resolved else reason
        desired = st.planned_status(
            generation=generation,
            plan_fields=self._plan_fields(plan, children, md),
            reason=reason,
            rejected=rejected,
            desired_replicas=spec.replicas,
            rollout=rollout,
            previous=previous,
            now=now,
        )
        if apply_problem is not None:
            desired["phase"] = "Failed"
        fold = None
        if rollout_event is not None:
            if rollout_event[0] == "RolloutStarted" and self._selects_engine(previous or {}, desired):
                # The first rollout of a (newly) chosen engine is said once, in EngineSelected (one Event fewer
                # per deployment at creation; kubectl describe still reads what was chosen, why, and what rolls out).
                fold = rollout_brief
            else:
                await self._event(md, "Normal", *rollout_event)
        written = await self._write_status(md, previous, desired, rollout=fold)
        if fold is not None and not written:  # no status write, so no EngineSelected: say the rollout alone
            await self._event(md, "Normal", *rollout_event)  # type: ignore[misc]
        if apply_problem is not None:
            return Outcome("failed", tuple(applied), written)
        result = "applied" if applied or pruned else ("status" if written else "unchanged")
        return Outcome(result, tuple(applied), written, tuple(pruned))

    # ----- pruning and the previous plan -----------------------------------------------------------

    def _owned_children(self, md: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Children of every kind the operator creates that this very ModelDeployment owns.

        From the watch (and our own applies the watch has not shown yet); owned means the instance label
        of this ModelDeployment AND an ownerReference to its uid: a same-named object of someone else, or
        one of an earlier ModelDeployment of the same name (another uid), is never listed.
        """
        meta = md["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta.get("uid")
        if not uid:
            return []
        instance = child_name(name)
        found: dict[str, dict[str, Any]] = {}
        for kind, idx in IDX_CHILDREN.items():
            mine = (self._applied.get((kind, ns, name)) or {}).values()
            for child in [*self._values(idx, (ns, name)), *mine]:
                if child.get("uid") in found or (child.get("labels") or {}).get(INSTANCE_LABEL) != instance:
                    continue
                if uid in (child.get("ownerUids") or []):
                    found[str(child.get("uid"))] = {**child, "kind": kind}
        return list(found.values())

    async def _prune(self, md: Mapping[str, Any], children: list[dict[str, Any]]) -> list[str]:
        """Delete the owned children the wanted set no longer has; returns ``Kind/name`` of each deleted."""
        meta = md["metadata"]
        wanted = {(c["kind"], c["metadata"]["name"]) for c in children}
        pruned: list[str] = []
        for child in sorted(self._owned_children(md), key=lambda c: (-_APPLY_ORDER.get(c["kind"], 9), c["name"])):
            kind, name, uid = child["kind"], str(child["name"]), str(child["uid"])
            if (kind, name) in wanted or child.get("deleting") or uid in self._pruning:
                continue
            target = {"apiVersion": _API_VERSIONS[kind], "kind": kind,
                      "metadata": {"name": name, "namespace": meta["namespace"]}}
            try:
                deleted = await self.client.delete(  # type: ignore[union-attr]
                    target, uid=uid, propagation=PRUNE_PROPAGATION)
            except PermanentApiError as exc:  # e.g. 403: an older chart without the delete verb
                if uid not in self._prune_refused:  # said once; tried again on every reconcile
                    self._prune_refused.add(uid)
                    await self._event(md, "Warning", "PruneFailed", f"cannot delete {kind} {name}, which the "
                                      f"spec no longer asks for: {exc.message}")
                continue
            self._prune_refused.discard(uid)
            if not deleted:  # already gone, or that name is another object now: nothing was pruned
                self._retire(kind, meta["namespace"], meta["name"], name)
                continue
            self.metrics.writes.labels(kind="delete").inc()
            self._pruning.add(uid)
            self._retire(kind, meta["namespace"], meta["name"], name)
            pruned.append(f"{kind}/{name}")
            why = ("the spec no longer asks for a cache claim (spec.cache); the cache is downloaded again "
                   "if one is asked for later" if kind == "PersistentVolumeClaim"
                   else f"the current plan does not use this {kind}")
            await self._event(md, "Normal", "Pruned", f"deleted {kind} {name}: {why}")
        return pruned

    def _serving_previous(
        self, md: Mapping[str, Any], previous: Mapping[str, Any] | None, resolved: st.Cond,
        rejected: list[dict[str, str]] | None, now: str,
    ) -> dict[str, Any] | None:
        """The status of a placed deployment whose new spec cannot be served, or None when that is not the case.

        Like a Deployment whose new pod template cannot start, the last good plan keeps serving: its children
        are left as they are, status keeps its engine and endpoint, and the conditions say that the spec
        (this generation) was not rolled out and why. Only a spec change gets here: when the world changes
        under an unchanged spec (a GPU node gone), the plan itself is what failed.
        """
        prev = previous or {}
        generation = md["metadata"].get("generation")
        prev_resolved = st.condition(prev, "Resolved") or {}
        already = (st.condition(prev, "Degraded") or {}).get("reason") == st.SERVING_PREVIOUS_PLAN
        placed = prev_resolved.get("status") == "True" and prev.get("observedGeneration") != generation
        if not prev.get("engine") or not (already or placed):
            return None
        deployment = self._observed(md, "Deployment", None)
        if deployment is None:
            return None  # nothing serves: a plain rejection
        replicas = int(deployment.get("replicas") or 0)  # what the previous plan asked for
        pods = self._values(IDX_PODS, (md["metadata"]["namespace"], child_name(md["metadata"]["name"])))
        rollout = st.observe_rollout(deployment, pods, desired_replicas=replicas, desired_hash=None)
        plan_fields = {k: prev.get(k) for k in st.PLAN_FIELDS}
        return st.previous_plan_status(generation=generation, resolved=resolved, rejected=rejected,
                                       plan_fields=plan_fields, desired_replicas=replicas, rollout=rollout,
                                       previous=previous, now=now)

    # ----- decisions ----------------------------------------------------------------------------

    def _choose(
        self, spec: ModelDeploymentSpec, previous: Mapping[str, Any] | None, hw: Hardware, *, sticky: bool
    ) -> tuple[Plan | Rejection, bool]:
        """Resolve; when sticky, keep the engine and accelerator already chosen while they still fit."""
        fresh = resolve(spec, hw, self.config)
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
        pinned = resolve(pinned_spec, hw, self.config)
        if isinstance(pinned, Plan):
            return pinned, True
        return fresh, False

    def _children(self, plan: Plan, md: Mapping[str, Any]) -> list[dict[str, Any]]:
        meta = md["metadata"]
        owner = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": meta["name"],
            "uid": meta.get("uid"),
            "controller": True,
            "blockOwnerDeletion": True,
        }
        children = []
        for child in render(plan, md, self.config):
            child = _plain(child)
            child["metadata"].setdefault("namespace", meta["namespace"])
            labels = child["metadata"].setdefault("labels", {})
            if SPEC_HASH_LABEL not in labels:  # the renderer hashes the Deployment; hash the rest here
                labels[SPEC_HASH_LABEL] = spec_hash(child)
            child["metadata"]["ownerReferences"] = [owner]
            children.append(child)
        children.sort(key=lambda c: (_APPLY_ORDER.get(c["kind"], 9), c["metadata"]["name"]))
        return children

    @staticmethod
    def _needs_apply(child: Mapping[str, Any], observed: Mapping[str, Any] | None, uid: str | None) -> bool:
        if observed is None:
            return True
        want = (child["metadata"].get("labels") or {}).get(SPEC_HASH_LABEL)
        if want is None or (observed.get("labels") or {}).get(SPEC_HASH_LABEL) != want:
            return True
        if uid and uid not in (observed.get("ownerUids") or []):
            return True
        return child["kind"] == "Deployment" and observed.get("replicas") != (child.get("spec") or {}).get("replicas")

    def _plan_fields(self, plan: Plan, children: list[dict[str, Any]], md: Mapping[str, Any]) -> dict[str, Any]:
        endpoint = None
        for child in children:
            if child["kind"] == "Service":
                ports = (child.get("spec") or {}).get("ports") or []
                port = next((p for p in ports if p.get("name") == "http"), ports[0] if ports else None)
                number = port.get("port") if port else self.config.port
                endpoint = f"http://{child['metadata']['name']}.{md['metadata']['namespace']}.svc:{number}/v1"
                break
        model = getattr(plan, "model", None)
        return {
            "engine": plan.engine,
            "accelerator": plan.accelerator,
            "image": plan.image,
            "endpoint": endpoint,
            "modelUri": getattr(model, "uri", None),
            "tensorParallelSize": plan.tensor_parallel_size,
            "selector": ",".join(f"{k}={v}" for k, v in selector(md["metadata"]["name"]).items()),
        }

    # ----- observed state -----------------------------------------------------------------------

    def _observed(self, md: Mapping[str, Any], kind: str, name: str | None) -> dict[str, Any] | None:
        """The child as last seen: from the watch, or from our own apply when the watch lags behind it."""
        ns, owner = md["metadata"]["namespace"], md["metadata"]["name"]
        seen = [c for c in self._values(IDX_CHILDREN[kind], (ns, owner)) if name is None or c.get("name") == name]
        mine_by_name = self._applied.get((kind, ns, owner)) or {}
        if name is None:
            applied = list(mine_by_name.values())
        else:
            applied = [v for v in [mine_by_name.get(name)] if v is not None]
        if applied:
            mine = applied[0]
            match = [c for c in seen if c.get("name") == mine.get("name")]
            fingerprint = ((mine.get("labels") or {}).get(SPEC_HASH_LABEL), mine.get("replicas"))
            if match and ((match[0].get("labels") or {}).get(SPEC_HASH_LABEL), match[0].get("replicas")) == fingerprint:
                self._retire(kind, ns, owner, mine["name"])  # the watch caught up
                return match[0]
            return mine
        return seen[0] if seen else None

    def _previous_status(self, md: Mapping[str, Any]) -> dict[str, Any] | None:
        uid = md["metadata"].get("uid")
        if uid and uid in self._written:
            return self._written[uid]
        return md.get("status")

    # ----- writes ---------------------------------------------------------------------------------

    async def _write_status(
        self, md: Mapping[str, Any], previous: Mapping[str, Any] | None, desired: dict[str, Any],
        *, rollout: str | None = None,
    ) -> bool:
        patch = st.status_patch(previous, desired)
        if patch is None:
            return False
        meta = md["metadata"]
        try:
            await self.client.patch_status(  # type: ignore[union-attr]
                f"{GROUP}/{VERSION}", PLURAL, meta["namespace"], meta["name"], patch
            )
        except PermanentApiError as exc:
            if exc.status == 404:
                return False  # deleted meanwhile
            raise
        self.metrics.writes.labels(kind="status").inc()
        if meta.get("uid"):
            self._written[meta["uid"]] = desired
        # Events follow the written status, so a retried reconcile does not repeat them.
        await self._transition_events(md, previous or {}, desired, rollout=rollout)
        return True

    @staticmethod
    def _selects_engine(prev: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
        """Whether writing ``new`` over ``prev`` chooses an engine, accelerator or image (an EngineSelected)."""
        if (st.condition(new, "Resolved") or {}).get("status") != "True":
            return False
        return tuple(new.get(k) for k in ("engine", "accelerator", "image")) != tuple(
            prev.get(k) for k in ("engine", "accelerator", "image"))

    async def _transition_events(
        self, md: Mapping[str, Any], prev: Mapping[str, Any], new: Mapping[str, Any], *, rollout: str | None = None
    ) -> None:
        """Events for the changes from ``prev`` to ``new``; ``rollout`` (the Deployment's first rollout of the
        chosen engine) is said in EngineSelected rather than in an Event of its own."""
        old_res, new_res = st.condition(prev, "Resolved") or {}, st.condition(new, "Resolved") or {}
        if new_res.get("status") == "True":
            if self._selects_engine(prev, new):
                message = (f"{new.get('engine')} on {new.get('accelerator')} ({new.get('image')}): "
                           f"{new_res.get('message')}")
                if rollout:
                    message += f"; {rollout}"
                await self._event(md, "Normal", "EngineSelected", message)
        elif new_res.get("status") == "False" and (
            (old_res.get("status"), old_res.get("reason"), old_res.get("message"))
            != ("False", new_res.get("reason"), new_res.get("message"))
        ):
            await self._event(md, "Warning", str(new_res.get("reason")), str(new_res.get("message")))
        old_deg, new_deg = st.condition(prev, "Degraded") or {}, st.condition(new, "Degraded") or {}
        if new_deg.get("status") == "True" and (old_deg.get("status"), old_deg.get("reason")) != (
            "True", new_deg.get("reason")
        ):
            if new_deg.get("reason") == st.SERVING_PREVIOUS_PLAN:
                await self._event(md, "Warning", st.SERVING_PREVIOUS_PLAN, str(new_deg.get("message")))
            else:
                await self._event(md, "Warning", "Degraded", f"{new_deg.get('reason')}: {new_deg.get('message')}")
        if old_deg.get("status") == "True" and new_deg.get("status") == "False":
            await self._event(md, "Normal", "Recovered", f"no longer {old_deg.get('reason')}")

    async def _event(self, md: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Post an ``events.k8s.io/v1`` Event on the ModelDeployment; best effort (a lost Event never fails a
        reconcile)."""
        meta = md["metadata"]
        regarding = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": meta["name"],
                     "namespace": meta["namespace"], "uid": meta.get("uid")}
        log = logger.warning if type_ == "Warning" else logger.info
        log("%s/%s %s: %s", meta["namespace"], meta["name"], reason, message)
        try:
            await self.client.create_event(  # type: ignore[union-attr]
                regarding, type_=type_, reason=reason, note=message, action=EVENT_ACTIONS.get(reason, "Reconcile"),
                controller=REPORTING_CONTROLLER, instance=self.instance,
            )
            self.metrics.writes.labels(kind="event").inc()
        except (TransientApiError, PermanentApiError) as exc:
            logger.warning("could not post the %s event for %s/%s: %s", reason, meta["namespace"], meta["name"], exc)

