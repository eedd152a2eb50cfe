"""kopf wiring: settings, indexes and thin handlers that call the :class:`~turnout.controller.reconcile.Controller`.

Every handler is registered on a fresh :class:`kopf.OperatorRegistry` per kopf run (no module-level global
handlers), so tests can run, stop and restart operators in one process, and a restart can change the watches.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import kopf

from turnout.api import GROUP, KIND, PLURAL, VERSION
from turnout.controller.adapterdemand import DemandLoop
from turnout.controller.keypublish import KeyPublisher
from turnout.controller.reconcile import IDX_CHILDREN, IDX_MDS, IDX_NODES, IDX_PODS, INDEX_IDS, Controller
from turnout.controller.scaleloop import ScaleLoop
from turnout.controller.world import (
    INSTANCE_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    compact_child,
    compact_node,
    compact_pod,
    lean_copy,
    owner_name,
)
from turnout.kube import TransientApiError
from turnout.kube.session import aiohttp_session

logger = logging.getLogger("turnout.controller")

DIFFBASE_ANNOTATION = f"{GROUP}/last-handled-configuration"
MANAGED = {MANAGED_BY_LABEL: MANAGED_BY}
_CHILD_RESOURCES = {
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("", "v1", "services"),
    "PersistentVolumeClaim": ("", "v1", "persistentvolumeclaims"),
    # Registered only while served (API discovery before kopf starts): kopf warns about a handler whose
    # resource is not served ("Unresolved resources cannot be served"). When LeaderWorkerSet appears or goes,
    # the operator restarts kopf in-process (see operate) so that its watches follow.
    "LeaderWorkerSet": ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets"),
    # Likewise: watched while the Gateway API Inference Extension is served, whether or not --inference-pool
    # is set (so pools are pruned when it is turned off).
    "InferencePool": ("inference.networking.k8s.io", "v1", "inferencepools"),
}
#: The child kinds of an optional API: watched only while the cluster serves it.
_OPTIONAL = ("LeaderWorkerSet", "InferencePool")


def _trigger(diff: Sequence[Any]) -> str:
    """Classify an update: scale (only spec.replicas), spec (anything else in spec), or meta."""
    fields = [tuple(item[1]) for item in diff]
    if fields and all(f[:2] == ("spec", "replicas") for f in fields):
        return "scale"
    if any(f[:1] == ("spec",) or f == () for f in fields):
        return "spec"
    return "meta"


class LeanDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff-base in our annotation, built without deep-copying status and managedFields first.

    kopf's ``build`` deep-copies the whole object and then drops ``metadata`` and ``status``; on a real API
    server ``managedFields`` make that copy most of the operator's CPU per event (a profile of 300 creates:
    8 of 40 s). The essence is the same: spec-level fields, labels and annotations.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        if extra_fields:  # fields kept from status or metadata: kopf's own way
            return super().build(body=body, extra_fields=extra_fields)
        meta = body.get("metadata") or {}
        lean = {k: v for k, v in body.items() if k not in ("metadata", "status")}
        lean["metadata"] = {k: meta[k] for k in ("labels", "annotations") if k in meta}
        return super().build(body=kopf.Body(lean), extra_fields=extra_fields)


class MemoryDiffBaseStorage(LeanDiffBaseStorage):
    """kopf's diff-base (the last handled essence) kept in the operator's memory, not in an annotation.

    kopf's own storages write the essence back to the object after every handled change: one PATCH per new
    deployment, a quarter of the operator's writes. Kept here instead (per uid, as compact JSON), with these
    fallbacks when the operator has not handled the object since it started:

    * ``status.observedGeneration`` equals ``metadata.generation``: this generation was handled (its status is
      written only after its children were applied), so the essence is the object's own and kopf resumes it;
    * else the annotation an older operator wrote, so a change made while it was down is an update (scale or
      spec) as before;
    * else none: kopf treats the object as new and the create handler resolves it afresh (a spec change made
      while the operator was down does the same).
    """

    def __init__(self, *, prefix: str, key: str) -> None:
        super().__init__(prefix=prefix, key=key)
        self._essences: dict[str, str] = {}

    def fetch(self, *, body: kopf.Body) -> Any:
        uid = body.get("metadata", {}).get("uid")
        kept = self._essences.get(uid) if uid else None
        if kept is not None:
            return json.loads(kept)
        observed = (body.get("status") or {}).get("observedGeneration")
        if observed is not None and observed == body.get("metadata", {}).get("generation"):
            return self.build(body=body)
        return super().fetch(body=body)

    def store(self, *, body: kopf.Body, patch: Any, essence: Any) -> None:
        uid = body.get("metadata", {}).get("uid")
        if uid:  # nothing goes into the patch: without other changes kopf sends none
            self._essences[uid] = json.dumps(essence, separators=(",", ":"))

    def forget(self, uid: str | None) -> None:
        """The object is gone: drop its essence."""
        if uid:
            self._essences.pop(uid, None)


class LeanProgressStorage(kopf.AnnotationsProgressStorage):
    """kopf's progress annotations, without the ``kopf-managed`` marker when no progress is left to keep.

    kopf records a handler's progress and, once it succeeds, purges the record in the same patch, which then
    holds only its marker annotation: one PATCH per new deployment that says nothing. A handler that is
    retried still records its progress (and the marker) as kopf does.
    """

    def purge(self, *, key: Any, body: kopf.Body, patch: Any) -> None:
        super().purge(key=key, body=body, patch=patch)
        marker = f"{self.prefix}/kopf-managed"
        metadata = patch.get("metadata") or {}
        if list(metadata.get("annotations") or {}) == [marker]:
            del metadata["annotations"]
            if not metadata:
                del patch["metadata"]


def configure(settings: kopf.OperatorSettings, diffbase: MemoryDiffBaseStorage | None = None) -> None:
    """kopf settings: the diff-base in memory (``diffbase``, a new one if not given), the progress of retried
    handlers in turnout.dev annotations (no status.kopf), warnings-only kopf Events, no scanning."""
    settings.persistence.progress_storage = LeanProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = diffbase or MemoryDiffBaseStorage(
        prefix=GROUP, key=DIFFBASE_ANNOTATION.split("/", 1)[1]
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"  # never added: no handler needs one
    settings.posting.level = logging.WARNING
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    # After its own patch kopf waits this long for the watch to show that version before it acts on older
    # ones; its 5 s default is too short under a burst (1,000 deployments at once: ~20% of them were handled
    # twice, each with one more patch). The echo normally arrives within milliseconds; this is only a bound.
    settings.persistence.consistency_timeout = 30.0
    # kopf keeps one worker (a task, its queue, logger and the last raw event) per object for this long after
    # the object's last event; its 5 s default kept every object of a burst's worker alive at once (at 1,000
    # deployments ~20 MiB of the operator's peak RSS, never returned). A worker still waits for the echo of
    # its own patch (consistency_timeout) before it exits; a later event starts a new one.
    settings.queueing.idle_timeout = 1.0


def build_registry(
    controller: Controller,
    *,
    watching: tuple[bool, bool],
    discovery_interval: float,
    scaler: ScaleLoop | None = None,
    demand: DemandLoop | None = None,
    keys: KeyPublisher | None = None,
    tune: Callable[[kopf.OperatorSettings], None] | None = None,
    restart: asyncio.Event | None = None,
    stopping: asyncio.Event | None = None,
) -> kopf.OperatorRegistry:
    """All handlers of one kopf run.

    ``watching``: whether this run watches LeaderWorkerSets and InferencePools (API discovery just before it
    starts, :meth:`Controller.watched_apis`). Every ``discovery_interval`` seconds discovery is asked again;
    when what is served differs, ``restart`` is set: kopf's watches are fixed at its start, so
    :func:`~turnout.controller.run.operate` starts it again. ``scaler``: the built-in autoscaler's loop, run
    beside the handlers, and ``demand`` the LoRA adapters' demand sampling (it shares the scaler's scrape);
    ``keys``: the API key digests' publisher, run beside them too and poked by every ModelDeployment event.
    ``tune`` may adjust kopf's settings after :func:`configure` (tests shorten timeouts). ``stopping`` is set
    when kopf runs its cleanup, for whatever reason it stops (asked to, or a watch failed).
    """
    registry = kopf.OperatorRegistry()
    md_resource = (GROUP, VERSION, PLURAL)
    diffbase = MemoryDiffBaseStorage(prefix=GROUP, key=DIFFBASE_ANNOTATION.split("/", 1)[1])
    discovery: list[asyncio.Task[None]] = []

    async def _rediscover() -> None:
        while True:
            await asyncio.sleep(discovery_interval)
            features, pools = await controller.discover()
            controller.set_features(features)
            controller.set_pools_served(pools)
            if controller.watched_apis() != watching and restart is not None:
                logger.info("served APIs changed (LeaderWorkerSet, InferencePool: %s → %s): restarting the watches",
                            watching, controller.watched_apis())
                restart.set()
                return

    @kopf.on.login(registry=registry)
    async def _login(**_: Any) -> kopf.AiohttpSession:
        # kopf's requests carry the same credentials as ours; the session renews the token itself.
        creds = controller.client.credentials
        return kopf.AiohttpSession(server=creds.server, aiohttp_session=aiohttp_session(creds),
                                   default_namespace=creds.namespace)

    @kopf.on.startup(registry=registry)
    async def _startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
        configure(settings, diffbase)
        if tune is not None:
            tune(settings)
        controller.bind({k: kwargs[k] for k in INDEX_IDS if k in kwargs})
        # operate() asked API discovery just before this start and registered the watches to match.
        discovery.append(asyncio.create_task(_rediscover(), name="turnout-discovery"))
        if scaler is not None:
            discovery.append(asyncio.create_task(scaler.run(controller.autoscaled), name="turnout-autoscaler"))
        if demand is not None:
            discovery.append(asyncio.create_task(demand.run(), name="turnout-adapter-demand"))
        if keys is not None:
            discovery.append(asyncio.create_task(keys.run(), name="turnout-key-publisher"))
        controller.queue.start()

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        if stopping is not None:
            stopping.set()
        for task in discovery:
            task.cancel()
        await asyncio.gather(*discovery, return_exceptions=True)
        await controller.queue.stop()
        if scaler is not None:
            await scaler.close()
        await controller.adapters.close()
        await controller.client.close()

    # ----- indexes (kopf fills them before any other handler runs) -----
    # Index and event handlers are coroutines: kopf runs plain functions in a thread pool, one hop per
    # watch event (most of the operator's CPU at scale), and they touch the controller's loop-bound state.

    @kopf.index(*md_resource, id=IDX_MDS, registry=registry)
    async def _mds(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[Any, Any]:
        # kopf's diff-base annotation is a copy of the whole spec: kopf reads its own, we never do.
        return {(namespace, name): lean_copy(body, drop_annotations=(DIFFBASE_ANNOTATION,))}

    @kopf.index("v1", "nodes", id=IDX_NODES, registry=registry)
    async def _nodes(body: kopf.Body, name: str, **_: Any) -> dict[Any, Any]:
        return {name: compact_node(body)}

    watched = dict(zip(_OPTIONAL, watching, strict=True))
    for kind, (group, version, plural) in _CHILD_RESOURCES.items():
        if not watched.get(kind, True):
            continue

        async def _child(body: kopf.Body, namespace: str, **_: Any) -> dict[Any, Any]:
            owner = owner_name(body, KIND)
            return {(namespace, owner): compact_child(body)} if owner else {}

        kopf.index(group, version, plural, id=IDX_CHILDREN[kind], labels=MANAGED, registry=registry)(_child)

        async def _child_event(body: kopf.Body, type: str | None, _kind: str = kind, **_: Any) -> None:
            controller.child_event(_kind, body, type, owner_name(body, KIND))

        kopf.on.event(group, version, plural, id=f"{IDX_CHILDREN[kind]}_events", labels=MANAGED,
                      registry=registry)(_child_event)

    @kopf.index("v1", "pods", id=IDX_PODS, labels=MANAGED, registry=registry)
    async def _pods(body: kopf.Body, namespace: str, labels: Any, **_: Any) -> dict[Any, Any]:
        instance = labels.get(INSTANCE_LABEL)
        return {(namespace, instance): compact_pod(body)} if instance else {}

    @kopf.on.event("v1", "pods", id="turnout_pod_events", labels=MANAGED, registry=registry)
    async def _pod_event(namespace: str, labels: Any, **_: Any) -> None:
        controller.pod_changed(namespace, labels.get(INSTANCE_LABEL))

    @kopf.on.event("v1", "nodes", id="turnout_node_events", registry=registry)
    async def _node_event(**_: Any) -> None:
        controller.nodes_changed()

    @kopf.on.event(*md_resource, id="turnout_md_events", registry=registry)
    async def _md_event(type: str, body: kopf.Body, namespace: str, name: str, uid: str, **_: Any) -> None:
        if keys is not None:
            keys.poke(body)
        if type == "DELETED":
            diffbase.forget(uid)
            controller.forget(namespace, name, uid)
            if scaler is not None:
                scaler.forget(uid)

    # ----- the ModelDeployment itself -----

    async def _handle(body: kopf.Body, trigger: str, retry: int) -> None:
        try:
            await controller.reconcile(body, trigger=trigger)
        except TransientApiError as exc:
            delay = exc.retry_after or min(60.0, controller.retry_base * 2.0 ** min(retry, 6))
            raise kopf.TemporaryError(f"API not available, retrying: {exc}", delay=delay) from exc

    @kopf.on.create(*md_resource, id="create", registry=registry)
    async def _create(body: kopf.Body, retry: int, **_: Any) -> None:
        await _handle(body, "create", retry)

    @kopf.on.update(*md_resource, id="update", registry=registry)
    async def _update(body: kopf.Body, diff: Any, retry: int, **_: Any) -> None:
        await _handle(body, _trigger(diff), retry)

    @kopf.on.resume(*md_resource, id="resume", registry=registry)
    async def _resume(body: kopf.Body, retry: int, **_: Any) -> None:
        await _handle(body, "resume", retry)

    return registry
