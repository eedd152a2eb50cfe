"""Leader election on a ``coordination.k8s.io/v1`` Lease, with client-go's semantics.

One candidate holds the Lease (``spec.holderIdentity``) and renews it (``renewTime``) every
``retry_period``; the others try every ``retry_period`` and take it over once it has not changed for
``lease_duration`` seconds as *they* observed it (local monotonic time, as client-go does: no trust in
clocks across machines). Every write is an update (PUT) carrying the ``resourceVersion`` read, so of two
candidates racing for an expired Lease only one wins (409 for the other). A leader that cannot renew
for ``renew_deadline`` seconds has lost leadership; a leader that stops gracefully releases the Lease
(empty holder, ``leaseDurationSeconds: 1``) so a standby takes over at its next try.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from turnout.kube.client import KubeClient, api_path
from turnout.kube.errors import ApiError

log = logging.getLogger("turnout.kube.lease")
API_VERSION = "coordination.k8s.io/v1"


class LeadershipLost(Exception):
    """The Lease could not be renewed within the renew deadline (or another candidate holds it now)."""


@dataclass(frozen=True)
class LeaseSettings:
    """The Lease and client-go's timings (the defaults of controller-runtime)."""

    name: str
    namespace: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not (self.lease_duration > self.renew_deadline > self.retry_period > 0):
            raise ValueError("leader election needs lease duration > renew deadline > retry period > 0")
        if not self.identity:
            raise ValueError("leader election needs an identity (the pod name)")


def _micro_time() -> str:
    """A MicroTime, as the API server formats it."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """One candidate for one Lease."""

    def __init__(self, client: KubeClient, settings: LeaseSettings, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.settings = settings
        self._clock = clock
        self._observed: dict[str, Any] | None = None  # the last spec read
        self._observed_at = 0.0  # when that spec last changed, by our clock
        self._renewed_at: float | None = None  # our last successful acquire or renew
        self.path = api_path(API_VERSION, "leases", settings.namespace, settings.name)

    @property
    def is_leader(self) -> bool:
        """Whether our last write made us the holder and it is still within the renew deadline."""
        return self._renewed_at is not None and self._clock() - self._renewed_at < self.settings.renew_deadline

    def _spec(self, acquire_time: str | None, transitions: int) -> dict[str, Any]:
        now = _micro_time()
        return {"holderIdentity": self.settings.identity,
                "leaseDurationSeconds": max(1, math.ceil(self.settings.lease_duration)),
                "acquireTime": acquire_time or now, "renewTime": now, "leaseTransitions": transitions}

    async def try_acquire_or_renew(self) -> bool:
        """One attempt (client-go's ``tryAcquireOrRenew``): True when we hold the Lease after it."""
        s = self.settings
        try:
            current = await self.client.get(self.path)
            if current is None:
                body = {"apiVersion": API_VERSION, "kind": "Lease",
                        "metadata": {"name": s.name, "namespace": s.namespace}, "spec": self._spec(None, 0)}
                await self.client.request("POST", api_path(API_VERSION, "leases", s.namespace), body=body)
                self._won()
                return True
            spec = current.get("spec") or {}
            if spec != self._observed:
                self._observed, self._observed_at = spec, self._clock()
            holder = spec.get("holderIdentity") or ""
            duration = float(spec.get("leaseDurationSeconds") or s.lease_duration)
            if holder and holder != s.identity and self._clock() - self._observed_at < duration:
                self._renewed_at = None
                return False  # held by another and not expired
            ours = holder == s.identity
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)
            body = {**current, "spec": self._spec(spec.get("acquireTime") if ours else None, transitions)}
            await self.client.request("PUT", self.path, body=body)
        except ApiError as exc:  # a 409 (another won the race), or the API server unreachable: try again later
            log.debug("lease %s/%s: %s", s.namespace, s.name, exc)
            return False
        if not ours:
            log.info("lease %s/%s acquired by %s (was %s)", s.namespace, s.name, s.identity, holder or "free")
        self._won()
        return True

    def _won(self) -> None:
        self._renewed_at = self._clock()
        self._observed = None

    async def acquire(self) -> None:
        """Return once we hold the Lease (tries every ``retry_period``)."""
        while not await self.try_acquire_or_renew():
            await asyncio.sleep(self.settings.retry_period)

    async def hold(self) -> None:
        """Renew every ``retry_period`` while we lead; raise :class:`LeadershipLost` when a renewal has not
        succeeded for ``renew_deadline`` seconds (never returns otherwise)."""
        s = self.settings
        while True:
            await asyncio.sleep(s.retry_period)
            deadline = (self._renewed_at or self._clock()) + s.renew_deadline
            while not await self.try_acquire_or_renew():
                if self._clock() >= deadline or (self._observed is not None and \
                        (self._observed.get("holderIdentity") or s.identity) != s.identity):
                    self._renewed_at = None
                    raise LeadershipLost(f"lease {s.namespace}/{s.name}: not renewed within {s.renew_deadline:g} s")
                await asyncio.sleep(min(s.retry_period, max(0.0, deadline - self._clock())))

    async def release(self) -> None:
        """Give the Lease up if we hold it (empty holder, 1 s duration): a standby takes over at its next try."""
        if self._renewed_at is None:
            return
        self._renewed_at = None
        try:
            current = await self.client.get(self.path)
            if current is None or (current.get("spec") or {}).get("holderIdentity") != self.settings.identity:
                return
            spec = {**current["spec"], "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _micro_time()}
            await self.client.request("PUT", self.path, body={**current, "spec": spec})
            log.info("lease %s/%s released by %s", self.settings.namespace, self.settings.name, self.settings.identity)
        except ApiError as exc:
            log.warning("lease %s/%s: could not release: %s", self.settings.namespace, self.settings.name, exc)
