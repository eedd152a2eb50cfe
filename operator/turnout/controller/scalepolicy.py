"""The built-in autoscaler's decision: replicas from the load. Pure: no I/O, no clock, no kopf.

Per ModelDeployment with ``spec.autoscaling``, every tick the operator takes one load **sample**:

    load = max(Σ gateways (in_flight + queue_length), Σ ready pods' shim in-flight)

(the gateway sees requests queued for a deployment with no ready pod; the shims see requests that bypass
the gateway). From the samples of the last ``window`` seconds:

    recommendation = clamp(ceil(mean(load) / targetInFlightPerReplica), minReplicas, maxReplicas)

raised to 1 when a request is queued (a deployment at 0 replicas wakes), and to 1 when nothing could wake
a deployment at 0 (no gateway is scraped). Then, as the HorizontalPodAutoscaler's stabilization window:

- **up** at once: a recommendation above the current replicas is taken as is;
- **down** only to the highest recommendation of the last ``scaleDownDelaySeconds`` (so to zero only
  after that long without any load), and not before the history covers that long (after a restart the
  operator has seen nothing yet).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from turnout.api import AutoscalingSpec

#: Float noise below this is not a request (``ceil(8.000000001 / 4)`` must be 2, not 3).
_EPSILON = 1e-9


@dataclass(frozen=True)
class Sample:
    """One observation of a deployment's load at ``at`` (monotonic seconds)."""

    at: float
    load: float  # requests in flight or queued
    queued: float = 0.0  # of which held in a gateway waiting for a ready pod


@dataclass(frozen=True)
class History:
    """What the autoscaler remembers of one deployment: recent samples and recommendations."""

    since: float  # when it began to remember (the first sample's time)
    samples: tuple[Sample, ...] = ()
    recommendations: tuple[tuple[float, int], ...] = ()  # (at, replicas)
    replicas: int | None = None  # what the last decision left (to tell someone else's scale-up)


@dataclass(frozen=True)
class Decision:
    """What to do now: ``replicas`` (== current when nothing changes), the history to keep, and why."""

    replicas: int
    history: History
    average: float  # mean load over the window
    recommendation: int
    reason: str = field(default="")

    def changes(self, current: int) -> bool:
        return self.replicas != current


def recommend(policy: AutoscalingSpec, average: float, queued: float, *, can_wake: bool = True) -> int:
    """Replicas for a mean load: ``ceil(average / target)`` within [min, max]; at least 1 when a request is
    queued, or when nothing would wake a deployment at 0."""
    raw = math.ceil(max(0.0, average) / policy.target_in_flight_per_replica - _EPSILON)
    floor = policy.min_replicas
    if queued > 0 or not can_wake:
        floor = max(floor, 1)
    return max(floor, min(policy.max_replicas, max(raw, floor)))


def decide(policy: AutoscalingSpec, history: History | None, sample: Sample | None, current: int, *,
           window: float, can_wake: bool = True) -> Decision:
    """The replicas for a deployment now (``sample.at``), given its ``current`` replicas.

    ``sample`` is None when no source answered this tick: the history ages, nothing scales on a guess.
    ``window``: seconds of samples the mean is taken over.
    """
    delay = float(policy.scale_down_delay_seconds)
    if sample is None:
        hist = history or History(since=0.0)
        return Decision(current, hist, 0.0, current, "no load sample")
    now = sample.at
    hist = history if history is not None else History(since=now)
    samples = tuple(s for s in (*hist.samples, sample) if s.at > now - window) or (sample,)
    average = sum(s.load for s in samples) / len(samples)
    rec = recommend(policy, average, sample.queued, can_wake=can_wake)
    recs = (*((at, r) for at, r in hist.recommendations if at > now - delay), (now, rec))
    if hist.replicas is not None and current > hist.replicas:
        # Someone else scaled up (the gateway waking it from zero, kubectl scale): held like a scale-up of ours,
        # so a sample that does not show the waiting request yet never undoes the wake-up.
        recs = (*recs, (now, current))
    hist = replace(hist, samples=samples, recommendations=recs)
    bounded = max(policy.min_replicas, min(policy.max_replicas, current))
    if not can_wake:
        bounded = max(bounded, 1)
    if rec >= bounded:
        return Decision(rec, replace(hist, replicas=rec), average, rec, "load" if rec > current else "steady")
    # Down: only to the highest recommendation over the delay, and not before the history spans it.
    stabilized = max(r for _, r in recs)
    if now - hist.since < delay:
        stabilized = max(stabilized, bounded)
    target = min(bounded, stabilized)
    return Decision(target, replace(hist, replicas=target), average, rec,
                    "stabilized" if target < current else "steady")


def explain(current: int, decision: Decision, policy: AutoscalingSpec, window: float) -> str:
    """The Event's message for a change, e.g. ``scaled 1 → 3: average in-flight 11.2 over 60 s, target 4 per
    replica``."""
    load = (f"average in-flight {decision.average:.1f} over {window:g} s, "
            f"target {policy.target_in_flight_per_replica:g} per replica")
    queued = decision.history.samples[-1].queued if decision.history.samples else 0.0
    if decision.replicas > current:
        if current < policy.min_replicas and decision.replicas == policy.min_replicas:
            why = f"minReplicas is {policy.min_replicas}; {load}"
        elif current == 0 and queued > 0:
            why = f"{queued:g} request(s) queued in the gateway; {load}"
        else:
            why = load
    elif current > policy.max_replicas and decision.replicas == policy.max_replicas:
        why = f"maxReplicas is {policy.max_replicas}"
    else:
        why = f"{load}; the highest recommendation of the last {policy.scale_down_delay_seconds} s"
    return f"scaled {current} → {decision.replicas}: {why}"
