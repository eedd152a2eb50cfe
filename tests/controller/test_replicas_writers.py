"""Who writes spec.replicas (docs/autoscaling.md, "Who writes replicas"): the user, the autoscaler's loop while
spec.autoscaling is set, and the gateway's wake (0 → 1). The conflicts between them, tick by tick, against the API
emulator: the loop (its narrow interface: a client, the metrics, an Event sink), the gateway's real wake, and the
user's scale through the same subresource."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ctlharness import MDS, NS, MetricsServer, gguf_md

from kubeconfigs import credentials_for
from turnout.controller.metrics import Metrics
from turnout.controller.scaleloop import ScaleLoop, Settings
from turnout.gateway.kubesource import KubeSource
from turnout.gateway.registry import Model
from turnout.kube import KubeClient

NAME = "qwen-gguf"
SCALE = f"/apis/turnout.dev/v1alpha1/namespaces/{NS}/modeldeployments/{NAME}/scale"
DELAY = 1  # scaleDownDelaySeconds


class Cluster:
    """The loop wired as the operator wires it, the gateway's source, and what a user does with kubectl."""

    def __init__(self, fake: Any, client: KubeClient, gateway: MetricsServer) -> None:
        self.fake, self.client, self.gateway = fake, client, gateway
        self.events: list[tuple[str, str]] = []
        # The test drives the ticks (interval 0: every tick scrapes afresh); the mean is of the last sample only.
        self.loop = ScaleLoop(Settings(gateway_urls=(gateway.url,), interval=0.0, window=0.001, timeout=1.0),
                              client=client, metrics=Metrics(), post_event=self._post)

    async def _post(self, md: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((reason, message))

    async def create(self, replicas: int, *, min_replicas: int = 0, max_replicas: int = 4) -> None:
        md = gguf_md(NAME, replicas=replicas)
        md["spec"]["autoscaling"] = {"minReplicas": min_replicas, "maxReplicas": max_replicas,
                                     "targetInFlightPerReplica": 2, "scaleDownDelaySeconds": DELAY}
        await self.fake.put_object(MDS, md)

    def seen(self) -> dict[str, Any]:
        """The ModelDeployment as the loop's watch shows it now (a copy: later writes leave it stale)."""
        return self.fake.get(MDS, NS, NAME)

    @property
    def replicas(self) -> int:
        return self.seen()["spec"]["replicas"]

    async def kubectl_scale(self, replicas: int) -> None:
        await self.client.merge_patch(SCALE, {"spec": {"replicas": replicas}})

    async def gateway_wakes(self) -> None:
        await KubeSource(self.client, [NS]).wake(Model(NS, NAME, "qwen-small", replicas=0))

    async def status_written(self) -> None:
        """The reconcile writes the status: the object's resourceVersion moves, spec.replicas does not."""

        def fn(obj: dict[str, Any]) -> dict[str, Any]:
            obj["status"] = {**(obj.get("status") or {}), "readyReplicas": (obj.get("status") or {}).get(
                "readyReplicas", 0) + 1}
            return obj

        await self.fake.modify(MDS, (NS, NAME), fn, status_only=True)

    async def settle(self, in_flight: float = 0) -> None:
        """Ticks under this load until the history spans the delay (a scale down may go all the way)."""
        self.gateway.gateway(NS, NAME, in_flight=in_flight)
        await self.loop.tick(self.seen())
        await asyncio.sleep(DELAY + 0.1)


@pytest.fixture
async def cluster(fake) -> AsyncIterator[Cluster]:
    gateway = await MetricsServer().start()
    client = KubeClient(await credentials_for(str(fake.url).rstrip("/")))
    cluster = Cluster(fake, client, gateway)
    try:
        yield cluster
    finally:
        await cluster.loop.close()
        await client.close()
        await gateway.stop()


async def test_a_wake_between_the_decision_to_zero_and_its_write_stands(cluster):
    await cluster.create(replicas=1)
    await cluster.settle(in_flight=0)
    decided_on = cluster.seen()  # 1 replica, no load: the loop decides zero
    # Meanwhile it was scaled to zero by hand and a request arrived: the gateway wakes it.
    await cluster.kubectl_scale(0)
    await cluster.gateway_wakes()
    assert cluster.replicas == 1
    assert await cluster.loop.tick(decided_on) is None  # 409: the scale to zero carried its resourceVersion
    assert cluster.replicas == 1 and cluster.events == []
    # The next tick sees the wake-up with its request queued in the gateway: 1 stays.
    cluster.gateway.gateway(NS, NAME, queued=1)
    assert await cluster.loop.tick(cluster.seen()) is None and cluster.replicas == 1


async def test_a_wake_the_loop_sees_is_held_for_the_delay_then_zero_again(cluster):
    await cluster.create(replicas=1)
    await cluster.settle(in_flight=0)
    assert await cluster.loop.tick(cluster.seen()) == 0  # no load for the delay: to zero
    await cluster.gateway_wakes()
    assert cluster.replicas == 1
    # The request is not in the gateway's metrics yet: the wake-up counts as a recommendation of 1 all the same.
    assert await cluster.loop.tick(cluster.seen()) is None and cluster.replicas == 1
    await asyncio.sleep(DELAY + 0.1)
    assert await cluster.loop.tick(cluster.seen()) == 0 and cluster.replicas == 0


async def test_a_users_scale_up_while_the_loop_scales_down_is_not_overwritten_then_held(cluster):
    await cluster.create(replicas=4, max_replicas=8)
    await cluster.settle(in_flight=2)  # 2 in flight, 2 per replica: 1 recommended for the whole delay
    decided_on = cluster.seen()
    await cluster.kubectl_scale(6)  # the user, while the loop decides 4 → 1
    assert await cluster.loop.tick(decided_on) is None  # refused: the scale down carried its resourceVersion
    assert cluster.replicas == 6
    # Seen now: someone else's scale up, held like one of the loop's for the delay, then down to the load.
    assert await cluster.loop.tick(cluster.seen()) is None and cluster.replicas == 6
    await asyncio.sleep(DELAY + 0.1)
    assert await cluster.loop.tick(cluster.seen()) == 1 and cluster.replicas == 1


async def test_a_refusal_for_a_status_write_is_decided_again_at_the_next_tick(cluster):
    """A 409 that no scale caused (the reconcile wrote the status) delays the scale down one tick, not the delay."""
    await cluster.create(replicas=3)
    await cluster.settle(in_flight=0)
    decided_on = cluster.seen()
    await cluster.status_written()
    assert await cluster.loop.tick(decided_on) is None and cluster.replicas == 3
    assert await cluster.loop.tick(cluster.seen()) == 0 and cluster.replicas == 0


async def test_a_scale_up_is_written_though_the_object_moved_on(cluster):
    """Up never undoes a wake-up; a status write between the decision and the write does not delay it."""
    await cluster.create(replicas=1)
    decided_on = cluster.seen()
    await cluster.status_written()
    cluster.gateway.gateway(NS, NAME, in_flight=6)
    assert await cluster.loop.tick(decided_on) == 3 and cluster.replicas == 3
    assert [reason for reason, _ in cluster.events] == ["Autoscaled"]


async def test_a_user_edit_outside_the_bounds_is_corrected_at_the_next_tick(cluster):
    await cluster.create(replicas=2, min_replicas=2, max_replicas=3)
    await cluster.settle(in_flight=4)
    await cluster.kubectl_scale(8)  # above maxReplicas: down to 3 at once, no delay
    assert await cluster.loop.tick(cluster.seen()) == 3 and cluster.replicas == 3
    await cluster.kubectl_scale(0)  # below minReplicas: up to 2 at once
    assert await cluster.loop.tick(cluster.seen()) == 2 and cluster.replicas == 2
    assert [m for r, m in cluster.events if r == "Autoscaled"] == [
        "scaled 8 → 3: maxReplicas is 3", "scaled 0 → 2: minReplicas is 2; average in-flight 4.0 over 0.001 s, "
        "target 2 per replica"]


def scale_requests(cluster: Cluster, since: int) -> list[str]:
    """The methods of the requests to the scale subresource since request ``since``, in order."""
    return [str(r.method.value).upper() for r in cluster.fake.requests[since:] if r.subresource == "scale"]


async def test_a_wake_at_zero_scales_to_one(cluster):
    await cluster.create(replicas=0)
    first = len(cluster.fake.requests)
    await cluster.gateway_wakes()
    assert cluster.replicas == 1
    assert scale_requests(cluster, first) == ["GET", "PATCH"]


async def test_a_wake_from_a_stale_view_never_scales_down(cluster):
    """The gateway's watch still shows 0, the user has scaled to 3 since: the wake reads 3 and writes nothing."""
    await cluster.create(replicas=0)
    await cluster.kubectl_scale(3)
    first = len(cluster.fake.requests)
    await cluster.gateway_wakes()  # with the model as the watch showed it: replicas 0
    assert cluster.replicas == 3
    assert scale_requests(cluster, first) == ["GET"]


async def test_a_scale_up_between_the_wakes_read_and_its_write_stands(cluster):
    """The autoscaler (or the user) scales to 3 after the wake read 0: its patch is refused (409), it reads 3, stops."""
    await cluster.create(replicas=0)
    gate = cluster.fake.hold("PATCH", "modeldeployments")
    first = len(cluster.fake.requests)
    wake = asyncio.ensure_future(cluster.gateway_wakes())
    await cluster.fake.wait_for(lambda: cluster.fake.held == 1, timeout=10, what="the wake's patch")

    def scaled_up(obj: dict[str, Any]) -> dict[str, Any]:
        obj["spec"] = {**obj["spec"], "replicas": 3}
        return obj

    await cluster.fake.modify(MDS, (NS, NAME), scaled_up)
    gate.set()
    await asyncio.wait_for(wake, 10)  # no error
    assert cluster.replicas == 3
    assert scale_requests(cluster, first) == ["GET", "PATCH", "GET"]


async def test_two_concurrent_wakes_scale_to_one_without_an_error(cluster):
    """Two gateway replicas both read 0: one patch wins, the other is refused (409), reads 1 and stops quietly."""
    await cluster.create(replicas=0)
    gate = cluster.fake.hold("PATCH", "modeldeployments")
    first = len(cluster.fake.requests)
    wakes = [asyncio.ensure_future(cluster.gateway_wakes()) for _ in range(2)]
    await cluster.fake.wait_for(lambda: cluster.fake.held == 2, timeout=10, what="both wakes' patches")
    gate.set()
    assert await asyncio.wait_for(asyncio.gather(*wakes), 10) == [None, None]
    assert cluster.replicas == 1
    assert sorted(scale_requests(cluster, first)) == ["GET", "GET", "GET", "PATCH", "PATCH"]
