"""Operator metrics (prometheus-client) and the HTTP server that exposes them on ``/metrics``."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest


class _DeploymentsCollector:
    """``turnout_operator_deployments{engine,accelerator,phase}``, counted at scrape time."""

    def __init__(self, source: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        self._source = source

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "turnout_operator_deployments",
            "ModelDeployments by chosen engine, accelerator and phase.",
            labels=["engine", "accelerator", "phase"],
        )
        tally: Tally[tuple[str, str, str]] = Tally()
        for status in self._source():
            tally[(str(status.get("engine") or "none"), str(status.get("accelerator") or "none"),
                   str(status.get("phase") or "Unknown"))] += 1
        for labels, count in sorted(tally.items()):
            family.add_metric(list(labels), count)
        yield family


class Replicas(NamedTuple):
    """One ModelDeployment's replicas: asked for (``spec.replicas``) and ready (``status.readyReplicas``)."""

    namespace: str
    deployment: str
    model: str  # the served model name, the gateway's ``model`` label
    desired: int
    ready: int


class _ReplicasCollector:
    """``turnout_operator_replicas_desired`` and ``turnout_operator_replicas_ready`` per ModelDeployment."""

    LABELS = ("namespace", "deployment", "model")

    def __init__(self, source: Callable[[], Iterable[Replicas]]) -> None:
        self._source = source

    def collect(self) -> Iterable[GaugeMetricFamily]:
        desired = GaugeMetricFamily("turnout_operator_replicas_desired",
                                    "Replicas a ModelDeployment asks for (spec.replicas).", labels=self.LABELS)
        ready = GaugeMetricFamily("turnout_operator_replicas_ready",
                                  "Ready replicas of a ModelDeployment (status.readyReplicas).", labels=self.LABELS)
        for r in sorted(self._source()):
            desired.add_metric([r.namespace, r.deployment, r.model], r.desired)
            ready.add_metric([r.namespace, r.deployment, r.model], r.ready)
        yield desired
        yield ready


class Metrics:
    """One registry per operator instance (tests run several)."""

    def __init__(self, statuses: Callable[[], Iterable[Mapping[str, Any]]] = list,
                 replicas: Callable[[], Iterable[Replicas]] = list) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "turnout_operator_reconciles", "Reconciles of ModelDeployments by result.",
            ["result"], registry=self.registry,
        )
        self.duration = Histogram(
            "turnout_operator_reconcile_duration_seconds", "Time one reconcile took.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=self.registry,
        )
        self.api_errors = Counter(
            "turnout_operator_api_errors", "Failed Kubernetes API requests by method and HTTP status "
            "(0: not reached).", ["method", "code"], registry=self.registry,
        )
        self.writes = Counter(
            "turnout_operator_writes", "Writes to the API by kind (apply, delete, status, event, scale).",
            ["kind"], registry=self.registry,
        )
        self.scrape_failures = Counter(
            "turnout_operator_autoscaler_scrape_failures", "Load scrapes of the autoscaler that failed, by source "
            "(gateway, pod): no answer within the timeout, an HTTP error, or no Prometheus text.",
            ["source"], registry=self.registry,
        )
        self.adapter_loads = Counter(
            "turnout_operator_adapter_loads", "LoRA adapters loaded into pods' engines, by reason (spec: placing "
            "spec.adapters; demand: requests at the gateways, docs/lora.md \"Placement under load\").",
            ["reason"], registry=self.registry,
        )
        self.adapter_unloads = Counter(
            "turnout_operator_adapter_unloads", "LoRA adapters unloaded from pods' engines, by reason (spec: gone "
            "from spec.adapters or its uri changed; demand: least recently used, unloaded for another).",
            ["reason"], registry=self.registry,
        )
        self.registry.register(_DeploymentsCollector(statuses))  # type: ignore[arg-type]
        self.registry.register(_ReplicasCollector(replicas))  # type: ignore[arg-type]

    def api_error(self, method: str, code: int) -> None:
        self.api_errors.labels(method=method, code=str(code)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def serve(metrics: Metrics, host: str, port: int) -> web.AppRunner:
    """Serve ``/metrics`` on host:port in the running loop; the caller cleans the runner up."""

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
