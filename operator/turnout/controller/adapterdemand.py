"""LoRA adapters under load: sample the gateways' requests per adapter; reconcile when they move an adapter.

Every ``interval`` seconds (``--autoscale-interval``), on the operator that runs kopf (the leader with
``--leader-elect``; not with ``--peering``) and only when it has gateways to scrape (``--gateway-metrics-url``,
``--gateway-service``): for each ModelDeployment with ``spec.lora`` and ``spec.adapters``, autoscaled or not,
the gateways' ``turnout_gateway_in_flight`` and ``turnout_gateway_queue_length`` of each adapter (an adapter
is its own ``model`` label there) — the autoscaler's scrape, shared: ``ScaleLoop.gateway_models`` — go
into the :class:`DemandBook`, and an adapter with a request in flight or waiting is "used" now. When
:func:`turnout.controller.adapters.work` with that demand loads or unloads for it, the deployment is
reconciled: its reconcile reads the book (``Observed.demand``), decides purely and starts the loads as ever
(:mod:`turnout.controller.adapterload`), and status.adapters says what the pods then hold.

"Last used" lives here, in memory, and in the pods' ``turnout.dev/adapters`` records (written with every change
of a pod's adapters): a new leader starts from the records. A sample is used for :data:`FRESH` intervals; no
gateway answering means no sample, and placement is the static one (docs/lora.md, "Placement under load").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from turnout.api import ModelDeploymentSpec
from turnout.controller import adapters as ad
from turnout.controller.world import Pod

logger = logging.getLogger("turnout.controller.adapters")

#: intervals a sample stays usable by the reconciles (then the placement is the static one again)
FRESH = 3.0

Key = tuple[str, str]  # (namespace, ModelDeployment name)
#: the gateways' gauges: (namespace, deployment, model) -> (in flight, queued) (:func:`scaleloop.gateway_models`)
ModelLoad = Mapping[tuple[str, str, str], tuple[float, float]]


class DemandBook:
    """The latest demand sample of each deployment and when each of its adapters was last requested."""

    def __init__(self) -> None:
        self._samples: dict[Key, tuple[float, Mapping[str, ad.Load]]] = {}  # key -> (usable until, load)
        self._used: dict[Key, dict[str, float]] = {}

    def record(self, key: Key, load: Mapping[str, ad.Load] | None, *, now: float, until: float) -> ad.Demand | None:
        """Keep a sample (None: no gateway answered) taken at ``now`` (Unix seconds), usable until ``until``
        (monotonic); the demand it makes."""
        if load is None:
            self._samples.pop(key, None)
            return None
        used = self._used.setdefault(key, {})
        for name, one in load.items():
            if one.total > 0:
                used[name] = now
        self._samples[key] = (until, dict(load))
        return self.of(key)

    def of(self, key: Key) -> ad.Demand | None:
        """The deployment's demand for a decision; None without a fresh sample."""
        found = self._samples.get(key)
        if found is None or found[0] < time.monotonic():
            return None
        return ad.Demand(found[1], dict(self._used.get(key) or {}))

    def forget(self, key: Key) -> None:
        self._samples.pop(key, None)
        self._used.pop(key, None)


def adapter_load(models: ModelLoad, namespace: str, name: str, spec: ModelDeploymentSpec) -> dict[str, ad.Load]:
    """Per adapter of ``spec`` with a request at the gateways, its requests in flight and waiting."""
    out = {}
    for adapter in spec.adapters or []:
        in_flight, waiting = models.get((namespace, name, adapter.name), (0.0, 0.0))
        if in_flight + waiting > 0:
            out[adapter.name] = ad.Load(in_flight, waiting)
    return out


class DemandLoop:
    """Samples the adapters' demand each ``interval`` seconds and asks for a reconcile when it moves one.

    ``scrape``: the gateways' load per model, None when none answered (the autoscaler's
    :meth:`~turnout.controller.scaleloop.ScaleLoop.gateway_models`: one scrape for both); ``deployments``:
    every ModelDeployment body as the watch shows it; ``pods(namespace, name)``: its model server pods;
    ``reconcile(key)``: queue a reconcile of it.
    """

    def __init__(self, scrape: Callable[[], Awaitable[ModelLoad | None]], book: DemandBook, *, interval: float,
                 deployments: Callable[[], Iterable[Mapping[str, Any]]], pods: Callable[[str, str], Sequence[Pod]],
                 reconcile: Callable[[Key], None]) -> None:
        self.scrape = scrape
        self.book = book
        self.deployments = deployments
        self.pods = pods
        self.reconcile = reconcile
        self.interval = interval

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.tick()
            except Exception:  # the next tick tries again
                logger.exception("sampling the adapters' demand failed")
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))

    async def tick(self) -> list[Key]:
        """One sample of every deployment with adapters; the deployments queued for a reconcile."""
        todo: list[tuple[Key, ModelDeploymentSpec]] = []
        for body in self.deployments():
            meta, raw = body.get("metadata") or {}, body.get("spec") or {}
            if meta.get("deletionTimestamp") or not raw.get("adapters") or raw.get("lora") is None:
                continue
            try:
                spec = ModelDeploymentSpec.model_validate(raw)
            except ValidationError:
                continue  # the reconcile reports an invalid spec
            todo.append(((str(meta.get("namespace") or ""), str(meta.get("name") or "")), spec))
        if not todo:
            return []
        models = await self.scrape()
        now, until = time.time(), time.monotonic() + FRESH * self.interval
        queued = []
        for key, spec in todo:
            load = adapter_load(models, *key, spec) if models is not None else None
            demand = self.book.record(key, load, now=now, until=until)
            if demand is None:
                continue
            moves = [w for w in ad.work(spec, self.pods(*key), demand) if w.demanded or w.evicted]
            if moves:
                logger.debug("%s/%s: adapters to move for their load: %s", *key,
                             "; ".join(f"{w.pod}: -{list(w.evicted)} +{list(w.demanded)}" for w in moves))
                self.reconcile(key)
                queued.append(key)
        return queued
