"""kopf wiring: settings, indexes and thin handlers that call the :class:`~turnout.controller.reconcile.Controller`.

Every handler is registered on a fresh :class:`kopf.OperatorRegistry` per kopf run (no module-level global
handlers), so tests can run, stop and restart operators in one process, and a restart can change the watches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import kopf

from turnout.api import GROUP, KIND, PLURAL, VERSION
from turnout.controller.adapterdemand import DemandLoop
from turnout.controller.handled import LEGACY_DIFFBASE
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
from turnout.kube.session import aiohttp_session

logger = logging.getLogger("turnout.controller")

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


class NoDiffBaseStorage(kopf.DiffBaseStorage):
    """No diff-base: kopf builds one (a deep copy of the whole object, ``managedFields`` and all) for every
    event of every watched kind, whether or not a handler needs it; only changing handlers do, and there are
    none (the reconciles run on the controller's own queue), so it builds, fetches and stores nothing."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: kopf.Body) -> Any:
        return None

    def store(self, *, body: kopf.Body, patch: Any, essence: Any) -> None:
        return None


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf settings: warnings-only kopf Events, no scanning, the watches' timeouts, idle workers let go.

    kopf only watches (indexes and event handlers): the ModelDeployments' reconciles run on the controller's
    own work queue, so kopf keeps no diff-base and no progress, and writes nothing to the objects.
    """
    settings.persistence.diffbase_storage = NoDiffBaseStorage()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)  # no handler keeps any
    settings.persistence.finalizer = f"{GROUP}/finalizer"  # never added: no handler needs one
    settings.posting.level = logging.WARNING
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    # kopf keeps one worker (a task, its queue, logger and the last raw event) per object for this long after
    # the object's last event; its 5 s default kept every object of a burst's worker alive at once (at 1,000
    # deployments ~20 MiB of the operator's peak RSS, never returned). A later event starts a new one.
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
        configure(settings)
        if tune is not None:
            tune(settings)
        controller.bind({k: kwargs[k] for k in INDEX_IDS if k in kwargs})
        controller.watches_started()
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
        # An older operator's kopf diff-base annotation is a copy of the whole spec: nobody reads it.
        return {(namespace, name): lean_copy(body, drop_annotations=(LEGACY_DIFFBASE,))}

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
    async def _md_event(type: str | None, body: kopf.Body, uid: str, **_: Any) -> None:
        # The reconciles themselves run on the controller's queue (see turnout.controller.handled).
        if keys is not None:
            keys.poke(body)
        if type == "DELETED" and scaler is not None:
            scaler.forget(uid)
        controller.md_event(type, body)

    return registry
