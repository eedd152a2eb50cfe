"""Which endpoint serves a request: the two strategies of ``spec.routing.strategy``, pure.

* ``LeastRequests`` (the default): the endpoint with the fewest requests in
  flight through this gateway; ties go round-robin.
* ``PrefixHash``: consistent hashing with bounded loads (Mirrokni, Thorup and
  Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2017; the scheme
  KubeAI uses). The first ``prefixCharLength`` characters of the prompt are
  hashed onto a ring that holds :data:`VNODES` virtual nodes per endpoint; the
  walk goes clockwise to the first endpoint whose in-flight count is below
  ``ceil(loadFactor × (total in flight + 1) / endpoints)``, so that endpoint is
  at most at that bound once it takes the request. Requests sharing a prefix
  land on the same endpoint (and its prefix cache) while it is not overloaded,
  and adding or removing one of N endpoints moves only about 1/N of the
  prefixes.

Nothing here does I/O: an endpoint is any hashable with a stable ``key``
string, loads are passed in.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar, get_args

from pydantic import ValidationError

from turnout import api
from turnout.api.types import RoutingStrategy

LEAST_REQUESTS = "LeastRequests"
PREFIX_HASH = "PrefixHash"
STRATEGIES: tuple[str, ...] = get_args(RoutingStrategy)
#: virtual nodes per endpoint on the ring: more spreads prefixes more evenly, at build cost only
VNODES = 100


class Keyed(Protocol):
    @property
    def key(self) -> str: ...


E = TypeVar("E", bound=Keyed)


class RoutingSpec(api.RoutingSpec):
    """``spec.routing`` of a ModelDeployment: the API's type (its defaults and bounds), read leniently."""

    @property
    def prefix_chars(self) -> int:
        """How many leading characters of the prompt PrefixHash hashes (``prefixCharLength``)."""
        return self.prefix_char_length

    @classmethod
    def from_spec(cls, routing: Mapping[str, Any] | None) -> RoutingSpec:
        """From the raw ``spec.routing`` dict; one the CRD would refuse (the API server never serves it) gives the
        defaults."""
        try:
            return cls.model_validate(routing or {})
        except ValidationError:
            return cls()


def point(data: str) -> int:
    """A 64-bit position on the ring."""
    return int.from_bytes(hashlib.blake2b(data.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def load_bound(total_in_flight: int, endpoints: int, load_factor: float) -> int:
    """The most requests one endpoint may have in flight once it takes the next one."""
    return math.ceil(load_factor * (total_in_flight + 1) / endpoints)


class HashRing(Generic[E]):
    """The ring of one endpoint set (rebuild it when the set changes)."""

    def __init__(self, endpoints: Sequence[E], vnodes: int = VNODES) -> None:
        points = sorted((point(f"{ep.key}#{i}"), n) for n, ep in enumerate(endpoints) for i in range(vnodes))
        self.endpoints = list(endpoints)
        self._points = [p for p, _ in points]
        self._owners = [n for _, n in points]

    def pick(self, prefix: str, load: Callable[[E], int], load_factor: float) -> E:
        """The first endpoint clockwise from ``prefix``'s position that is below the load bound."""
        eps = self.endpoints
        if not eps:
            raise LookupError("no endpoints")
        loads = [load(ep) for ep in eps]
        bound = load_bound(sum(loads), len(eps), load_factor)
        start = bisect.bisect(self._points, point(prefix))
        owners, count = self._owners, len(self._owners)
        for i in range(count):
            n = owners[(start + i) % count]
            if loads[n] + 1 <= bound:
                return eps[n]
        # unreachable with load_factor > 1 (some endpoint is below the average), kept for load_factor <= 1
        return eps[min(range(len(eps)), key=loads.__getitem__)]


class RoundRobin:
    """A counter to break ties between equally loaded endpoints."""

    __slots__ = ("_n",)

    def __init__(self) -> None:
        self._n = 0

    def next(self, choices: int) -> int:
        self._n = (self._n + 1) % (1 << 30)
        return self._n % choices


def least_requests(endpoints: Sequence[E], load: Callable[[E], int], ties: RoundRobin) -> E:
    """The endpoint with the fewest requests in flight; ties taken in turn."""
    if not endpoints:
        raise LookupError("no endpoints")
    if len(endpoints) == 1:
        return endpoints[0]
    loads = [load(ep) for ep in endpoints]
    low = min(loads)
    tied = [ep for ep, n in zip(endpoints, loads, strict=True) if n == low]
    return tied[0] if len(tied) == 1 else tied[ties.next(len(tied))]


def prompt_prefix(body: Mapping[str, Any], chars: int) -> str:
    """The first ``chars`` characters of a request's prompt (chat: the messages' text; Responses: the
    instructions, then the input's text; else the prompt)."""
    raw = body.get("input")
    if "messages" not in body and (body.get("instructions") or (isinstance(raw, list) and raw and all(
            isinstance(item, dict) for item in raw))):
        items = [{"content": body.get("instructions")}]
        items += [{"content": raw}] if isinstance(raw, str) else list(raw) if isinstance(raw, list) else []
        body = {"messages": items}
    parts: list[str] = []
    size = 0

    def add(text: Any) -> bool:
        nonlocal size
        if isinstance(text, str) and text:
            parts.append(text)
            size += len(text)
        return size >= chars

    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and add(part.get("text")):
                        break
            elif add(content):
                break
            if size >= chars:
                break
    else:
        prompt = body.get("prompt", body.get("input", body.get("query")))
        if isinstance(prompt, list):
            for item in prompt:
                if add(item if isinstance(item, str) else None):
                    break
        else:
            add(prompt)
    return "".join(parts)[:chars]
