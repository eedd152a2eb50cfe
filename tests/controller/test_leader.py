"""Leader election on a coordination.k8s.io Lease (turnout.kube.lease) against the in-memory API, and the
operator gated by it (--leader-elect): one candidate leads, a standby takes over within the lease duration
when the leader stops renewing, a graceful stop hands over at once, and a leader that loses the Lease stops.

Timings are client-go's scaled down 7.5x (2 s lease, 1.5 s renew deadline, 0.25 s retry); the bound a
standby must meet is lease duration + 2 retry periods (it may see the last renewal one retry late and
tries once per retry period).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import pytest
from ctlharness import MDS, NS, cpu_node, gguf_md

from figures import record
from kubeconfigs import credentials_for
from turnout.config import OperatorConfig
from turnout.controller import Options, new_controller, operate
from turnout.controller.rbac import LEASE_RULES
from turnout.kube.client import KubeClient
from turnout.kube.lease import LeaderElector, LeadershipLost, LeaseSettings
from turnout.kube.rbac import covers

LEASES = ("coordination.k8s.io", "v1", "leases")
NODES = ("", "v1", "nodes")
DEPLOYMENTS = ("apps", "v1", "deployments")
DURATION, DEADLINE, RETRY = 2.0, 1.5, 0.25
BOUND = DURATION + 2 * RETRY


def settings(identity: str) -> LeaseSettings:
    return LeaseSettings(name="turnout-operator", namespace=NS, identity=identity, lease_duration=DURATION,
                         renew_deadline=DEADLINE, retry_period=RETRY)


async def client_of(fake) -> KubeClient:
    return KubeClient(await credentials_for(str(fake.url).rstrip("/")))


def holder(fake) -> str | None:
    lease = fake.get(LEASES, NS, "turnout-operator")
    return None if lease is None else lease["spec"].get("holderIdentity")


async def test_one_of_two_leads_and_the_standby_takes_over_within_the_lease_duration(fake) -> None:
    a_client, b_client = await client_of(fake), await client_of(fake)
    a, b = LeaderElector(a_client, settings("pod-a")), LeaderElector(b_client, settings("pod-b"))
    try:
        await a.acquire()
        holding = asyncio.create_task(a.hold())
        standby = asyncio.create_task(b.acquire())
        await asyncio.sleep(DURATION * 1.5)  # longer than a lease: renewals keep the standby out
        assert not standby.done() and holder(fake) == "pod-a" and a.is_leader and not b.is_leader
        holding.cancel()  # the leader stops renewing (a crash: no release)
        stopped = time.monotonic()
        with contextlib.suppress(asyncio.CancelledError):
            await holding
        await asyncio.wait_for(standby, BOUND + 1)
        failover = time.monotonic() - stopped
        lease = fake.get(LEASES, NS, "turnout-operator")["spec"]
        assert lease["holderIdentity"] == "pod-b" and lease["leaseTransitions"] == 1
        assert lease["leaseDurationSeconds"] == 2
        # The bound, plus a second for a loaded machine (each try is two HTTP round trips to the emulator).
        assert DURATION - 2 * RETRY <= failover <= BOUND + 1.0, failover
        record("lease_failover_unit", {"seconds": round(failover, 2), "lease_duration": DURATION,
                                       "bound": BOUND})
    finally:
        await a_client.close()
        await b_client.close()


async def test_two_racing_for_a_free_lease_elect_exactly_one(fake) -> None:
    clients = [await client_of(fake) for _ in range(4)]
    electors = [LeaderElector(c, settings(f"pod-{i}")) for i, c in enumerate(clients)]
    try:
        for _ in range(5):
            won = await asyncio.gather(*(e.try_acquire_or_renew() for e in electors))
            assert sum(won) == 1
            assert [e.is_leader for e in electors].count(True) == 1
    finally:
        for c in clients:
            await c.close()


async def test_a_released_lease_is_taken_at_the_next_try(fake) -> None:
    a_client, b_client = await client_of(fake), await client_of(fake)
    a, b = LeaderElector(a_client, settings("pod-a")), LeaderElector(b_client, settings("pod-b"))
    try:
        await a.acquire()
        standby = asyncio.create_task(b.acquire())
        await asyncio.sleep(RETRY * 2)
        await a.release()
        released = time.monotonic()
        await asyncio.wait_for(standby, RETRY * 4)
        assert time.monotonic() - released <= RETRY * 2 and holder(fake) == "pod-b"
    finally:
        await a_client.close()
        await b_client.close()


async def test_a_leader_that_cannot_renew_gives_up_within_the_renew_deadline(fake) -> None:
    client = await client_of(fake)
    a = LeaderElector(client, settings("pod-a"))
    try:
        await a.acquire()
        fake.fail("PUT", "leases", 503, times=1000)
        started = time.monotonic()
        with pytest.raises(LeadershipLost):
            await asyncio.wait_for(a.hold(), DEADLINE + 2 * RETRY + 1)
        assert time.monotonic() - started <= DEADLINE + 2 * RETRY + 1.0
        assert not a.is_leader
    finally:
        await client.close()


async def test_a_leader_whose_lease_another_took_stops_at_once(fake) -> None:
    client = await client_of(fake)
    a = LeaderElector(client, settings("pod-a"))
    try:
        await a.acquire()
        await fake.modify(LEASES, (NS, "turnout-operator"),
                          lambda o: {**o, "spec": {**o["spec"], "holderIdentity": "pod-z"}}, pure=True)
        with pytest.raises(LeadershipLost):
            await asyncio.wait_for(a.hold(), RETRY * 4)
    finally:
        await client.close()


def test_timings_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="lease duration > renew deadline > retry period"):
        LeaseSettings(name="l", namespace=NS, identity="a", lease_duration=10, renew_deadline=10)


async def test_the_lease_calls_are_what_the_declared_namespaced_rules_grant(fake) -> None:
    client = await client_of(fake)
    since = len(fake.requests)
    a = LeaderElector(client, settings("pod-a"))
    try:
        await a.acquire()
        await a.try_acquire_or_renew()
        await a.release()
    finally:
        await client.close()
    verbs = {"GET": "get", "POST": "create", "PUT": "update"}
    seen = {verbs[str(r.method.value).upper()] for r in list(fake.requests)[since:] if r.resource is not None
            and r.resource.plural == "leases"}
    assert seen == {"get", "create", "update"}
    for verb in seen:
        assert covers("coordination.k8s.io", "leases", verb, LEASE_RULES) is not None
    assert all(not r.cluster_scoped for r in LEASE_RULES)


# ----- the operator gated by the Lease ---------------------------------------------------------------------


def elect_options(identity: str) -> Options:
    return Options(all_namespaces=True, metrics_port=0, health_port=0, leader_elect=True, lease_namespace=NS,
                   lease_identity=identity, lease_duration=DURATION, renew_deadline=DEADLINE, retry_period=RETRY)


async def _operator(fake, identity: str, stop: asyncio.Event) -> asyncio.Task[None]:
    credentials = await credentials_for(str(fake.url).rstrip("/"))
    controller = new_controller(elect_options(identity), OperatorConfig(), credentials, retry_base=0.1)
    return asyncio.create_task(operate(elect_options(identity), controller, stop_flag=stop))


async def test_the_standby_operator_reconciles_only_after_the_leader_stops(fake) -> None:
    await fake.put_object(NODES, cpu_node())
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    a = await _operator(fake, "pod-a", stop_a)
    await fake.wait_for(lambda: holder(fake) == "pod-a", timeout=10, what="pod-a to lead")
    b = await _operator(fake, "pod-b", stop_b)
    try:
        await fake.put_object(MDS, gguf_md("first"))
        await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "first"), what="the leader's reconcile")
        await asyncio.sleep(DURATION)
        assert holder(fake) == "pod-a" and not b.done()
        # The leader stops gracefully: it releases the Lease and the standby reconciles the next object.
        stop_a.set()
        fake.close_watches()
        await asyncio.wait_for(a, 20)
        stopped = time.monotonic()
        await fake.put_object(MDS, gguf_md("second"))
        await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "second"), timeout=20, what="the standby's reconcile")
        handover = time.monotonic() - stopped
        assert holder(fake) == "pod-b"
        record("operator_handover_unit", {"seconds": round(handover, 2), "graceful": True})
    finally:
        for stop, task in ((stop_a, a), (stop_b, b)):
            stop.set()
            fake.close_watches()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 20)


async def test_an_operator_that_loses_the_lease_stops_with_leadership_lost(fake) -> None:
    stop = asyncio.Event()
    task = await _operator(fake, "pod-a", stop)
    try:
        await fake.wait_for(lambda: holder(fake) == "pod-a", timeout=10, what="pod-a to lead")
        await asyncio.sleep(RETRY * 2)
        await fake.modify(LEASES, (NS, "turnout-operator"),
                          lambda o: {**o, "spec": {**o["spec"], "holderIdentity": "pod-z"}}, pure=True)
        fake.close_watches()
        with pytest.raises(LeadershipLost):
            await asyncio.wait_for(task, 20)
        assert holder(fake) == "pod-z"  # it did not release what it no longer holds
    finally:
        stop.set()
        if not task.done():
            task.cancel()


@pytest.mark.skipif(os.name != "posix", reason="needs a POSIX host")
def test_leader_elect_options_are_checked_at_start() -> None:
    from turnout.controller.run import run_operator

    assert run_operator(Options(all_namespaces=True, leader_elect=True, lease_namespace=NS,
                                renew_deadline=20)) == 2
