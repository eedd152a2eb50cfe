"""LoRA adapters in the running pods: which to load or unload where, and what status.adapters says. Pure.

``spec.adapters`` never reaches the pod template (``spec.lora`` starts the engines able to load them): the
operator loads each adapter into the ready pods' engines through their shims' ``/v1/load_lora_adapter`` and
``/v1/unload_lora_adapter`` (:mod:`turnout.controller.adapterload` does the I/O), and records on each pod, in
the ``turnout.dev/adapters`` annotation (:data:`turnout.controller.world.ADAPTERS_ANNOTATION`), what its
engine holds (:class:`Held`). A record is trusted only while the pod's restart count is the one it was written
at: a restarted shim holds nothing.

Placement: every pod holds at most ``spec.lora.maxLoaded`` adapters. A pod keeps what it holds of the spec;
free places go to the adapters held by the fewest pods so far (in the spec's order), so with more adapters
than places each still lands somewhere when the pods allow. An adapter whose load failed on a pod is not
tried on that pod again until its uri changes or the pod restarts (the error stays in status.adapters).
A multi-node replica (a LeaderWorkerSet group) counts once: its leader serves the API and holds the adapters.

Placement under load (:class:`Demand`: the gateways' requests per adapter, sampled by
:mod:`turnout.controller.adapterdemand`; without it the rule above is all there is). Before the free places
are filled, in this order:

1. an adapter with requests waiting at the gateways and no pod holding it (most waiting first) is loaded on
   the pod with the most free places, else on the pod whose least recently used *idle* adapter (no request
   in flight or waiting) was used longest ago, which unloads that one first;
2. an adapter whose requests (in flight + waiting) per holding pod are at least
   ``spec.lora.spreadInFlightPerReplica`` (busiest first) is loaded on one more pod, chosen the same way.

Bounds, so it cannot thrash: at most one such load per pod per decision; only idle adapters are unloaded for
another, never one with requests now (so never one with demand in favour of one with less), and never one
loaded by this decision; a pod never holds more than ``maxLoaded``. "Last used" is per adapter of the
deployment: the latest of the loop's memory and the times recorded with each pod's adapters (:class:`Held`
``used``, written whenever the operator changes that pod's adapters, so a new leader starts from them); an
adapter never seen requested counts as used at time 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from turnout.api import AdapterStatus, ModelDeploymentSpec
from turnout.controller.world import Pod


@dataclass(frozen=True)
class Held:
    """What a pod's engine holds: adapter name -> uri loaded; name -> (uri, error) of the loads that failed."""

    restarts: int = 0
    loaded: Mapping[str, str] = field(default_factory=dict)
    failed: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: name -> when a request for it was last seen at the gateways (Unix seconds), as of this record's writing
    used: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        body: dict[str, Any] = {"restarts": self.restarts, "loaded": dict(sorted(self.loaded.items()))}
        if self.failed:
            body["failed"] = {n: {"uri": u, "error": e} for n, (u, e) in sorted(self.failed.items())}
        if self.used:
            body["used"] = dict(sorted(self.used.items()))  # exact: the loader compares records it wrote
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def of(cls, pod: Pod) -> Held:
        """The record on ``pod``; empty when there is none, it cannot be read, or the pod restarted since."""
        try:
            raw = json.loads(pod.adapters or "{}")
            restarts = int(raw.get("restarts", -1))
            loaded = {str(k): str(v) for k, v in (raw.get("loaded") or {}).items()}
            failed = {str(k): (str(v.get("uri")), str(v.get("error"))) for k, v in (raw.get("failed") or {}).items()}
            used = {str(k): float(v) for k, v in (raw.get("used") or {}).items()}
        except (ValueError, TypeError, AttributeError):
            return cls(pod.restarts)
        if restarts != pod.restarts:
            return cls(pod.restarts)
        return cls(restarts, loaded, failed, used)


@dataclass(frozen=True)
class Load:
    """Requests for one adapter at the gateways: sent to a pod and not finished, held waiting for a pod."""

    in_flight: float = 0.0
    waiting: float = 0.0

    @property
    def total(self) -> float:
        return self.in_flight + self.waiting


@dataclass(frozen=True)
class Demand:
    """One deployment's adapters under load: a gateway sample (absent adapter: no request) and "last used"."""

    load: Mapping[str, Load] = field(default_factory=dict)
    #: name -> when a request for it was last seen (Unix seconds), as the sampling loop remembers it
    last_used: Mapping[str, float] = field(default_factory=dict)

    def of(self, name: str) -> Load:
        return self.load.get(name) or Load()


@dataclass(frozen=True)
class PodWork:
    """What to change in one pod's engine: unload these names, then load these (name, uri).

    ``evicted`` and ``demanded``: the unloads and loads (names) made for the load at the gateways rather than
    for the spec; ``used``: the last-used times to record with what the pod holds afterwards.
    """

    pod: str
    ip: str
    held: Held
    unload: tuple[str, ...] = ()
    load: tuple[tuple[str, str], ...] = ()
    evicted: tuple[str, ...] = ()
    demanded: tuple[str, ...] = ()
    used: Mapping[str, float] = field(default_factory=dict)


def _serving(pods: Sequence[Pod]) -> list[Pod]:
    return sorted((p for p in pods if p.ready and p.ip and p.name and not p.worker), key=lambda p: str(p.name))


@dataclass
class _Plan:
    """One pod's work while it is decided."""

    pod: Pod
    held: Held
    unload: list[str]
    keep: list[str]
    tried: set[str]
    load: list[str] = field(default_factory=list)
    evicted: list[str] = field(default_factory=list)
    demanded: list[str] = field(default_factory=list)

    def room(self, max_loaded: int) -> int:
        return max_loaded - len(self.keep) - len(self.load)


def work(spec: ModelDeploymentSpec | None, pods: Sequence[Pod], demand: Demand | None = None) -> tuple[PodWork, ...]:
    """Per ready pod, the unloads and loads that bring its engine to its share of ``spec.adapters``.

    ``demand``: the gateways' load per adapter (None: no sample, the static placement alone).
    """
    if spec is None or spec.lora is None:
        return ()
    wanted = {a.name: a.uri for a in spec.adapters or []}
    order = [a.name for a in spec.adapters or []]
    plans: list[_Plan] = []
    for pod in _serving(pods):
        held = Held.of(pod)
        plans.append(_Plan(pod, held, unload=sorted(n for n, u in held.loaded.items() if wanted.get(n) != u),
                           keep=[n for n, u in held.loaded.items() if wanted.get(n) == u],
                           tried={n for n, (u, _) in held.failed.items() if wanted.get(n) == u}))
    holders = {n: sum(1 for p in plans if n in p.keep) for n in wanted}
    used = _last_used(plans, demand)
    if demand is not None:
        _place_by_demand(spec, order, plans, holders, demand, used)
    for plan in plans:
        candidates = [n for n in order if n not in plan.keep and n not in plan.load and n not in plan.tried
                      and n not in plan.evicted]
        candidates.sort(key=lambda n: holders[n])  # stable: the spec's order among equals
        for n in candidates[:max(plan.room(spec.lora.max_loaded), 0)]:
            plan.load.append(n)
            holders[n] += 1
    out = []
    for p in plans:
        if not (p.unload or p.load):
            continue
        after = sorted([*p.keep, *p.load])
        out.append(PodWork(str(p.pod.name), str(p.pod.ip), p.held, tuple(p.unload),
                           tuple((n, wanted[n]) for n in p.load), tuple(p.evicted), tuple(p.demanded),
                           {n: used[n] for n in after if used.get(n)}))
    return tuple(out)


def _last_used(plans: Sequence[_Plan], demand: Demand | None) -> dict[str, float]:
    """Per adapter, the latest time it was requested: the loop's memory, or the pods' records (a new leader)."""
    used: dict[str, float] = dict(demand.last_used) if demand is not None else {}
    for plan in plans:
        for name, at in plan.held.used.items():
            used[name] = max(used.get(name, 0.0), at)
    return used


def _place_by_demand(spec: ModelDeploymentSpec, order: list[str], plans: list[_Plan], holders: dict[str, int],
                     demand: Demand, used: Mapping[str, float]) -> None:
    """Steps 1 and 2 of the module's rule: adapters waiting with no holder, then busy ones, onto one more pod."""
    if spec.lora is None:
        return
    max_loaded, spread = spec.lora.max_loaded, spec.lora.spread_in_flight_per_replica
    waiting = sorted((n for n in order if holders[n] == 0 and demand.of(n).waiting > 0),
                     key=lambda n: -demand.of(n).waiting)
    hot = sorted((n for n in order if holders[n] > 0 and demand.of(n).total / holders[n] >= spread),
                 key=lambda n: -demand.of(n).total / holders[n])
    for name in [*waiting, *hot]:
        target = _target(name, plans, demand, used, holders, max_loaded)
        if target is None:
            continue
        plan, victim = target
        if victim is not None:
            plan.keep.remove(victim)
            plan.unload.append(victim)
            plan.evicted.append(victim)
            holders[victim] -= 1
        plan.load.append(name)
        plan.demanded.append(name)
        holders[name] += 1


def _target(name: str, plans: list[_Plan], demand: Demand, used: Mapping[str, float], holders: Mapping[str, int],
            max_loaded: int) -> tuple[_Plan, str | None] | None:
    """The pod to load ``name`` on for its demand, and the adapter it unloads first (None: a free place)."""
    open_ = [p for p in plans if not p.demanded and name not in p.keep and name not in p.load
             and name not in p.tried]
    free = [p for p in open_ if p.room(max_loaded) > 0]
    if free:
        return max(free, key=lambda p: p.room(max_loaded)), None  # max: the first (by pod name) among equals
    best: tuple[tuple[float, int, str], _Plan, str] | None = None
    for plan in open_:
        idle = [n for n in plan.keep if demand.of(n).total == 0]
        if not idle:
            continue
        # least recently used first; among equals the one other pods hold too, then by name
        victim = min(idle, key=lambda n: (used.get(n, 0.0), -holders[n], n))
        rank = (used.get(victim, 0.0), -holders[victim], str(plan.pod.name))
        if best is None or rank < best[0]:
            best = (rank, plan, victim)
    return (best[1], best[2]) if best is not None else None


def status(spec: ModelDeploymentSpec | None, pods: Sequence[Pod]) -> list[AdapterStatus] | None:
    """status.adapters: per adapter of the spec, the ready pods that hold it, and the errors where it failed."""
    if spec is None or not spec.adapters:
        return None
    serving = [(p, Held.of(p)) for p in _serving(pods)]
    out = []
    for adapter in spec.adapters:
        holding = [str(p.name) for p, h in serving if h.loaded.get(adapter.name) == adapter.uri]
        errors = [f"pod {p.name}: {h.failed[adapter.name][1]}" for p, h in serving
                  if h.failed.get(adapter.name, ("", ""))[0] == adapter.uri]
        message = "; ".join(errors) or None
        if not serving:
            message = "no ready replica to load it into yet"
        out.append(AdapterStatus(name=adapter.name, ready=f"{len(holding)}/{len(serving)}", loaded=len(holding),
                                 pods=holding or None, message=message))
    return out
