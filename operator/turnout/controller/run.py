"""The operator's run: options → controller → kopf, restarted in-process when the served APIs change.

Entry points: :func:`run_operator` (what ``turnout operator`` calls) and :func:`main`
(``python -m turnout.controller``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import kopf

from turnout.config import ConfigError, OperatorConfig, load_config
from turnout.controller import leader
from turnout.controller import metrics as metrics_mod
from turnout.controller.adapterdemand import DemandLoop
from turnout.controller.handlers import build_registry
from turnout.controller.keypublish import KeyPublisher
from turnout.controller.options import Options, add_arguments, options_from
from turnout.controller.reconcile import Controller
from turnout.controller.scaleloop import ScaleLoop, Settings, parse_service
from turnout.kube import Credentials, CredentialsError, load_credentials
from turnout.kube.lease import LeadershipLost, LeaseSettings
from turnout.render import INFERENCE_POOL_API_VERSION

logger = logging.getLogger("turnout.controller")


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


def lease_settings(options: Options) -> LeaseSettings:
    """The Lease of ``--leader-elect``; ValueError when its namespace is unknown (outside a pod, none given)."""
    namespace = leader.own_namespace(options.lease_namespace)
    if namespace is None:
        raise ValueError("--leader-elect outside a pod needs --leader-election-namespace")
    return leader.settings(options.lease_name, namespace, options.lease_identity,
                           lease_duration=options.lease_duration, renew_deadline=options.renew_deadline,
                           retry_period=options.retry_period)


def new_controller(options: Options, config: OperatorConfig, credentials: Credentials, **tuning: Any) -> Controller:
    """The controller the options ask for, logged in with ``credentials``; ``tuning``: the Controller's
    keyword arguments (workers, retry_base, concurrency)."""
    return Controller(config, credentials, inference_pool=options.inference_pool, **tuning)


async def operate(
    options: Options,
    controller: Controller,
    *,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    tune: Callable[[kopf.OperatorSettings], None] | None = None,
) -> None:
    """Run the operator in the current event loop until ``stop_flag`` is set (or a signal arrives).

    ``controller``: from :func:`new_controller`; its client is closed on return. ``tune`` may adjust kopf's
    settings after :func:`~turnout.controller.handlers.configure` (tests shorten timeouts).
    """
    # One loop per operator, in the kopf task set: a standby of --peering would scale too (kopf pauses only its
    # handlers), so the built-in autoscaler runs in a standalone operator only. With --leader-elect kopf (and the
    # loop in its task set) runs only on the leader.
    scaler = demand = None
    if options.peering is None:
        scaler = ScaleLoop(autoscaler_settings(options), client=controller.client, metrics=controller.metrics,
                           post_event=controller.event)
        if scaler.settings.has_gateway:  # LoRA adapters placed by their requests at the gateways (docs/lora.md)
            demand = DemandLoop(scaler.gateway_models, controller.demand, interval=scaler.settings.interval,
                                deployments=controller.deployments, pods=controller.pods_of,
                                reconcile=controller.queue.add)
    else:
        logger.warning("--peering: the built-in autoscaler (spec.autoscaling) is off; use an HPA or KEDA")
    # Idempotent applies of the same digests: every replica may publish, the leader or not.
    keys = KeyPublisher(controller.client, controller.deployments, controller.event, interval=options.key_interval)
    runner = None
    if options.metrics_port:
        runner = await metrics_mod.serve(controller.metrics, options.bind_address, options.metrics_port)
    liveness = f"http://{options.bind_address}:{options.health_port}/healthz" if options.health_port else None
    restart = asyncio.Event()
    holding: asyncio.Task[None] | None = None
    elector = None
    try:
        if options.leader_elect:
            elector = await leader.wait_to_lead(controller.client, lease_settings(options), host=options.bind_address,
                                                health_port=options.health_port, stop_flag=stop_flag)
            if elector is None:
                return
            holding = asyncio.create_task(elector.hold())
        while True:
            restart.clear()
            watching = await _discover(controller, options)
            inner_stop = asyncio.Event()

            async def _relay(flag: asyncio.Event = inner_stop) -> None:
                waits: list[asyncio.Future[Any]] = [asyncio.create_task(restart.wait())]
                if holding is not None:
                    waits.append(asyncio.ensure_future(asyncio.shield(holding)))
                if stop_flag is not None:
                    waits.append(asyncio.create_task(stop_flag.wait()))
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
                flag.set()

            relay = asyncio.create_task(_relay())
            stopping = asyncio.Event()
            try:
                error = await _run_kopf(kopf.operator(
                    registry=build_registry(controller, watching=watching, scaler=scaler, demand=demand, keys=keys,
                                            tune=tune, restart=restart, stopping=stopping,
                                            discovery_interval=options.discovery_interval),
                    clusterwide=options.all_namespaces,
                    namespaces=[] if options.all_namespaces else options.namespaces,
                    standalone=options.peering is None,
                    peering_name=options.peering,
                    liveness_endpoint=liveness,
                    stop_flag=inner_stop,
                    ready_flag=ready_flag,
                ), stopping)
            finally:
                relay.cancel()
            if isinstance(error, KopfStuck) and inner_stop.is_set():
                error = None  # we asked it to stop: what it left ends with its streams
            if error is not None:
                # kopf stops on a watch that answers 404: the LeaderWorkerSet (or InferencePool) CRD was deleted
                # before our discovery noticed. Start again without that watch; any other failure is the operator's.
                if (stop_flag is not None and stop_flag.is_set()) or not any(watching) \
                        or not await _watched_api_went_away(controller, watching):
                    raise error
                logger.info("LeaderWorkerSet or InferencePool is no longer served: restarting the watches")
                restart.set()
            if holding is not None and holding.done():
                holding.result()  # LeadershipLost: the caller exits non-zero and the pod restarts as a standby
            if not restart.is_set() or (stop_flag is not None and stop_flag.is_set()):
                break
    finally:
        if holding is not None:
            lost = holding.done() and not holding.cancelled() and holding.exception() is not None
            holding.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeadershipLost):
                await holding
            if elector is not None and not lost:
                await elector.release()
        await controller.adapters.close()
        await controller.client.close()
        if runner is not None:
            await runner.cleanup()


class KopfStuck(RuntimeError):
    """kopf began to stop (it ran its cleanup) and did not end within :data:`KOPF_STOP_GRACE` seconds."""


#: Seconds kopf may take to end once it ran its cleanup. Its teardown can wait on a watch stream that no
#: cancellation reaches (kopf 1.45's request-cancel callback fails outside a task) until the API server ends it,
#: up to the watch's timeout (300 s): an operator that waited would neither restart its watches nor exit.
KOPF_STOP_GRACE = 10.0


async def _run_kopf(run: Coroutine[Any, Any, None], stopping: asyncio.Event) -> BaseException | None:
    """Run kopf until it ends; its error, or None after a clean stop. Once ``stopping`` is set (kopf's cleanup
    ran), kopf gets :data:`KOPF_STOP_GRACE` seconds to end, then it is cancelled and :class:`KopfStuck` returned
    (the tasks it left end with their streams)."""
    task = asyncio.create_task(run, name="turnout-kopf")
    ending = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({task, ending}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await asyncio.wait({task}, timeout=KOPF_STOP_GRACE)
        if not task.done():
            logger.warning("kopf did not end %.0f s after its cleanup: cancelling it", KOPF_STOP_GRACE)
            task.cancel()
            await asyncio.wait({task}, timeout=KOPF_STOP_GRACE)
            return KopfStuck(f"kopf did not end {KOPF_STOP_GRACE:.0f} s after its cleanup")
    finally:
        ending.cancel()
        if not task.done():  # we are cancelled ourselves: so is kopf
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if task.cancelled() else task.exception()


async def _watched_api_went_away(controller: Controller, watching: tuple[bool, bool], *,
                                 settle: float = 10.0, step: float = 0.5) -> bool:
    """kopf stopped on an error: is an optional API it watched (LeaderWorkerSet, InferencePool) gone? A watch
    answers 404 as soon as the CRD's storage goes, while discovery may list the API a moment longer: ask for up
    to ``settle`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settle
    while True:
        features, pools = await controller.discover()
        served = (features.leader_worker_set, pools)
        if not all(s for s, w in zip(served, watching, strict=True) if w):
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(step)


async def _discover(controller: Controller, options: Options) -> tuple[bool, bool]:
    """Ask API discovery which optional APIs are served; what kopf is to watch (LeaderWorkerSet, InferencePool)."""
    features, pools = await controller.discover()
    controller.set_features(features)
    controller.set_pools_served(pools)
    if options.inference_pool and not pools:
        logger.warning("--inference-pool: %s inferencepools are not served (install the Gateway API Inference "
                       "Extension's CRDs); no InferencePool is rendered until they are", INFERENCE_POOL_API_VERSION)
    return controller.watched_apis()


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
        if options.key_interval <= 0:
            raise ValueError("--key-refresh-interval must be positive")
        if options.leader_elect:
            if options.peering is not None:
                raise ValueError("--leader-elect and --peering exclude each other")
            lease_settings(options)
    except ValueError as exc:
        print(f"turnout operator: {exc}", file=sys.stderr)
        return 2

    async def _run() -> None:
        credentials = await load_credentials(options.kubeconfig, context=options.context)
        logger.info("connecting to %s with the %s", credentials.server, credentials.source)
        await operate(options, new_controller(options, config, credentials))

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


