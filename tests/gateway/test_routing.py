"""The routing strategies, pure: bounded loads, stability as replicas come and go, prefix affinity."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.gateway.routing import (
    LEAST_REQUESTS,
    PREFIX_HASH,
    HashRing,
    RoundRobin,
    RoutingSpec,
    least_requests,
    load_bound,
    prompt_prefix,
)


@dataclass(eq=False)
class Ep:
    key: str
    load: int = 0


def _load(ep: Ep) -> int:
    return ep.load


def _eps(n: int) -> list[Ep]:
    return [Ep(f"10.0.0.{i}:8000") for i in range(n)]


PREFIXES = [f"user {i}: tell me about topic {i * 7919 % 1000}" for i in range(2000)]


@settings(max_examples=200, deadline=None)
@given(loads=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=12),
       factor=st.floats(min_value=1.01, max_value=10), prefix=st.text(max_size=40))
def test_the_chosen_endpoint_stays_within_the_bound(loads: list[int], factor: float, prefix: str) -> None:
    eps = [Ep(f"ep-{i}", n) for i, n in enumerate(loads)]
    chosen = HashRing(eps).pick(prefix, _load, factor)
    assert chosen.load + 1 <= load_bound(sum(loads), len(eps), factor)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(min_value=1, max_value=8), factor=st.floats(min_value=1.01, max_value=3),
       arrivals=st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=200))
def test_no_endpoint_ever_goes_above_the_bound(n: int, factor: float, arrivals: list[int]) -> None:
    """Requests skewed onto three prefixes pile up: after each one, every endpoint is within the bound."""
    eps = _eps(n)
    ring = HashRing(eps)
    for a in arrivals:
        bound = load_bound(sum(e.load for e in eps), n, factor)
        ring.pick(f"prefix {a % 3}", _load, factor).load += 1
        assert max(e.load for e in eps) <= bound


@settings(max_examples=50, deadline=None)
@given(n=st.integers(min_value=1, max_value=8), factor=st.floats(min_value=1.01, max_value=3),
       steps=st.lists(st.tuples(st.integers(min_value=0, max_value=30), st.booleans()), min_size=1, max_size=200))
def test_the_bound_holds_as_requests_come_and_go(n: int, factor: float, steps: list[tuple[int, bool]]) -> None:
    eps = _eps(n)
    ring = HashRing(eps)
    running: list[Ep] = []
    for prefix, finish in steps:
        bound = load_bound(sum(e.load for e in eps), n, factor)
        ep = ring.pick(f"prefix {prefix % 3}", _load, factor)
        ep.load += 1
        running.append(ep)
        assert ep.load <= bound
        if finish:
            running.pop(0).load -= 1


def test_same_prefix_same_endpoint_when_unloaded() -> None:
    ring = HashRing(_eps(5))
    for prefix in PREFIXES[:200]:
        first = ring.pick(prefix, _load, 1.25)
        assert all(ring.pick(prefix, _load, 1.25) is first for _ in range(3))
    owners = {ring.pick(p, _load, 1.25).key for p in PREFIXES}
    assert len(owners) == 5, "prefixes spread over every endpoint"


def _moved(before: HashRing[Ep], after: HashRing[Ep]) -> float:
    moved = sum(before.pick(p, _load, 1.25).key != after.pick(p, _load, 1.25).key for p in PREFIXES)
    return moved / len(PREFIXES)


def test_adding_or_removing_one_endpoint_moves_about_one_nth_of_prefixes() -> None:
    for n in (4, 8):
        eps = _eps(n)
        ring = HashRing(eps)
        removed = HashRing(eps[1:])
        # only the removed endpoint's prefixes move
        gone = eps[0].key
        for p in PREFIXES:
            if ring.pick(p, _load, 1.25).key != gone:
                assert removed.pick(p, _load, 1.25).key == ring.pick(p, _load, 1.25).key
        assert _moved(ring, removed) < 2 / n
        added = HashRing([*eps, Ep("10.0.1.99:8000")])
        assert 0 < _moved(ring, added) < 2 / (n + 1)


def test_a_loaded_owner_spills_to_the_next_endpoint_on_the_ring() -> None:
    eps = _eps(4)
    ring = HashRing(eps)
    owner = ring.pick("the prefix", _load, 1.25)
    owner.load = 10
    other = ring.pick("the prefix", _load, 1.25)
    assert other is not owner and other.load + 1 <= load_bound(10, 4, 1.25)


def test_least_requests_takes_the_idlest_and_breaks_ties_in_turn() -> None:
    eps = _eps(3)
    eps[0].load, eps[1].load, eps[2].load = 3, 1, 1
    ties = RoundRobin()
    picks = {least_requests(eps, _load, ties).key for _ in range(6)}
    assert picks == {eps[1].key, eps[2].key}
    eps[2].load = 0
    assert least_requests(eps, _load, ties) is eps[2]


def test_prompt_prefix_of_chat_completions_and_other_bodies() -> None:
    chat = {"messages": [{"role": "system", "content": "You are terse. "},
                         {"role": "user", "content": [{"type": "text", "text": "Hello there"},
                                                      {"type": "image_url", "image_url": {"url": "x"}}]}]}
    assert prompt_prefix(chat, 100) == "You are terse. Hello there"
    assert prompt_prefix(chat, 7) == "You are"
    assert prompt_prefix({"prompt": "abcdef"}, 3) == "abc"
    assert prompt_prefix({"prompt": ["abc", "def"]}, 5) == "abcde"
    assert prompt_prefix({"input": "embed me"}, 100) == "embed me"
    responses = {"instructions": "Be terse. ", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}, {"type": "function_call_output"}]}
    assert prompt_prefix(responses, 100) == "Be terse. Hi"
    assert prompt_prefix({"instructions": "Be terse. ", "input": "Hi"}, 100) == "Be terse. Hi"
    assert prompt_prefix({"query": "q", "documents": ["d"]}, 100) == "q"
    assert prompt_prefix({"messages": "not a list"}, 10) == ""


def test_routing_spec_defaults_and_raw_fields() -> None:
    default = RoutingSpec.from_spec(None)
    assert (default.strategy, default.prefix_chars, default.load_factor) == (LEAST_REQUESTS, 100, 1.25)
    spec = RoutingSpec.from_spec({"strategy": "PrefixHash", "prefixCharLength": 40, "loadFactor": 2})
    assert spec == RoutingSpec(strategy=PREFIX_HASH, prefix_char_length=40, load_factor=2.0)
    assert (spec.prefix_chars, spec.load_factor) == (40, 2.0)
    assert RoutingSpec.from_spec({"strategy": "Bogus", "loadFactor": 0.5}) == RoutingSpec()
