"""The built-in autoscaler's loop: scrape the load, ask :mod:`~turnout.controller.scalepolicy`, scale.

Every ``interval`` seconds, for each ModelDeployment with ``spec.autoscaling`` (one loop, started with the
operator; with ``--leader-elect`` only on the leader, which alone runs kopf; off with ``--peering``, where a
standby would scale too):

- **observe**: the gateways' ``/metrics`` (``--gateway-metrics-url``, and every ready endpoint of the
  ``--gateway-service`` Service's EndpointSlices; scraped once per tick for all deployments):
  ``turnout_gateway_in_flight`` + ``turnout_gateway_queue_length`` of the deployment; and the shim
  ``/metrics`` of each ready endpoint of the deployment's own Service: ``turnout_requests_in_flight``.
  A scrape that fails (short timeout) gives nothing: it is logged at debug and counted in
  ``turnout_operator_autoscaler_scrape_failures_total``; when every source fails there is no sample.
- **decide**: :func:`turnout.controller.scalepolicy.decide` (pure).
- **act**: a merge patch of ``spec.replicas`` through the ``scale`` subresource, only when it changes,
  and an ``Autoscaled`` Event saying why. A scale down (to zero included) carries the resourceVersion it
  was decided on, so it never undoes a write it has not seen: the gateway's wake-up, a user's scale
  (409: decided again next tick, from what is there then). A scale up is written as is: it undoes no
  wake-up, and a status write in between does not delay it.

Who writes ``spec.replicas`` (docs/autoscaling.md, "Who writes replicas"): the user, or this loop while
``spec.autoscaling`` is set; the gateway only wakes a deployment at zero (0 → 1); the reconcile never.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from turnout.api import GROUP, PLURAL, VERSION, AutoscalingSpec
from turnout.controller import scalepolicy
from turnout.controller.metrics import Metrics
from turnout.kube import ApiError, KubeClient
from turnout.kube.client import api_path
from turnout.render import child_name

logger = logging.getLogger("turnout.controller.autoscaler")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # on every EndpointSlice of a Service
ENDPOINT_SLICES = "discovery.k8s.io/v1"
GATEWAY_IN_FLIGHT = "turnout_gateway_in_flight"
GATEWAY_QUEUE = "turnout_gateway_queue_length"
SHIM_IN_FLIGHT = "turnout_requests_in_flight"


@dataclass(frozen=True)
class Settings:
    """What ``turnout operator`` was told about the load sources and the timing."""

    gateway_urls: tuple[str, ...] = ()  # --gateway-metrics-url
    gateway_service: tuple[str, str] | None = None  # --gateway-service NAMESPACE/NAME
    interval: float = 15.0  # --autoscale-interval: seconds between samples
    window: float = 60.0  # --autoscale-window: seconds of samples averaged
    timeout: float = 2.0  # --scrape-timeout: seconds per scrape

    @property
    def has_gateway(self) -> bool:
        """Whether something can wake a deployment at zero replicas (a gateway holds its requests)."""
        return bool(self.gateway_urls or self.gateway_service)


def parse_service(value: str) -> tuple[str, str]:
    """``NAMESPACE/NAME`` of ``--gateway-service``; ValueError when it is not that."""
    namespace, sep, name = value.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"--gateway-service {value!r}: expected NAMESPACE/NAME")
    return namespace, name


def ready_endpoints(slices: Iterable[Mapping[str, Any]], port_name: str | None = None) -> list[str]:
    """``host:port`` of every ready endpoint of a Service's EndpointSlices (IPv6 in brackets).

    ``ready`` absent counts as ready, as the EndpointSlice API says consumers should read it; ``port_name``
    picks the port (the first when it is None or not there).
    """
    out: list[str] = []
    for item in slices:
        ports = item.get("ports") or []
        port = next((p for p in ports if p.get("name") == port_name), ports[0] if ports else None)
        if port is None or port.get("port") is None:
            continue
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in (endpoint.get("addresses") or [])[:1]:  # all addresses of an endpoint are one pod
                host = f"[{address}]" if ":" in address else address
                out.append(f"{host}:{port['port']}")
    return sorted(set(out))


#: (namespace, deployment, model) -> (in flight, queued): the gateways' gauges, ``model`` being the served name
#: (the base model's, or an adapter's: docs/lora.md)
ModelLoad = dict[tuple[str, str, str], tuple[float, float]]


def gateway_models(texts: Iterable[str]) -> ModelLoad:
    """(namespace, deployment, model) -> (in flight, queued), summed over the gateways' metrics texts."""
    load: ModelLoad = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in (GATEWAY_IN_FLIGHT, GATEWAY_QUEUE):
                continue
            for sample in family.samples:
                labels = sample.labels
                key = (labels.get("namespace", ""), labels.get("deployment", ""), labels.get("model", ""))
                in_flight, queued = load.get(key, (0.0, 0.0))
                if family.name == GATEWAY_QUEUE:
                    queued += sample.value
                else:
                    in_flight += sample.value
                load[key] = (in_flight, queued)
    return load


def per_deployment(models: ModelLoad) -> dict[tuple[str, str], tuple[float, float]]:
    """(namespace, deployment) -> (in flight + queued, queued): every model of a deployment together."""
    load: dict[tuple[str, str], tuple[float, float]] = {}
    for (namespace, deployment, _), (in_flight, queued) in models.items():
        total, waiting = load.get((namespace, deployment), (0.0, 0.0))
        load[(namespace, deployment)] = (total + in_flight + queued, waiting + queued)
    return load


def gateway_load(texts: Iterable[str]) -> dict[tuple[str, str], tuple[float, float]]:
    """(namespace, deployment) -> (in flight + queued, queued), summed over the gateways' metrics texts."""
    return per_deployment(gateway_models(texts))


def shim_in_flight(text: str) -> float:
    """``turnout_requests_in_flight`` of one shim's metrics text (summed over its label sets)."""
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == SHIM_IN_FLIGHT
               for s in f.samples)


class EventSink(Protocol):
    """Posts an Event on a ModelDeployment, best effort (the operator's :meth:`Controller.event`)."""

    async def __call__(self, md: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...


class ScaleLoop:
    """The scrapes, the per-deployment history and the scale writes of one operator instance.

    What it needs of the operator, and no more: ``client`` (lists EndpointSlices, writes the ``scale``
    subresource), ``metrics`` (counts failed scrapes and scale writes) and ``post_event`` (the ``Autoscaled``
    Event). The operator forgets a deleted deployment here through :meth:`forget`.
    """

    def __init__(self, settings: Settings, *, client: KubeClient, metrics: Metrics, post_event: EventSink) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.post_event = post_event
        self._histories: dict[str, scalepolicy.History] = {}  # ModelDeployment uid -> history
        # uid -> (the resourceVersion a scale was decided on, the replicas written): until the watch shows a
        # newer version, the replicas written are the current ones (no second write, no second Event).
        self._written: dict[str, tuple[str, int]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._gateway: tuple[float, ModelLoad | None] | None = None
        self._gateway_lock = asyncio.Lock()
        self._forbidden: set[tuple[str, str]] = set()  # Services whose EndpointSlices RBAC does not let us list

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def forget(self, uid: str | None) -> None:
        if uid:
            self._histories.pop(uid, None)
            self._written.pop(uid, None)

    # ----- observe ----------------------------------------------------------------------------

    async def _scrape(self, url: str, source: str) -> str | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout))
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    raise aiohttp.ClientResponseError(response.request_info, (), status=response.status,
                                                      message=response.reason or "")
                return await response.text()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, UnicodeDecodeError) as exc:
            logger.debug("scraping %s (%s) failed: %s", url, source, exc)
            self.metrics.scrape_failures.labels(source=source).inc()
            return None

    async def _scrape_all(self, urls: Sequence[str], source: str) -> list[str | None]:
        return list(await asyncio.gather(*(self._scrape(u, source) for u in urls)))

    async def _endpoints(self, namespace: str, service: str, port_name: str | None) -> list[str] | None:
        """Ready endpoints of a Service (its EndpointSlices); None when they cannot be listed."""
        path = api_path(ENDPOINT_SLICES, "endpointslices", namespace)
        try:
            found = await self.client.request(
                "GET", path, params={"labelSelector": f"{SERVICE_NAME_LABEL}={service}"}, timeout=10)
        except ApiError as exc:
            if exc.status == 403 and (namespace, service) not in self._forbidden:
                # Not a passing failure: RBAC (a namespaced install that does not watch this namespace). Said once.
                self._forbidden.add((namespace, service))
                logger.warning("cannot list the EndpointSlices of %s/%s (forbidden): its load is not seen; grant "
                               "endpointslices list in that namespace (for a gateway: watch it too, or use "
                               "--gateway-metrics-url)", namespace, service)
            logger.debug("listing the EndpointSlices of %s/%s failed: %s", namespace, service, exc)
            return None
        return ready_endpoints(found.get("items") or [], port_name)

    async def _gateway_load(self) -> dict[tuple[str, str], tuple[float, float]] | None:
        """The gateways' load per deployment; None when no gateway is configured or none answered."""
        models = await self.gateway_models()
        return per_deployment(models) if models is not None else None

    async def gateway_models(self) -> ModelLoad | None:
        """The gateways' load per deployment and model (an adapter is a model), scraped at most once per half
        interval for every deployment and every user (the autoscaler, the adapters' placement); None when no
        gateway is configured or none answered."""
        if not self.settings.has_gateway:
            return None
        async with self._gateway_lock:
            now = time.monotonic()
            if self._gateway is not None and now - self._gateway[0] < self.settings.interval / 2:
                return self._gateway[1]
            urls = list(self.settings.gateway_urls)
            if self.settings.gateway_service is not None:
                ns, name = self.settings.gateway_service
                urls += [f"http://{e}/metrics" for e in await self._endpoints(ns, name, "http") or []]
            load: ModelLoad | None = None
            for url, text in zip(urls, await self._scrape_all(urls, "gateway"), strict=True):
                parsed = self._parse(gateway_models, [text], url, "gateway") if text is not None else None
                if parsed is None:
                    continue
                load = load or {}
                for key, (in_flight, queued) in parsed.items():
                    before = load.get(key, (0.0, 0.0))
                    load[key] = (before[0] + in_flight, before[1] + queued)
            self._gateway = (now, load)
            return load

    def _parse(self, parse: Callable[[Any], Any], text: Any, url: str, source: str) -> Any:
        """``parse(text)``, or None (logged at debug and counted as a failed scrape) when it is no Prometheus text."""
        try:
            return parse(text)
        except ValueError as exc:
            logger.debug("cannot parse the metrics of %s (%s): %s", url, source, exc)
            self.metrics.scrape_failures.labels(source=source).inc()
            return None

    async def sample(self, namespace: str, name: str) -> scalepolicy.Sample | None:
        """One load sample of a deployment, or None when every source failed."""
        at = time.monotonic()
        gateways = await self._gateway_load()
        endpoints = await self._endpoints(namespace, child_name(name), "http")
        urls = [f"http://{e}/metrics" for e in endpoints or []]
        shim = [v for u, t in zip(urls, await self._scrape_all(urls, "pod"), strict=True) if t is not None
                and (v := self._parse(shim_in_flight, t, u, "pod")) is not None]
        answered = bool(shim) or gateways is not None
        expected = self.settings.has_gateway or endpoints is None or bool(endpoints)
        if expected and not answered:
            return None
        total, queued = (gateways or {}).get((namespace, name), (0.0, 0.0))
        return scalepolicy.Sample(at=at, load=max(total, sum(shim)), queued=queued)

    # ----- the loop ---------------------------------------------------------------------------

    async def run(self, deployments: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        """Every ``interval`` seconds, a tick for each deployment ``deployments()`` lists (until cancelled)."""
        loop = asyncio.get_running_loop()
        limit = asyncio.Semaphore(32)

        async def one(body: Mapping[str, Any]) -> None:
            async with limit:
                try:
                    await self.tick(body)
                except Exception:  # one deployment's failure never stops the loop
                    meta = body.get("metadata") or {}
                    logger.exception("autoscaling %s/%s failed", meta.get("namespace"), meta.get("name"))

        while True:
            started = loop.time()
            bodies = list(deployments())
            if bodies:
                await asyncio.gather(*(one(b) for b in bodies))
            await asyncio.sleep(max(0.0, self.settings.interval - (loop.time() - started)))

    # ----- the tick ---------------------------------------------------------------------------

    async def tick(self, body: Mapping[str, Any]) -> int | None:
        """Sample one deployment, decide, and scale it when the decision differs; the replicas written."""
        meta, spec = body.get("metadata") or {}, body.get("spec") or {}
        namespace, name, uid = meta.get("namespace") or "", meta.get("name") or "", meta.get("uid") or ""
        if meta.get("deletionTimestamp") or not spec.get("autoscaling"):
            self.forget(uid)
            return None
        try:
            policy = AutoscalingSpec.model_validate(spec["autoscaling"])
        except ValidationError:
            return None  # the reconcile reports an invalid spec
        current = int(spec.get("replicas", 1))
        written = self._written.get(uid)
        if written is not None:
            if written[0] == meta.get("resourceVersion"):
                current = written[1]  # the watch has not shown our write yet
            else:
                del self._written[uid]
        sample = await self.sample(namespace, name)
        decision = scalepolicy.decide(policy, self._histories.get(uid), sample, current,
                                    window=self.settings.window, can_wake=self.settings.has_gateway)
        self._histories[uid] = decision.history
        if sample is not None:
            logger.debug("%s/%s: load %.1f (average %.1f), recommendation %d, replicas %d → %d", namespace, name,
                         sample.load, decision.average, decision.recommendation, current, decision.replicas)
        if not decision.changes(current):
            return None
        patch: dict[str, Any] = {"spec": {"replicas": decision.replicas}}
        if decision.replicas < current and meta.get("resourceVersion"):
            patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}
        path = api_path(f"{GROUP}/{VERSION}", PLURAL, namespace, name, "scale")
        try:
            await self.client.merge_patch(path, patch)
        except ApiError as exc:
            logger.info("cannot scale %s/%s to %d (decided again next tick): %s", namespace, name,
                        decision.replicas, exc)
            # Nothing was written: the replicas are still the ones decided on, so the next tick tells a scale
            # by someone else (held like a scale-up of ours) from a refusal for another change (a status write).
            self._histories[uid] = replace(decision.history, replicas=current)
            return None
        self.metrics.writes.labels(kind="scale").inc()
        if meta.get("resourceVersion"):
            self._written[uid] = (str(meta["resourceVersion"]), decision.replicas)
        await self.post_event(body, "Normal", "Autoscaled",
                                    scalepolicy.explain(current, decision, policy, self.settings.window))
        return decision.replicas

