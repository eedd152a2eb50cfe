"""What the operator last reconciled of each ModelDeployment, and what kind of change a newer version is.

Every ModelDeployment event goes to the controller's own work queue (kopf only watches: no create, update
or resume handlers, whose diff-base, progress records and per-change state machine were most of kopf's
cost per event). The worker tells the kind of change itself, from the :class:`Essence` it last reconciled
(kept in memory per uid) and the object's own status:

* nothing reconciled since the operator started: ``resume`` when ``status.observedGeneration`` says this
  generation was handled (its status is written only after its children), else ``create`` (resolve afresh);
* ``spec`` when anything in the spec but ``replicas`` changed (resolve afresh), ``scale`` when only
  ``replicas`` did, ``meta`` when only labels or annotations did;
* ``world`` when nothing of the object changed (a child, a pod or a node did).

An event whose essence is the one last reconciled (the echo of our own status write) queues nothing.
When kopf starts its watches (at start-up, or again when an optional API comes or goes) what was
reconciled is forgotten, so its listing reconciles every object once more, as kopf's resume did.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from turnout.api import GROUP

#: kopf's diff-base annotation, which operators before this one wrote (a copy of the spec): never read, and
#: not part of the essence, so that the index's copy (which drops it) and the event's body agree.
LEGACY_DIFFBASE = f"{GROUP}/last-handled-configuration"

@dataclass(frozen=True, slots=True)
class Essence:
    """The parts of a ModelDeployment a reconcile depends on, as compact JSON for cheap comparison."""

    spec: str  # the spec without ``replicas``
    replicas: str
    meta: str  # labels and annotations


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def essence(body: Mapping[str, Any]) -> Essence:
    """``body``'s essence (see :class:`Essence`)."""
    spec = body.get("spec") or {}
    meta = body.get("metadata") or {}
    return Essence(
        spec=_json({k: v for k, v in spec.items() if k != "replicas"}),
        replicas=_json(spec.get("replicas")),
        meta=_json([meta.get("labels") or {},
                    {k: v for k, v in (meta.get("annotations") or {}).items() if k != LEGACY_DIFFBASE}]),
    )


def _handled_generation(body: Mapping[str, Any]) -> bool:
    observed = (body.get("status") or {}).get("observedGeneration")
    return observed is not None and observed == (body.get("metadata") or {}).get("generation")


def classify(body: Mapping[str, Any], now: Essence, last: Essence | None) -> str:
    """The trigger of a reconcile of ``body`` (essence ``now``) after one of ``last`` (None: none yet)."""
    if last is None:
        return "resume" if _handled_generation(body) else "create"
    if now.spec != last.spec:
        return "spec"
    if now.replicas != last.replicas:
        return "scale"
    if now.meta != last.meta:
        return "meta"
    # The spec was reconciled; a status without its generation (a reconcile that wrote none) is looked at
    # as a metadata change would be, never skipped.
    return "world" if _handled_generation(body) else "meta"
