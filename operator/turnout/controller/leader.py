"""The operator's leader election: kopf runs only while this replica holds the Lease.

Why a Lease loop of our own (:mod:`turnout.kube.lease`) and not kopf's peering: peering is not an
election. Every kopf replica keeps its watches and pauses its handlers while a peer of higher priority
is alive; same-priority peers both run, and the peering objects are kopf's own CRDs (KopfPeering) that
the cluster must install. A coordination Lease with client-go's semantics is what controller-runtime
operators use, needs only ``get``/``create``/``update`` on Leases in the operator's namespace, and makes
failover bounded (the lease duration plus one retry period). A leader that loses the Lease exits
non-zero, so the pod restarts as a standby (client-go's convention): nothing of a stale leader's state
survives into the next term.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path

from aiohttp import web

from turnout.kube.client import KubeClient
from turnout.kube.lease import LeaderElector, LeaseSettings

log = logging.getLogger("turnout.controller")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def own_namespace(given: str | None) -> str | None:
    """The namespace of the Lease: the one given, else the pod's (its service account's), else None."""
    if given:
        return given
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


def settings(name: str, namespace: str, identity: str | None, *, lease_duration: float = 15.0,
             renew_deadline: float = 10.0, retry_period: float = 2.0) -> LeaseSettings:
    """The Lease (client-go's default timings); the identity defaults to the host name (the pod's name in a pod).
    ValueError when the timings do not satisfy lease duration > renew deadline > retry period > 0."""
    return LeaseSettings(name=name, namespace=namespace, identity=identity or socket.gethostname(),
                         lease_duration=lease_duration, renew_deadline=renew_deadline, retry_period=retry_period)


async def _standby_health(host: str, port: int) -> web.AppRunner | None:
    """``/healthz`` while waiting for the Lease (kopf serves it once leading): a standby is alive."""
    if not port:
        return None

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"standby": True})

    app = web.Application()
    app.router.add_get("/healthz", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner


async def wait_to_lead(client: KubeClient, lease: LeaseSettings, *, host: str, health_port: int,
                       stop_flag: asyncio.Event | None = None) -> LeaderElector | None:
    """Block until this replica holds the Lease; the elector, or None when ``stop_flag`` was set first."""
    elector = LeaderElector(client, lease)
    runner = await _standby_health(host, health_port)
    log.info("leader election: %s waits for lease %s/%s", lease.identity, lease.namespace, lease.name)
    try:
        acquire = asyncio.create_task(elector.acquire())
        waits: set[asyncio.Future[object]] = {acquire}
        stop = asyncio.create_task(stop_flag.wait()) if stop_flag is not None else None
        if stop is not None:
            waits.add(stop)
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*waits, return_exceptions=True)
        if not acquire.done() or acquire.cancelled():
            return None
        acquire.result()
    finally:
        if runner is not None:
            await runner.cleanup()
    log.info("leader election: %s leads (lease %s/%s)", lease.identity, lease.namespace, lease.name)
    return elector
