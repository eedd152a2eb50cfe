"""The autoscaler's formula (turnout.controller.scalepolicy): pure, so driven tick by tick with made-up time."""

from __future__ import annotations

import itertools
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.api import AutoscalingSpec
from turnout.controller.scalepolicy import Decision, History, Sample, decide, explain, recommend

TICK = 15.0
WINDOW = 60.0


def policy(min_replicas: int = 1, max_replicas: int = 10, target: float = 4, delay: int = 300) -> AutoscalingSpec:
    return AutoscalingSpec(min_replicas=min_replicas, max_replicas=max_replicas,
                           target_in_flight_per_replica=target, scale_down_delay_seconds=delay)


def run(p: AutoscalingSpec, loads: list[float], current: int = 1, *, queued: list[float] | None = None,
        can_wake: bool = True, start: float = 1000.0) -> list[Decision]:
    """Feed one sample per tick, applying each decision (as the operator's scale write would)."""
    history: History | None = None
    out = []
    for i, load in enumerate(loads):
        sample = Sample(start + i * TICK, load, (queued or [0.0] * len(loads))[i])
        decision = decide(p, history, sample, current, window=WINDOW, can_wake=can_wake)
        history, current = decision.history, decision.replicas
        out.append(decision)
    return out


def test_the_formula_on_a_steady_load() -> None:
    # 4 samples in the window, mean 11.2, target 4: ceil(2.8) = 3.
    (*_, last) = run(policy(), [11.2] * 4)
    assert (last.average, last.recommendation, last.replicas) == (11.2, 3, 3)
    assert recommend(policy(), 8.0, 0) == 2  # exactly at the target: no extra replica
    assert recommend(policy(), 8.0000000001, 0) == 2
    assert recommend(policy(), 8.1, 0) == 3


def test_scale_up_is_immediate_and_down_waits_for_the_delay() -> None:
    p = policy(delay=60)
    busy = run(p, [40.0] * 8)
    assert busy[0].replicas == 10  # the first sample alone: 40 / 4 = 10, at once
    history, current = busy[-1].history, busy[-1].replicas
    t = 1000.0 + 8 * TICK
    seen = []
    for i in range(12):
        decision = decide(p, history, Sample(t + i * TICK, 0.0), current, window=WINDOW)
        history, current = decision.history, decision.replicas
        seen.append((t + i * TICK, current))
    # The last recommendation of 10 was the last busy tick: nothing goes below it for the 60 s after, then it
    # steps down as the higher recommendations age out, to minReplicas.
    first_down = next(at for at, c in seen if c < 10)
    assert first_down - (t - TICK) == 60
    assert [c for _, c in seen] == sorted((c for _, c in seen), reverse=True)
    assert seen[-1][1] == 1


def test_scale_to_zero_only_with_min_zero_after_the_delay_without_load() -> None:
    decisions = run(policy(min_replicas=0, delay=60), [2.0] + [0.0] * 12)
    replicas = [d.replicas for d in decisions]
    assert replicas[0] == 1 and replicas[-1] == 0
    last_load_at, zero_at = 1000.0, 1000.0 + TICK * replicas.index(0)
    assert zero_at - last_load_at >= 60 + WINDOW - TICK
    # With minReplicas 1 it stays at 1; with nothing that can wake it (no gateway) it stays at 1 too.
    assert run(policy(min_replicas=1, delay=60), [2.0] + [0.0] * 12)[-1].replicas == 1
    assert run(policy(min_replicas=0, delay=60), [2.0] + [0.0] * 12, can_wake=False)[-1].replicas == 1


def test_a_queued_request_wakes_a_deployment_at_zero() -> None:
    (decision,) = run(policy(min_replicas=0, delay=60), [1.0], current=0, queued=[1.0])
    assert decision.replicas == 1
    assert "queued" in explain(0, decision, policy(min_replicas=0, delay=60), WINDOW)


def test_no_sample_changes_nothing() -> None:
    decision = decide(policy(), None, None, 3, window=WINDOW)
    assert decision.replicas == 3 and not decision.changes(3)


def test_no_scale_down_before_the_history_spans_the_delay() -> None:
    """After an operator restart it has seen nothing: the current replicas stand for the delay."""
    decisions = run(policy(delay=120), [0.0] * 10, current=5)
    assert [d.replicas for d in decisions[:8]] == [5] * 8
    assert decisions[-1].replicas == 1


def test_bounds_changed_in_the_spec_apply_at_once() -> None:
    assert run(policy(max_replicas=3), [0.0], current=7)[0].replicas == 3
    assert run(policy(min_replicas=4), [0.0], current=1)[0].replicas == 4
    message = explain(7, run(policy(max_replicas=3), [0.0], current=7)[0], policy(max_replicas=3), WINDOW)
    assert message.startswith("scaled 7 → 3") and "maxReplicas is 3" in message
    message = explain(1, run(policy(min_replicas=4), [0.0], current=1)[0], policy(min_replicas=4), WINDOW)
    assert message.startswith("scaled 1 → 4: minReplicas is 4")
    down = run(policy(delay=0), [0.0], current=3)[0]
    assert explain(3, down, policy(delay=0), WINDOW).endswith("the highest recommendation of the last 0 s")


def test_the_event_message_says_why() -> None:
    p = policy()
    decision = run(p, [11.2] * 4)[-1]
    assert explain(1, decision, p, WINDOW) == "scaled 1 → 3: average in-flight 11.2 over 60 s, target 4 per replica"


policies = st.builds(
    lambda lo, span, target, delay: policy(lo, lo + span if lo + span >= 1 else 1, target, delay),
    st.integers(0, 5), st.integers(0, 20), st.floats(0.5, 50), st.integers(0, 600))
loads = st.lists(st.floats(0, 500, allow_nan=False), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(p=policies, series=loads, current=st.integers(0, 30))
def test_never_outside_the_bounds(p: AutoscalingSpec, series: list[float], current: int) -> None:
    for decision in run(p, series, current):
        assert p.min_replicas <= decision.replicas <= p.max_replicas


@settings(max_examples=200, deadline=None)
@given(p=policies, series=loads, extra=st.lists(st.floats(0, 100), min_size=60, max_size=60),
       current=st.integers(0, 30))
def test_monotone_in_load(p: AutoscalingSpec, series: list[float], extra: list[float], current: int) -> None:
    """More load at every tick never gives fewer replicas at any tick."""
    low = run(p, series, current)
    high = run(p, [x + e for x, e in zip(series, extra, strict=False)], current)
    assert all(h.replicas >= lo.replicas for h, lo in zip(high, low, strict=True))


@settings(max_examples=200, deadline=None)
@given(p=policies, series=loads)
def test_no_scale_down_within_the_delay_of_a_scale_up(p: AutoscalingSpec, series: list[float]) -> None:
    """No flapping: once it scaled up, it keeps that many replicas for scaleDownDelaySeconds at least."""
    decisions = run(p, series, current=p.min_replicas)
    times = [1000.0 + i * TICK for i in range(len(series))]
    last_up = None
    previous = p.min_replicas
    for at, decision in zip(times, decisions, strict=True):
        if decision.replicas > previous:
            last_up = at
        elif decision.replicas < previous and last_up is not None:
            assert at - last_up >= p.scale_down_delay_seconds
        previous = decision.replicas


@settings(max_examples=100, deadline=None)
@given(level=st.floats(1, 200), noise=st.lists(st.floats(-0.3, 0.3), min_size=20, max_size=20))
def test_noisy_load_around_a_level_settles(level: float, noise: list[float]) -> None:
    """Load jittering ±30 % around a level: replicas stay within the band the level allows, and after the first
    scale-up they never go down within the delay (20 ticks of 15 s: less than its 300 s)."""
    p = policy(min_replicas=1, max_replicas=100, target=4, delay=300)
    decisions = run(p, [level * (1 + n) for n in noise])
    band = range(max(1, math.ceil(level * 0.7 / 4 - 1e-9)), math.ceil(level * 1.3 / 4 - 1e-9) + 1)
    assert all(d.replicas in band for d in decisions)
    assert all(b.replicas >= a.replicas for a, b in itertools.pairwise(decisions))


@settings(max_examples=200, deadline=None)
@given(p=policies, queued=st.floats(0.001, 100), past=st.integers(1, 60))
def test_a_queued_request_always_wakes_a_deployment_at_zero(p: AutoscalingSpec, queued: float, past: int) -> None:
    """After any quiet past, a sample with a request queued never leaves a deployment at 0 replicas."""
    before = run(p, [0.0] * past, current=0)[-1].history
    decision = decide(p, before, Sample(1000.0 + past * TICK, queued, queued), 0, window=WINDOW)
    assert decision.replicas >= 1


def test_a_wake_up_by_the_gateway_is_held_for_the_delay() -> None:
    """Scaled to zero, then the gateway patches replicas to 1 for a held request: the next samples may not show
    the request yet (the gateway's metrics are scraped apart), yet the wake-up is never undone within the delay."""
    p = policy(min_replicas=0, delay=60)
    quiet = run(p, [0.0] * 12, current=0)
    assert quiet[-1].replicas == 0
    history, current, t = quiet[-1].history, 1, 1000.0 + 12 * TICK  # the gateway's patch: 0 → 1
    kept = []
    for i in range(6):
        decision = decide(p, history, Sample(t + i * TICK, 0.0), current, window=WINDOW)
        history, current = decision.history, decision.replicas
        kept.append(current)
    assert kept[:4] == [1, 1, 1, 1]  # 60 s
    assert kept[-1] == 0  # and then, with still no load, back to zero
