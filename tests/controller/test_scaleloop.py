"""The built-in autoscaler against the API emulator: load from real HTTP servers serving Prometheus text, replicas
written through the scale subresource, the Deployment following, and scale to zero and back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from ctlharness import (
    DEPLOYMENTS,
    MDS,
    NODES,
    NS,
    MetricsServer,
    OperatorRun,
    cond,
    cpu_node,
    events_of,
    gguf_md,
    mark_rollout,
    put_endpoint_slice,
)

from turnout.controller import Options
from turnout.controller.run import autoscaler_settings
from turnout.controller.scaleloop import gateway_load, gateway_models, ready_endpoints, shim_in_flight
from turnout.kube import TransientApiError

NAME = "qwen-gguf"


def _md(min_replicas: int = 0, max_replicas: int = 5, target: float = 2, delay: int = 1) -> dict:
    md = gguf_md(NAME)
    md["spec"]["autoscaling"] = {"minReplicas": min_replicas, "maxReplicas": max_replicas,
                                 "targetInFlightPerReplica": target, "scaleDownDelaySeconds": delay}
    return md


def _replicas(fake) -> int | None:
    md = fake.get(MDS, NS, NAME)
    return md["spec"].get("replicas") if md else None


def _options(**kw) -> Options:
    return Options(all_namespaces=True, metrics_port=0, health_port=0, autoscale_interval=0.2,
                   autoscale_window=0.6, scrape_timeout=1.0, **kw)


@pytest.fixture
async def gateway() -> AsyncIterator[MetricsServer]:
    server = await MetricsServer().start()
    yield server
    await server.stop()


@pytest.fixture
async def pod() -> AsyncIterator[MetricsServer]:
    server = await MetricsServer().start()
    yield server
    await server.stop()


async def test_scales_up_under_gateway_load_down_after_the_delay_and_to_zero_and_back(fake, gateway):
    await fake.put_object(NODES, cpu_node())
    run = OperatorRun(fake, options=_options(gateway_metrics_urls=[gateway.url]))
    controller = await run.start()
    try:
        gateway.gateway(NS, NAME, in_flight=7)
        await fake.put_object(MDS, _md())
        # 7 in flight, 2 per replica: ceil(3.5) = 4, written through /scale; the Deployment follows.
        await fake.wait_for(lambda: _replicas(fake) == 4, what="scaled to 4")
        await fake.wait_for(lambda: (fake.get(DEPLOYMENTS, NS, NAME) or {}).get("spec", {}).get("replicas") == 4)
        scaled = await fake.wait_for(lambda: [e for e in events_of(fake, NAME) if e["reason"] == "Autoscaled"])
        assert scaled and scaled[0]["message"].startswith("scaled 1 → 4: average in-flight 7.0 over 0.6 s, target 2")
        assert scaled[0]["action"] == "Scale" and scaled[0]["type"] == "Normal"
        scale_writes = [r for r in fake.requests if r.subresource == "scale"]
        assert {str(r.method.value).upper() for r in scale_writes} == {"PATCH"}
        assert len(scale_writes) == len(scaled)  # written only when it changes

        # Less load: down to ceil(3 / 2) = 2, but not before scaleDownDelaySeconds (1 s) has passed.
        gateway.gateway(NS, NAME, in_flight=3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await fake.wait_for(lambda: _replicas(fake) == 2, what="scaled down to 2")
        assert loop.time() - started >= 1.0

        # No load: to zero (minReplicas 0) after the delay; the status says ScaledToZero, nothing is Degraded.
        gateway.gateway(NS, NAME, in_flight=0)
        await fake.wait_for(lambda: _replicas(fake) == 0, what="scaled to zero")
        await fake.wait_for(lambda: (fake.get(DEPLOYMENTS, NS, NAME) or {}).get("spec", {}).get("replicas") == 0)
        await mark_rollout(fake, NAME, ready=0)
        await fake.wait_for(lambda: (fake.get(MDS, NS, NAME).get("status") or {}).get("phase") == "ScaledToZero")
        md = fake.get(MDS, NS, NAME)
        assert (cond(md, "Available")["status"], cond(md, "Available")["reason"]) == ("False", "ScaledToZero")
        assert cond(md, "Degraded")["status"] == "False"
        assert md["status"]["replicas"] == 0 and md["status"]["selector"] == "turnout.dev/deployment=qwen-gguf"

        # A request queued in the gateway wakes it.
        gateway.gateway(NS, NAME, queued=1)
        await fake.wait_for(lambda: _replicas(fake) == 1, what="woken by a queued request")
        await fake.wait_for(lambda: any("queued" in e["message"] for e in events_of(fake, NAME)
                                        if e["reason"] == "Autoscaled"), what="the wake-up's Event")
        assert controller.metrics.scrape_failures.labels(source="gateway")._value.get() == 0
    finally:
        await run.stop()


async def test_pods_in_flight_from_the_services_endpoint_slices_and_the_gateway_service(fake, gateway, pod):
    await fake.put_object(NODES, cpu_node())
    await fake.put_object(("", "v1", "namespaces"), {"metadata": {"name": "turnout-system"}})
    # The gateway found through its Service's EndpointSlices (a not-ready endpoint is never scraped).
    await put_endpoint_slice(fake, "turnout-gateway", [gateway.port], namespace="turnout-system")
    await put_endpoint_slice(fake, "turnout-gateway", [1], namespace="turnout-system", ready=False, name="unready")
    run = OperatorRun(fake, options=_options(gateway_service="turnout-system/turnout-gateway"))
    controller = await run.start()
    try:
        gateway.gateway(NS, NAME, in_flight=1)
        pod.shim(9)
        await fake.put_object(MDS, _md(min_replicas=1, max_replicas=3))
        await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, NAME))
        assert _replicas(fake) == 1  # the gateway's 1 in flight: 1 replica
        # The model pod answers with 9 in flight (requests that did not come through the gateway): the larger
        # count wins, ceil(9 / 2) = 5, clamped to maxReplicas 3.
        await put_endpoint_slice(fake, NAME, [pod.port])
        await fake.wait_for(lambda: _replicas(fake) == 3, what="scaled on the pods' in-flight")
        assert pod.scrapes and gateway.scrapes
        # A pod that stops answering is counted and gives no sample of its own; nothing scales on a guess.
        pod.status = 500
        before = controller.metrics.scrape_failures.labels(source="pod")._value.get()
        await fake.wait_for(lambda: controller.metrics.scrape_failures.labels(source="pod")._value.get() > before)
        assert _replicas(fake) == 3
    finally:
        await run.stop()


async def test_without_a_gateway_it_never_scales_to_zero(fake, pod):
    await fake.put_object(NODES, cpu_node())
    run = OperatorRun(fake, options=_options())
    await run.start()
    try:
        pod.shim(4)
        await fake.put_object(MDS, _md(min_replicas=0))
        await put_endpoint_slice(fake, NAME, [pod.port])
        await fake.wait_for(lambda: _replicas(fake) == 2)
        pod.shim(0)
        await fake.wait_for(lambda: _replicas(fake) == 1, what="scaled down to 1")
        await asyncio.sleep(2.0)  # twice the delay: nothing could wake it at 0, so it stays at 1
        assert _replicas(fake) == 1
    finally:
        await run.stop()


async def test_kubectl_scale_reads_the_scale_subresource(fake):
    """What an HPA or KEDA reads: spec.replicas, status.replicas and the pod selector, through /scale."""
    await fake.put_object(NODES, cpu_node())
    run = OperatorRun(fake)
    await run.start()
    try:
        await fake.put_object(MDS, gguf_md(NAME, replicas=2))
        await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, NAME))
        await mark_rollout(fake, NAME, ready=2)
        await fake.wait_for(lambda: (fake.get(MDS, NS, NAME).get("status") or {}).get("phase") == "Ready")
        scale = await run.controller.client.get(f"/apis/turnout.dev/v1alpha1/namespaces/{NS}/modeldeployments/"
                                                f"{NAME}/scale")
        assert scale["spec"] == {"replicas": 2}
        assert scale["status"] == {"replicas": 2, "selector": "turnout.dev/deployment=qwen-gguf"}
        path = f"/apis/turnout.dev/v1alpha1/namespaces/{NS}/modeldeployments/{NAME}/scale"
        stale = scale["metadata"]["resourceVersion"]
        await run.controller.client.merge_patch(path, {"spec": {"replicas": 0}})
        # A resourceVersion in the patch is a precondition (the autoscaler's scale to zero carries one).
        with pytest.raises(TransientApiError) as refused:
            await run.controller.client.merge_patch(path, {"spec": {"replicas": 3},
                                                           "metadata": {"resourceVersion": stale}})
        assert refused.value.status == 409
        await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, NAME)["spec"]["replicas"] == 0)
        await mark_rollout(fake, NAME, ready=0)
        await fake.wait_for(lambda: (fake.get(MDS, NS, NAME).get("status") or {}).get("phase") == "ScaledToZero")
    finally:
        await run.stop()


def test_settings_from_the_options() -> None:
    settings = autoscaler_settings(Options(gateway_metrics_urls=["http://gw:8080/metrics"],
                                           gateway_service="turnout-system/turnout-gateway"))
    assert settings.gateway_service == ("turnout-system", "turnout-gateway") and settings.has_gateway
    assert not autoscaler_settings(Options()).has_gateway
    with pytest.raises(ValueError, match="NAMESPACE/NAME"):
        autoscaler_settings(Options(gateway_service="just-a-name"))
    with pytest.raises(ValueError, match="positive"):
        autoscaler_settings(Options(autoscale_interval=0))


def test_ready_endpoints_of_endpoint_slices() -> None:
    """As the EndpointSlice API says: ready false is skipped, ready absent counts as ready; the named port."""
    slices = [
        {"ports": [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8000}],
         "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                       {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
                       {"addresses": ["10.0.0.3"]}]},
        {"ports": [{"name": "http", "port": 8000}], "endpoints": [{"addresses": ["fd00::5"], "conditions": {}}]},
        {"ports": [], "endpoints": [{"addresses": ["10.0.0.9"]}]},  # no port: nothing to scrape
    ]
    assert ready_endpoints(slices, "http") == ["10.0.0.1:8000", "10.0.0.3:8000", "[fd00::5]:8000"]


def test_gateway_and_shim_metrics_are_read_with_the_prometheus_parser() -> None:
    server = MetricsServer()
    server.gateway(NS, NAME, in_flight=3, queued=2)
    other = MetricsServer()
    other.gateway(NS, NAME, in_flight=1)
    assert gateway_load([server.text, other.text]) == {(NS, NAME): (6.0, 2.0)}
    # Per model too (an adapter is a model of the gateway): what the adapters' placement reads.
    assert gateway_models([server.text, other.text]) == {(NS, NAME, NAME): (4.0, 2.0)}
    server.shim(5)
    assert shim_in_flight(server.text) == 5.0
    with pytest.raises(ValueError):
        shim_in_flight("this is {not prometheus text")


async def test_forbidden_gateway_endpoint_slices_are_said_once(fake, caplog):
    """RBAC that does not reach the gateway's namespace is a misconfiguration, not a passing failure: a warning,
    once, naming the way out."""
    await fake.put_object(NODES, cpu_node())
    fake.fail("GET", "endpointslices", 403, times=1000)
    run = OperatorRun(fake, options=_options(gateway_service="turnout-system/turnout-gateway"))
    await run.start()
    try:
        caplog.set_level("WARNING", logger="turnout.controller.autoscaler")
        await fake.put_object(MDS, _md(min_replicas=1))
        await fake.wait_for(lambda: sum(1 for r in fake.requests if r.resource is not None
                                        and r.resource.plural == "endpointslices") >= 6, what="a few ticks")
    finally:
        await run.stop()
    said = [r.getMessage() for r in caplog.records if "turnout-system/turnout-gateway (forbidden)" in r.getMessage()]
    assert len(said) == 1 and "--gateway-metrics-url" in said[0]
    assert _replicas(fake) == 1  # no sample: nothing scaled
