"""The reconcile loop of one ModelDeployment: observe → decide → act.

Handlers stay thin: kopf only watches, and every event (a ModelDeployment, a
node, a child, a pod) puts a key on the controller's work queue, whose workers
call :meth:`Controller.reconcile` with the kind of change
(:mod:`turnout.controller.handled`); it is serialized per object and runs three
steps:

- **observe** (:meth:`Controller._observe`): parse the ModelDeployment once and
  take what the controller knows of its world — hardware from the node index,
  each child as last seen (the watch's copy, or our own apply's while the watch
  lags behind it), the owned children, the pods, our last written status —
  into one :class:`~turnout.controller.decide.Observed`;
- **decide** (:func:`turnout.controller.decide.decide`, pure): the children to
  apply (only those whose spec-hash, owner or replicas differ), the owned
  children the plan no longer asks for (pruned), the status and the Events;
- **act** (:meth:`Controller._act`): apply in order (a refused child stops
  there, and the decision for that case is taken again, purely), prune, write
  the status patch when there is one, and post the Events after it.

Nothing is written when nothing changed. A spec no engine can serve leaves a
placed deployment's children as they are: the last good plan keeps serving
and the status says so (``ServingPreviousPlan``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from turnout.api import GROUP, KIND, PLURAL, VERSION, ModelDeploymentSpec, ModelDeploymentStatus
from turnout.config import OperatorConfig
from turnout.controller import status as st
from turnout.controller.adapterdemand import DemandBook
from turnout.controller.adapterload import AdapterLoader
from turnout.controller.decide import Decision, Observed, Owned, Prune, decide, decide_after_apply_failure
from turnout.controller.handled import Essence, classify, essence
from turnout.controller.metrics import Metrics, Replicas
from turnout.controller.workqueue import RetryLater, WorkQueue
from turnout.controller.world import INSTANCE_LABEL, Child, Pod, compact_child, lean_copy
from turnout.hardware import LWS_API_VERSION, ClusterFeatures, Hardware, parse_nodes
from turnout.kube import Credentials, KubeClient, PermanentApiError, TransientApiError
from turnout.render import INFERENCE_POOL_API_VERSION, child_name
from turnout.resolver import ResolverCache

logger = logging.getLogger("turnout.controller")

# kopf index ids (they are also the handlers' keyword arguments).
IDX_MDS = "turnout_mds"
IDX_NODES = "turnout_nodes"
IDX_CHILDREN = {
    "Deployment": "turnout_deployments",
    "Service": "turnout_services",
    "PersistentVolumeClaim": "turnout_claims",
    "LeaderWorkerSet": "turnout_leaderworkersets",  # watched only while the cluster serves it
    "InferencePool": "turnout_inferencepools",  # likewise
}
IDX_PODS = "turnout_pods"
INDEX_IDS = (IDX_MDS, IDX_NODES, *IDX_CHILDREN.values(), IDX_PODS)

# Pruned children go at once and the garbage collector removes their dependents (ReplicaSets, Pods) after:
# nothing waits on them, and a child of the same name can be created again right away (foreground deletion
# would keep the old object, finalizer and all, until its pods are gone, and block that).
PRUNE_PROPAGATION = "Background"
Key = tuple[str, str]
REPORTING_CONTROLLER = f"{GROUP}/operator"
#: What the operator did (an Event's ``action``) for each reason it reports; others are "Reconcile".
EVENT_ACTIONS = {"EngineSelected": "Resolve", "Rejected": "Resolve", "InvalidSpec": "Validate",
                 "RolloutStarted": "Apply", "Scaled": "Apply", "Autoscaled": "Scale", "Pruned": "Prune",
                 "PruneFailed": "Prune"}


@dataclass(frozen=True)
class Outcome:
    """What one reconcile did (for metrics and tests)."""

    result: str  # applied | status | unchanged | rejected | invalid | failed | skipped | requeued
    applied: tuple[str, ...] = ()
    status_written: bool = False
    pruned: tuple[str, ...] = ()


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in ("spec", *err["loc"]))
    return f"{where}: {err['msg']}"


def _fingerprint(child: Child) -> tuple[str | None, int | None]:
    """What our apply set that the watch must show before its copy replaces ours."""
    return child.spec_hash, child.replicas


async def _serves(client: KubeClient, group_version: str, plural: str) -> bool:
    """Whether ``/apis/GROUP_VERSION`` lists ``plural`` (None when the group went meanwhile: not served)."""
    found = await client.get(f"/apis/{group_version}")
    return any(r.get("name") == plural for r in (found or {}).get("resources") or [])


class Controller:
    """State shared by all handlers of one operator instance."""

    def __init__(self, config: OperatorConfig, credentials: Credentials, *, inference_pool: bool = False,
                 workers: int | None = None, retry_base: float = 1.0, concurrency: int = 32) -> None:
        self.config = config
        self.retry_base = retry_base  # first back-off delay after a transient API error (seconds)
        self.metrics = Metrics(self._statuses, self._replicas)
        # One identity for our requests and kopf's session (its credentials log kopf in).
        self.client = KubeClient(credentials, on_error=self.metrics.api_error, user_agent="turnout-operator")
        self.indices: Mapping[str, Any] = {}
        # Every reconcile goes through this queue (ModelDeployment events and the world's): as many workers as
        # reconciles may run at once, unless told otherwise.
        self.queue = WorkQueue(self._work, workers=workers or concurrency, base_delay=retry_base)
        self._handled: dict[str, Essence] = {}  # uid -> the essence last reconciled (see handled.py)
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()
        self._locks: defaultdict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Children as our applies returned them, until the watch shows them: (kind, namespace, owner) -> name -> copy.
        self._applied: dict[tuple[str, str, str], dict[str, Child]] = {}
        self._written: dict[str, ModelDeploymentStatus] = {}  # uid -> the status last written
        self._hardware: Hardware | None = None
        self._hw_cache: tuple[list[Any], ClusterFeatures, Hardware] | None = None
        self.resolver_cache = ResolverCache()  # bound to the Hardware of hardware() and to config
        #: The APIs the cluster serves that plans may use (API discovery at start-up, then every
        #: ``discovery_interval`` seconds; see :meth:`discover`).
        self.features = ClusterFeatures()
        #: --inference-pool: render an InferencePool per deployment while the cluster serves them.
        self.inference_pool = inference_pool
        self.pools_served = False  # API discovery: inference.networking.k8s.io/v1 lists inferencepools
        # At most this many reconciles build manifests and wait on the API at once: a burst of creates
        # (kopf runs one handler per object at once) would otherwise hold every object's rendered children
        # and responses in memory together, for no more throughput (the API server is the bottleneck).
        self._active = asyncio.Semaphore(concurrency)
        self._instances: dict[Key, str] = {}  # (namespace, instance label) -> ModelDeployment name
        # uids of children deleted by pruning whose DELETED event has not arrived yet (not deleted twice).
        self._pruning: set[str] = set()
        self._prune_refused: set[str] = set()  # uids whose delete was refused and said so in an Event
        #: loads and unloads LoRA adapters in the pods' engines, outside the reconcile
        self.adapters = AdapterLoader(self.client, config.port,
                                      lambda ns, name, delay: self.queue.add_after((ns, name), delay),
                                      metrics=self.metrics)
        #: the adapters' requests at the gateways, sampled by the leader's demand loop (adapterdemand)
        self.demand = DemandBook()

    # ----- wiring -------------------------------------------------------------------------------

    def bind(self, indices: Mapping[str, Any]) -> None:
        """kopf's indexes of this run (it fills them before any handler runs)."""
        self.indices = {k: indices[k] for k in INDEX_IDS if k in indices}

    def _index(self, idx: str) -> Mapping[Any, Any]:
        return self.indices.get(idx) or {}

    def _values(self, idx: str, key: Hashable) -> list[Any]:
        store = self._index(idx).get(key)
        return list(store) if store is not None else []

    def _statuses(self) -> list[Mapping[str, Any]]:
        return [st.wire(self._previous_status(body)) for store in self._index(IDX_MDS).values() for body in store]

    def _replicas(self) -> list[Replicas]:
        out = []
        for store in self._index(IDX_MDS).values():
            for body in store:
                meta, spec = body["metadata"], body.get("spec") or {}
                ready = (self._previous_status(body) or ModelDeploymentStatus()).ready_replicas
                out.append(Replicas(str(meta.get("namespace") or ""), str(meta["name"]),
                                    str(spec.get("servedModelName") or meta["name"]),
                                    int(spec.get("replicas", 1)), int(ready or 0)))
        return out

    def hardware(self) -> Hardware:
        """The nodes' hardware, parsed again only when the node index holds other objects.

        One Hardware object per node set: the resolver cache holds what it worked out for one Hardware object,
        so parsing afresh on every reconcile would empty it every time.
        """
        nodes = [node for store in self._index(IDX_NODES).values() for node in store]
        cached = self._hw_cache
        # kopf stores each node's compact copy as a new object on every change; we hold the ones parsed, so
        # comparing identities is exact (a held object's id cannot be reused).
        if cached is None or cached[1] != self.features or len(cached[0]) != len(nodes) or any(
                a is not b for a, b in zip(cached[0], nodes, strict=True)):
            cached = self._hw_cache = (nodes, self.features, parse_nodes(nodes, self.features))
        return cached[2]

    async def discover(self) -> tuple[ClusterFeatures, bool]:
        """Which optional APIs the API server serves: (the cluster features plans may use, InferencePools served).

        One GET of ``/apis`` (the group list), then ``/apis/GROUP/VERSION`` only for a listed group, to see that
        it serves ``leaderworkersets`` / ``inferencepools``. A group that is not installed is the normal case,
        not an API error: asking for its version path would answer 404 (and count in
        ``turnout_operator_api_errors_total``), so it is never asked. InferencePools are looked up whether or
        not --inference-pool is set: pools the operator made earlier are watched, so pruned. An error keeps
        what was known (nothing is raised from here).
        """
        api = self.client
        try:
            groups = await api.get("/apis") or {}
            listed = {str(v.get("groupVersion")) for g in groups.get("groups") or [] for v in g.get("versions") or []}
            lws = LWS_API_VERSION in listed and await _serves(api, LWS_API_VERSION, "leaderworkersets")
            pools = INFERENCE_POOL_API_VERSION in listed and await _serves(api, INFERENCE_POOL_API_VERSION,
                                                                           "inferencepools")
        except (TransientApiError, PermanentApiError) as exc:
            logger.warning("API discovery failed, keeping what was known: %s", exc)
            return self.features, self.pools_served
        return ClusterFeatures.from_api_versions([LWS_API_VERSION] if lws else []), pools

    def set_pools_served(self, served: bool) -> bool:
        """InferencePools became served (or went): every deployment is looked at again."""
        if served == self.pools_served:
            return False
        logger.info("InferencePool (%s) is %s served", INFERENCE_POOL_API_VERSION, "now" if served else "no longer")
        self.pools_served = served
        for key in self.md_keys():
            self.queue.add(key)
        return True

    def watched_apis(self) -> tuple[bool, bool]:
        """The optional APIs served now (LeaderWorkerSet, InferencePool): kopf must watch what is."""
        return self.features.leader_worker_set, self.pools_served

    def set_features(self, features: ClusterFeatures) -> bool:
        """New cluster features: every deployment is looked at again (a rejected multi-node plan may fit now)."""
        if features == self.features:
            return False
        logger.info("cluster features changed: %s", features)
        self.features = features
        self.nodes_changed()
        return True

    def autoscaled(self) -> list[dict[str, Any]]:
        """The ModelDeployments with spec.autoscaling, as the watch last showed them."""
        return [body for store in self._index(IDX_MDS).values() for body in store
                if (body.get("spec") or {}).get("autoscaling")]

    def deployments(self) -> list[dict[str, Any]]:
        """Every ModelDeployment, as the watch last showed it."""
        return [body for store in self._index(IDX_MDS).values() for body in store]

    def pods_of(self, namespace: str, name: str) -> list[Pod]:
        """The model server pods of a ModelDeployment, as the watch last showed them."""
        return self._values(IDX_PODS, (namespace, child_name(name)))

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
        if mine is not None and mine.uid == meta.get("uid"):
            echo = event_type != "DELETED" and mine.resource_version == meta.get("resourceVersion")
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

    def watches_started(self) -> None:
        """kopf (re)started its watches: what was reconciled is forgotten, so that every ModelDeployment its
        listing shows is reconciled once more (``resume``), with what the operator serves and sees now."""
        self._handled.clear()

    def md_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A ModelDeployment's watch event: queue it unless nothing a reconcile reads changed (our status's echo)."""
        meta = body.get("metadata") or {}
        namespace, name, uid = meta.get("namespace") or "", meta.get("name") or "", meta.get("uid")
        if event_type == "DELETED":
            self.forget(namespace, name, uid)
            return
        if uid and self._handled.get(uid) == essence(body):
            return
        self.queue.add((namespace, name))

    def forget(self, namespace: str, name: str, uid: str | None) -> None:
        """The ModelDeployment is gone: drop what is remembered about it."""
        self._locks.pop((namespace, name), None)
        self._instances.pop((namespace, child_name(name)), None)
        self.queue.forget((namespace, name))
        if uid:
            self._written.pop(uid, None)
            self._handled.pop(uid, None)
        for kind in IDX_CHILDREN:
            self._applied.pop((kind, namespace, name), None)
        self.adapters.forget(namespace, name)
        self.demand.forget((namespace, name))

    async def _work(self, key: Hashable) -> None:
        namespace, name = key  # type: ignore[misc]
        bodies = self._values(IDX_MDS, (namespace, name))
        if not bodies:
            return
        body = bodies[0]
        uid = (body.get("metadata") or {}).get("uid")
        now = essence(body)
        last = self._handled.get(uid) if uid else None
        trigger = classify(body, now, last)
        if uid:  # before the status write, so that its echo queues nothing; undone when the reconcile fails
            self._handled[uid] = now
        try:
            await self.reconcile(body, trigger=trigger)
        except BaseException as exc:
            if uid and self._handled.get(uid) is now:
                if last is None:
                    self._handled.pop(uid, None)
                else:
                    self._handled[uid] = last
            if isinstance(exc, TransientApiError):
                raise RetryLater(str(exc), exc.retry_after) from exc
            raise

    # ----- the reconcile --------------------------------------------------------------------------

    async def reconcile(self, body: Mapping[str, Any], *, trigger: str) -> Outcome:
        """Bring one ModelDeployment's children and status in line with its spec and the world.

        ``trigger``: create or spec (resolve afresh), scale, resume, meta or world
        (keep the engine already chosen while its placement holds).
        Raises :class:`TransientApiError` for the caller to retry.
        """
        md = lean_copy(body)
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
        outcome = await self._act(md, decide(self._observe(md, trigger), self.config, self.resolver_cache))
        if outcome.result == "requeued":  # an optional API went away since discovery: plan for what is served
            outcome = await self._act(md, decide(self._observe(md, trigger), self.config, self.resolver_cache))
        return outcome

    # ----- observe --------------------------------------------------------------------------------

    def _observe(self, md: Mapping[str, Any], trigger: str) -> Observed:
        """The ModelDeployment, parsed once, and what the controller knows of its world right now."""
        meta = md["metadata"]
        ns, name, uid = meta.get("namespace") or "", meta["name"], meta.get("uid")
        spec, error = None, None
        try:
            spec = ModelDeploymentSpec.model_validate(md.get("spec") or {})
        except ValidationError as exc:
            error = _first_error(exc)
        deleting = bool(meta.get("deletionTimestamp"))
        instance = child_name(name)
        if not deleting:
            self._instances[(ns, instance)] = name
        children = self._seen_children(ns, name)  # first: it retires our copies the watch has caught up with
        return Observed(
            name=name, namespace=ns, uid=uid, generation=meta.get("generation"), spec=spec, spec_error=error,
            deleting=deleting, previous=self._previous_status(md), hardware=self.hardware(), children=children,
            owned=self._owned_children(ns, name, uid), pods=tuple(self._values(IDX_PODS, (ns, instance))),
            trigger=trigger, now=st.now_rfc3339(), inference_pool=self.inference_pool and self.pools_served,
            demand=self.demand.of((ns, name)),
        )

    def _seen_children(self, ns: str, owner: str) -> dict[tuple[str, str], Child]:
        """Each child as last seen: from the watch, or from our own apply while the watch lags behind it.

        Our copy (what the apply returned) stands until the watch shows that spec-hash and replica count;
        then it is retired and the watch's copy is used. Our copies come first, then the watch's.
        """
        out: dict[tuple[str, str], Child] = {}
        for kind, idx in IDX_CHILDREN.items():
            seen: list[Child] = self._values(idx, (ns, owner))
            for name, mine in list((self._applied.get((kind, ns, owner)) or {}).items()):
                match = next((c for c in seen if c.name == name), None)
                if match is not None and _fingerprint(match) == _fingerprint(mine):
                    self._retire(kind, ns, owner, name)  # the watch caught up
                    out[(kind, name)] = match
                else:
                    out[(kind, name)] = mine
            for child in seen:
                out.setdefault((kind, child.name), child)
        return out

    def _owned_children(self, ns: str, name: str, uid: str | None) -> tuple[Owned, ...]:
        """Children of every kind the operator creates that this very ModelDeployment owns.

        From the watch (and our own applies the watch has not shown yet); owned means the instance label
        of this ModelDeployment AND an ownerReference to its uid: a same-named object of someone else, or
        one of an earlier ModelDeployment of the same name (another uid), is never listed.
        """
        if not uid:
            return ()
        instance = child_name(name)
        found: dict[str, Owned] = {}
        for kind, idx in IDX_CHILDREN.items():
            mine = (self._applied.get((kind, ns, name)) or {}).values()
            children: list[Child] = [*self._values(idx, (ns, name)), *mine]
            for child in children:
                cuid = str(child.uid)
                if cuid in found or child.labels.get(INSTANCE_LABEL) != instance:
                    continue
                if uid in child.owner_uids:
                    found[cuid] = Owned(kind, child.name, cuid, deleting=child.deleting or cuid in self._pruning,
                                        refused=cuid in self._prune_refused)
        return tuple(found.values())

    def _previous_status(self, md: Mapping[str, Any]) -> ModelDeploymentStatus | None:
        """The status as we last wrote it, else as the object has it."""
        uid = md["metadata"].get("uid")
        if uid and uid in self._written:
            return self._written[uid]
        return st.read_status(md.get("status"))

    # ----- act ------------------------------------------------------------------------------------

    async def _act(self, md: Mapping[str, Any], decision: Decision) -> Outcome:
        """Carry out a decision: apply, prune, write the status, post the Events that go with it."""
        meta = md["metadata"]
        for what, exc in decision.errors:
            logger.error("%s %s/%s failed", what, meta.get("namespace"), meta.get("name"), exc_info=exc)
        applied: list[str] = []
        for child in decision.apply:
            kind, name = child.kind, child.name
            try:
                response = await self.client.apply(child.body)
            except PermanentApiError as exc:
                if exc.status == 404 and await self._optional_api_went_away(child.body.get("apiVersion")):
                    return Outcome("requeued", tuple(applied))  # planned again by the caller
                decision = decide_after_apply_failure(decision, child, exc.message)
                break
            self.metrics.writes.labels(kind="apply").inc()
            self._applied.setdefault((kind, meta["namespace"], meta["name"]), {})[name] = compact_child(response)
            applied.append(f"{kind}/{name}")
        pruned = [await self._prune(md, p) for p in decision.prune]
        if decision.adapters and decision.basis is not None and decision.basis.observed.spec is not None:
            spec = decision.basis.observed.spec
            self.adapters.start(meta["namespace"], meta["name"], spec.api_key_secret_ref, decision.adapters,
                                [str(p.name) for p in decision.basis.observed.pods])
        for event in decision.before_status:
            await self.event(md, event.type, event.reason, event.message)
        written = await self._write_status(md, decision)
        for event in decision.after_status if written else decision.unwritten:
            await self.event(md, event.type, event.reason, event.message)
        if decision.result == "failed":
            return Outcome("failed", tuple(applied), written)
        if decision.result == "planned":
            done = tuple(p for p in pruned if p)
            result = "applied" if applied or done else ("status" if written else "unchanged")
            return Outcome(result, tuple(applied), written, done)
        return Outcome(decision.result, status_written=written)

    async def _optional_api_went_away(self, api_version: object) -> bool:
        """A 404 on applying a LeaderWorkerSet or InferencePool: was its API removed since discovery last ran?

        Discovery runs every ``discovery_interval`` seconds, so a CRD deleted moments ago is still believed
        served. Ask now: when what is served changed, this deployment is planned again at once and every other
        one is queued (a multi-node model is then rejected with why, not failed with a 404).
        """
        if api_version not in (LWS_API_VERSION, INFERENCE_POOL_API_VERSION):
            return False
        features, pools = await self.discover()
        changed = self.set_features(features)
        return self.set_pools_served(pools) or changed

    async def _prune(self, md: Mapping[str, Any], prune: Prune) -> str | None:
        """Delete one owned child the plan no longer renders; ``Kind/name`` when deleted."""
        meta = md["metadata"]
        target = {"apiVersion": prune.api_version, "kind": prune.kind,
                  "metadata": {"name": prune.name, "namespace": meta["namespace"]}}
        try:
            deleted = await self.client.delete(target, uid=prune.uid, propagation=PRUNE_PROPAGATION)
        except PermanentApiError as exc:  # e.g. 403: an older chart without the delete verb
            event = prune.refused(exc.message)
            if event is not None:  # said once; tried again on every reconcile
                self._prune_refused.add(prune.uid)
                await self.event(md, event.type, event.reason, event.message)
            return None
        self._prune_refused.discard(prune.uid)
        if not deleted:  # already gone, or that name is another object now: nothing was pruned
            self._retire(prune.kind, meta["namespace"], meta["name"], prune.name)
            return None
        self.metrics.writes.labels(kind="delete").inc()
        self._pruning.add(prune.uid)
        self._retire(prune.kind, meta["namespace"], meta["name"], prune.name)
        await self.event(md, prune.pruned.type, prune.pruned.reason, prune.pruned.message)
        return f"{prune.kind}/{prune.name}"

    async def _write_status(self, md: Mapping[str, Any], decision: Decision) -> bool:
        """Write the decision's status patch; False when there is none or the object is gone."""
        if decision.patch is None:
            return False
        meta = md["metadata"]
        try:
            await self.client.patch_status(
                f"{GROUP}/{VERSION}", PLURAL, meta["namespace"], meta["name"], decision.patch
            )
        except PermanentApiError as exc:
            if exc.status == 404:
                return False  # deleted meanwhile
            raise
        self.metrics.writes.labels(kind="status").inc()
        if meta.get("uid"):
            self._written[meta["uid"]] = decision.status  # type: ignore[assignment]
        return True

    async def event(self, md: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Post an ``events.k8s.io/v1`` Event on the ModelDeployment; best effort (a lost Event never fails a
        reconcile)."""
        meta = md["metadata"]
        regarding = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": meta["name"],
                     "namespace": meta["namespace"], "uid": meta.get("uid")}
        log = logger.warning if type_ == "Warning" else logger.info
        log("%s/%s %s: %s", meta["namespace"], meta["name"], reason, message)
        try:
            await self.client.create_event(
                regarding, type_=type_, reason=reason, note=message, action=EVENT_ACTIONS.get(reason, "Reconcile"),
                controller=REPORTING_CONTROLLER, instance=self.instance,
            )
            self.metrics.writes.labels(kind="event").inc()
        except (TransientApiError, PermanentApiError) as exc:
            logger.warning("could not post the %s event for %s/%s: %s", reason, meta["namespace"], meta["name"], exc)

