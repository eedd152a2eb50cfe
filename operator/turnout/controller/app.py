"""kopf wiring: handlers, indexes, settings, and the operator's entry points.

Every handler is registered on a fresh :class:`kopf.OperatorRegistry` per
operator instance (no module-level global handlers), so tests can run, stop
and restart operators in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

from turnout.api import GROUP, KIND, PLURAL, VERSION
from turnout.config import ConfigError, OperatorConfig, load_config
from turnout.controller import metrics as metrics_mod
from turnout.controller.autoscaler import Autoscaler, Settings, parse_service
from turnout.controller.reconcile import (
    IDX_CHILDREN,
    IDX_MDS,
    IDX_NODES,
    IDX_PODS,
    INDEX_IDS,
    Controller,
)
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
from turnout.kube import Credentials, CredentialsError, KubeClient, TransientApiError, load_credentials
from turnout.kube.session import aiohttp_session
from turnout.render import INFERENCE_POOL_API_VERSION

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


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf settings: turnout.dev annotations (no status.kopf), warnings-only kopf Events, no scanning."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = LeanDiffBaseStorage(
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
    tune: Callable[[kopf.OperatorSettings], None] | None = None,
    restart: asyncio.Event | None = None,
) -> kopf.OperatorRegistry:
    """All handlers of one operator instance.

    ``restart`` is set when API discovery finds that LeaderWorkerSet is served now and was not when kopf
    started (or the reverse): kopf's watches are fixed at its start, so :func:`operate` starts it again.
    """
    registry = kopf.OperatorRegistry()
    md_resource = (GROUP, VERSION, PLURAL)
    discovery: list[asyncio.Task[None]] = []

    async def _rediscover(watching: tuple[bool, bool]) -> None:
        while True:
            await asyncio.sleep(controller.discovery_interval)
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
        creds = controller.credentials
        if creds is None:
            raise kopf.LoginError("no Kubernetes credentials were loaded")
        return kopf.AiohttpSession(server=creds.server, aiohttp_session=aiohttp_session(creds),
                                   default_namespace=creds.namespace)

    @kopf.on.startup(registry=registry)
    async def _startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
        configure(settings)
        if tune is not None:
            tune(settings)
        if controller.credentials is None:
            raise kopf.PermanentError("no Kubernetes credentials were loaded")
        client = KubeClient(controller.credentials, on_error=controller.metrics.api_error,
                            user_agent="turnout-operator")
        controller.bind({k: kwargs[k] for k in INDEX_IDS if k in kwargs}, client)
        # operate() asked API discovery just before this start and registered the watches to match.
        discovery.append(asyncio.create_task(_rediscover((controller.watching_lws, controller.watching_pools)),
                                             name="turnout-discovery"))
        if controller.autoscaler is not None:
            discovery.append(asyncio.create_task(controller.autoscaler.run(controller.autoscaled),
                                                 name="turnout-autoscaler"))
        controller.queue.start()

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        for task in discovery:
            task.cancel()
        await asyncio.gather(*discovery, return_exceptions=True)
        await controller.queue.stop()
        if controller.autoscaler is not None:
            await controller.autoscaler.close()
        if controller.client is not None:
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

    watched = dict(zip(_OPTIONAL, (controller.watching_lws, controller.watching_pools), strict=True))
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
    async def _md_event(type: str, namespace: str, name: str, uid: str, **_: Any) -> None:
        if type == "DELETED":
            controller.forget(namespace, name, uid)

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


@dataclass
class Options:
    """What ``turnout operator`` accepts."""

    namespaces: list[str] = field(default_factory=list)
    all_namespaces: bool = False
    config_path: str | None = None
    metrics_port: int = 8080
    health_port: int = 8081
    bind_address: str = "0.0.0.0"
    peering: str | None = None  # a KopfPeering name for several replicas; standalone when None
    verbose: bool = False
    kubeconfig: str | None = None  # else $KUBECONFIG, the pod's service account, ~/.kube/config
    context: str | None = None  # a kubeconfig context other than the current one
    discovery_interval: float = 60.0  # seconds between API discovery checks (LeaderWorkerSet served?)
    gateway_metrics_urls: list[str] = field(default_factory=list)  # gateways' /metrics for the autoscaler
    gateway_service: str | None = None  # NAMESPACE/NAME: scrape every ready endpoint of the gateway Service
    autoscale_interval: float = 15.0  # seconds between the autoscaler's load samples
    autoscale_window: float = 60.0  # seconds of samples it averages
    scrape_timeout: float = 2.0  # seconds per metrics scrape
    inference_pool: bool = False  # render an InferencePool per ModelDeployment (when the cluster serves them)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The operator's command-line options (shared by ``turnout operator`` and ``python -m``)."""
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (default)")
    scope.add_argument("-n", "--namespace", dest="namespaces", action="append", default=[], metavar="NS",
                       help="watch this namespace only (repeatable; exact names)")
    parser.add_argument("-c", "--config", dest="config_path", default=None, metavar="FILE",
                        help="operator config YAML (images per engine and accelerator, autoEngines, ...)")
    parser.add_argument("--metrics-port", type=int, default=8080, metavar="PORT",
                        help="port of /metrics (default 8080; 0: off)")
    parser.add_argument("--health-port", type=int, default=8081, metavar="PORT",
                        help="port of /healthz (default 8081; 0: off)")
    parser.add_argument("--bind-address", default="0.0.0.0", metavar="ADDR",
                        help="address of the metrics and health servers (default 0.0.0.0)")
    parser.add_argument("--peering", default=None, metavar="NAME",
                        help="KopfPeering object name for active/standby replicas (default: standalone)")
    parser.add_argument("--kubeconfig", default=None, metavar="FILE",
                        help="kubeconfig to use (default: $KUBECONFIG, else the pod's service account, "
                             "else ~/.kube/config)")
    parser.add_argument("--context", default=None, metavar="NAME", help="kubeconfig context (default: current)")
    parser.add_argument("--discovery-interval", type=float, default=60.0, metavar="SECONDS",
                        help="how often to ask API discovery whether LeaderWorkerSet and InferencePool are served "
                             "(default: 60)")
    scale = parser.add_argument_group("autoscaling (ModelDeployments with spec.autoscaling)")
    scale.add_argument("--gateway-metrics-url", dest="gateway_metrics_urls", action="append", default=[],
                       metavar="URL", help="a turnout gateway's /metrics to read in-flight and queued requests "
                       "from (repeatable)")
    scale.add_argument("--gateway-service", default=None, metavar="NAMESPACE/NAME",
                       help="scrape /metrics of every ready endpoint of this gateway Service (its EndpointSlices)")
    scale.add_argument("--autoscale-interval", type=float, default=15.0, metavar="SECONDS",
                       help="seconds between load samples (default: 15)")
    scale.add_argument("--autoscale-window", type=float, default=60.0, metavar="SECONDS",
                       help="seconds of samples the load is averaged over (default: 60)")
    scale.add_argument("--scrape-timeout", type=float, default=2.0, metavar="SECONDS",
                       help="timeout of one metrics scrape (default: 2)")
    parser.add_argument("--inference-pool", action="store_true",
                        help="render a Gateway API Inference Extension InferencePool per ModelDeployment "
                             "(when the cluster serves inference.networking.k8s.io/v1)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def options_from(ns: argparse.Namespace) -> Options:
    return Options(
        namespaces=list(ns.namespaces or []),
        all_namespaces=bool(ns.all_namespaces) or not ns.namespaces,
        config_path=ns.config_path,
        metrics_port=ns.metrics_port,
        health_port=ns.health_port,
        bind_address=ns.bind_address,
        peering=ns.peering,
        verbose=ns.verbose,
        kubeconfig=ns.kubeconfig,
        context=ns.context,
        discovery_interval=ns.discovery_interval,
        gateway_metrics_urls=list(ns.gateway_metrics_urls or []),
        gateway_service=ns.gateway_service,
        autoscale_interval=ns.autoscale_interval,
        autoscale_window=ns.autoscale_window,
        scrape_timeout=ns.scrape_timeout,
        inference_pool=ns.inference_pool,
    )


def autoscaler_settings(options: Options) -> Settings:
    """The autoscaler's settings from the options; ValueError with the reason when one is wrong."""
    if options.autoscale_interval <= 0 or options.autoscale_window <= 0 or options.scrape_timeout <= 0:
        raise ValueError("--autoscale-interval, --autoscale-window and --scrape-timeout must be positive")
    return Settings(
        gateway_urls=tuple(options.gateway_metrics_urls),
        gateway_service=parse_service(options.gateway_service) if options.gateway_service else None,
        interval=options.autoscale_interval,
        window=options.autoscale_window,
        timeout=options.scrape_timeout,
    )


async def operate(
    options: Options,
    config: OperatorConfig,
    *,
    credentials: Credentials | None = None,
    controller: Controller | None = None,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    tune: Callable[[kopf.OperatorSettings], None] | None = None,
) -> None:
    """Run the operator in the current event loop until ``stop_flag`` is set (or a signal arrives).

    ``credentials`` default to :func:`~turnout.kube.load_credentials` for the options' kubeconfig and
    context; ``tune`` may adjust kopf's settings after :func:`configure` (tests shorten timeouts).
    """
    controller = controller or Controller(config)
    controller.discovery_interval = options.discovery_interval
    controller.inference_pool = options.inference_pool
    # One loop per operator, in the kopf task set: a standby of --peering would scale too (kopf pauses only its
    # handlers), so the built-in autoscaler runs in a standalone operator only.
    controller.autoscaler = Autoscaler(controller, autoscaler_settings(options)) if options.peering is None else None
    if options.peering is not None:
        logger.warning("--peering: the built-in autoscaler (spec.autoscaling) is off; use an HPA or KEDA")
    controller.credentials = credentials or await load_credentials(options.kubeconfig, context=options.context)
    runner = None
    if options.metrics_port:
        runner = await metrics_mod.serve(controller.metrics, options.bind_address, options.metrics_port)
    liveness = f"http://{options.bind_address}:{options.health_port}/healthz" if options.health_port else None
    restart = asyncio.Event()
    try:
        while True:
            restart.clear()
            await _discover(controller, options)
            inner_stop = asyncio.Event()

            async def _relay(flag: asyncio.Event = inner_stop) -> None:
                waits = [asyncio.create_task(restart.wait())]
                if stop_flag is not None:
                    waits.append(asyncio.create_task(stop_flag.wait()))
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
                flag.set()

            relay = asyncio.create_task(_relay())
            try:
                await kopf.operator(
                    registry=build_registry(controller, tune=tune, restart=restart),
                    clusterwide=options.all_namespaces,
                    namespaces=[] if options.all_namespaces else options.namespaces,
                    standalone=options.peering is None,
                    peering_name=options.peering,
                    liveness_endpoint=liveness,
                    stop_flag=inner_stop,
                    ready_flag=ready_flag,
                )
            except Exception:
                # kopf stops on a watch that answers 404: the LeaderWorkerSet CRD was deleted before our next
                # discovery noticed. Start again without that watch; any other failure is the operator's.
                watching = (controller.watching_lws, controller.watching_pools)
                if (stop_flag is not None and stop_flag.is_set()) or not any(watching):
                    raise
                async with KubeClient(controller.credentials, user_agent="turnout-operator") as client:
                    features, pools = await controller.discover(client)
                served = (features.leader_worker_set, pools)
                if all(s for s, w in zip(served, watching, strict=True) if w):
                    raise
                logger.info("LeaderWorkerSet or InferencePool is no longer served: restarting the watches")
                restart.set()
            finally:
                relay.cancel()
            if not restart.is_set() or (stop_flag is not None and stop_flag.is_set()):
                break
    finally:
        if runner is not None:
            await runner.cleanup()


async def _discover(controller: Controller, options: Options) -> None:
    """Ask API discovery which optional APIs are served, so that kopf starts with the watches to match."""
    assert controller.credentials is not None
    async with KubeClient(controller.credentials, on_error=controller.metrics.api_error,
                          user_agent="turnout-operator") as client:
        features, pools = await controller.discover(client)
    controller.set_features(features)
    controller.set_pools_served(pools)
    controller.watching_lws, controller.watching_pools = controller.watched_apis()
    if options.inference_pool and not pools:
        logger.warning("--inference-pool: %s inferencepools are not served (install the Gateway API Inference "
                       "Extension's CRDs); no InferencePool is rendered until they are", INFERENCE_POOL_API_VERSION)


def run_operator(options: Options) -> int:
    """Validate the config and credentials, then run the operator until it is stopped.

    Returns the exit status: 0 after a clean stop (SIGINT/SIGTERM), 2 for a config or
    credentials that cannot be used (one line on stderr), 1 when kopf stopped on an error.
    """
    logging.basicConfig(
        level=logging.DEBUG if options.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not options.verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        config = load_config(options.config_path)
    except ConfigError as exc:
        print(f"turnout operator: {exc}", file=sys.stderr)
        return 2
    if not options.all_namespaces and not options.namespaces:
        print("turnout operator: give --all-namespaces or at least one --namespace", file=sys.stderr)
        return 2
    try:
        autoscaler_settings(options)
    except ValueError as exc:
        print(f"turnout operator: {exc}", file=sys.stderr)
        return 2

    async def _run() -> None:
        credentials = await load_credentials(options.kubeconfig, context=options.context)
        logger.info("connecting to %s with the %s", credentials.server, credentials.source)
        await operate(options, config, credentials=credentials)

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_run())
    except CredentialsError as exc:
        print(f"turnout operator: cannot log in to Kubernetes: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # kopf reports start-up failures as exceptions; say it in one line
        cause = exc.__cause__ or exc
        print(f"turnout operator: stopped: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m turnout.controller``: the same options as ``turnout operator``."""
    parser = argparse.ArgumentParser(prog="turnout operator", description="Run the turnout operator.")
    add_arguments(parser)
    return run_operator(options_from(parser.parse_args(argv)))


