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

    def to_json(self) -> str:
        body: dict[str, Any] = {"restarts": self.restarts, "loaded": dict(sorted(self.loaded.items()))}
        if self.failed:
            body["failed"] = {n: {"uri": u, "error": e} for n, (u, e) in sorted(self.failed.items())}
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def of(cls, pod: Pod) -> Held:
        """The record on ``pod``; empty when there is none, it cannot be read, or the pod restarted since."""
        try:
            raw = json.loads(pod.adapters or "{}")
            restarts = int(raw.get("restarts", -1))
            loaded = {str(k): str(v) for k, v in (raw.get("loaded") or {}).items()}
            failed = {str(k): (str(v.get("uri")), str(v.get("error"))) for k, v in (raw.get("failed") or {}).items()}
        except (ValueError, TypeError, AttributeError):
            return cls(pod.restarts)
        if restarts != pod.restarts:
            return cls(pod.restarts)
        return cls(restarts, loaded, failed)


@dataclass(frozen=True)
class PodWork:
    """What to change in one pod's engine: unload these names, then load these (name, uri)."""

    pod: str
    ip: str
    held: Held
    unload: tuple[str, ...] = ()
    load: tuple[tuple[str, str], ...] = ()


def _serving(pods: Sequence[Pod]) -> list[Pod]:
    return sorted((p for p in pods if p.ready and p.ip and p.name and not p.worker), key=lambda p: str(p.name))


def work(spec: ModelDeploymentSpec | None, pods: Sequence[Pod]) -> tuple[PodWork, ...]:
    """Per ready pod, the unloads and loads that bring its engine to its share of ``spec.adapters``."""
    if spec is None or spec.lora is None:
        return ()
    wanted = {a.name: a.uri for a in spec.adapters or []}
    order = [a.name for a in spec.adapters or []]
    serving = [(p, Held.of(p)) for p in _serving(pods)]
    holders = {n: sum(1 for _, h in serving if h.loaded.get(n) == u) for n, u in wanted.items()}
    out = []
    for pod, held in serving:
        unload = tuple(sorted(n for n, u in held.loaded.items() if wanted.get(n) != u))
        keep = [n for n, u in held.loaded.items() if wanted.get(n) == u]
        tried = {n for n, (u, _) in held.failed.items() if wanted.get(n) == u}
        room = spec.lora.max_loaded - len(keep)
        candidates = [n for n in order if n not in keep and n not in tried]
        candidates.sort(key=lambda n: holders[n])  # stable: the spec's order among equals
        load = tuple((n, wanted[n]) for n in candidates[:max(room, 0)])
        for n, _ in load:
            holders[n] += 1
        if unload or load:
            out.append(PodWork(str(pod.name), str(pod.ip), held, unload, load))
    return tuple(out)


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
