"""What the gateway knows: every model it serves, each with its ready endpoints and their in-flight counts.

A *source* (:mod:`turnout.gateway.kubesource` in a cluster,
:mod:`turnout.gateway.staticsource` for ``turnout up``) keeps the registry
current: :meth:`Registry.put_model`, :meth:`Registry.drop_model` and
:meth:`Registry.set_endpoints`. The request path reads it: :meth:`Registry.get`
by served name, :meth:`Model.pick` for an endpoint, :meth:`Model.changed` to wait
for a new one.

A deployment's LoRA adapters (``spec.adapters``) are models of their own here, served under the adapter's
name with ``parent`` the base's served name: their endpoints are those of the deployment's pods that hold
the adapter (``status.adapters[].pods``, matched to endpoints through the EndpointSlices' ``targetRef``), the
same :class:`Endpoint` objects as the base's, so in-flight counts are shared. An adapter no ready pod holds
yet has no endpoint: its requests are held like those of a model without a ready replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from turnout.gateway.routing import PREFIX_HASH, HashRing, RoundRobin, RoutingSpec, least_requests
from turnout.wire.client import EnginePool

log = logging.getLogger("turnout.gateway")


class Endpoint:
    """One ready pod (or local shim): its address, a keep-alive pool to it, and requests in flight."""

    __slots__ = ("host", "in_flight", "key", "pool", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.key = f"{host}:{port}"
        self.in_flight = 0
        self.pool = EnginePool(host, port, connect_timeout=5.0)

    def __repr__(self) -> str:
        return f"Endpoint({self.key}, in_flight={self.in_flight})"


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str = "api-key"


@dataclass(eq=False)
class Model:
    """One ModelDeployment (or local model) as the gateway routes to it."""

    namespace: str
    name: str
    served: str
    routing: RoutingSpec = field(default_factory=RoutingSpec)
    api_key: SecretRef | None = None
    #: ``spec.replicas`` (None: not given, the operator's default of 1)
    replicas: int | None = None
    service: str = ""
    created: int = 0
    #: a base model: its adapters, name -> (source URI, the pods that hold it)
    adapters: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    #: an adapter: the served name of its base model, and its source URI
    parent: str | None = None
    root: str | None = None
    endpoints: list[Endpoint] = field(default_factory=list)
    queued: int = 0
    _ring: HashRing[Endpoint] | None = None
    _ties: RoundRobin = field(default_factory=RoundRobin)
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)

    @property
    def asleep(self) -> bool:
        """Scaled to zero: no endpoint will come unless someone wakes it."""
        return self.replicas == 0

    def pick(self, prefix: str | None, exclude: Iterable[Endpoint] = ()) -> Endpoint | None:
        """An endpoint by the deployment's strategy, or None when there is none (other than ``exclude``)."""
        eps = self.endpoints
        if exclude:
            skip = set(exclude)
            eps = [ep for ep in eps if ep not in skip]
        if not eps:
            return None
        if self.routing.strategy == PREFIX_HASH and prefix is not None:
            ring = self._ring if eps is self.endpoints else HashRing(eps)
            if ring is None:
                ring = self._ring = HashRing(eps)
            return ring.pick(prefix, _load, self.routing.load_factor)
        return least_requests(eps, _load, self._ties)

    def changed(self) -> asyncio.Future[None]:
        """A future done when the model's endpoint set next changes to a non-empty one.

        Registered at once (not when first awaited), so no change between the call and the await is missed;
        cancelling it (a timeout) unregisters it.
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        waiter.add_done_callback(self._forget)
        return waiter

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def _share_endpoints(self, endpoints: list[Endpoint]) -> None:
        """An adapter's endpoints: a subset of its base's, the same objects."""
        if endpoints == self.endpoints:
            return
        self.endpoints, self._ring = endpoints, None
        if endpoints:
            self._wake_waiters()

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _replace_endpoints(self, addrs: Iterable[tuple[str, int]]) -> None:
        wanted = sorted(set(addrs))
        current = {(ep.host, ep.port): ep for ep in self.endpoints}
        if [(ep.host, ep.port) for ep in self.endpoints] == wanted:
            return
        self.endpoints = [current.pop(a, None) or Endpoint(*a) for a in wanted]
        self._ring = None
        for gone in current.values():
            task = asyncio.ensure_future(gone.pool.close())  # idle connections only; requests in flight finish
            _closing.add(task)
            task.add_done_callback(_closing.discard)
        if self.endpoints:
            self._wake_waiters()


_closing: set[asyncio.Future[None]] = set()


def _load(ep: Endpoint) -> int:
    return ep.in_flight


class Registry:
    """Models by served name; endpoints by the Service that selects their pods."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], Model] = {}
        self._by_served: dict[str, Model] = {}
        #: (namespace, service) -> slice name -> ready addresses
        self._slices: dict[tuple[str, str], dict[str, list[tuple[str, int]]]] = {}
        #: (namespace, slice name) -> pod name -> its address (the slices' targetRefs)
        self._pods: dict[tuple[str, str], dict[str, str]] = {}
        #: (namespace, deployment) -> adapter name -> its model
        self._adapters: dict[tuple[str, str], dict[str, Model]] = {}

    def get(self, served: str) -> Model | None:
        return self._by_served.get(served)

    def models(self) -> list[Model]:
        return sorted(self._by_served.values(), key=lambda m: m.served)

    def by_key(self, namespace: str, name: str) -> Model | None:
        return self._by_key.get((namespace, name))

    def every_model(self) -> list[Model]:
        """Every model, those whose served name another model took included."""
        return list(self._by_key.values())

    def put_model(self, model: Model) -> Model:
        """Add or update a model; an existing one keeps its endpoints, counts and waiters."""
        key = (model.namespace, model.name)
        old = self._by_key.get(key)
        if old is not None:
            old.served, old.routing, old.api_key = model.served, model.routing, model.api_key
            old.replicas, old.service, old._ring = model.replicas, model.service, None
            old.adapters = model.adapters
            model = old
        else:
            self._by_key[key] = model
        model._replace_endpoints(self._addresses(model.namespace, model.service))
        self._put_adapters(model)
        self._index()
        return model

    def drop_model(self, namespace: str, name: str) -> None:
        model = self._by_key.pop((namespace, name), None)
        if model is not None:
            model._replace_endpoints(())
            for adapter in self._adapters.pop((namespace, name), {}).values():
                adapter._share_endpoints([])
            self._index()

    def set_pods(self, namespace: str, slice_name: str, pods: dict[str, str] | None) -> None:
        """One EndpointSlice's pods (name -> address; None: the slice is gone): where each adapter is held."""
        if pods is None:
            self._pods.pop((namespace, slice_name), None)
        else:
            self._pods[(namespace, slice_name)] = pods
        for model in self._by_key.values():
            if model.namespace == namespace:
                self._refresh_adapters(model)

    def reset_pods(self, namespaces: Iterable[str] | None, pods: dict[tuple[str, str], dict[str, str]]) -> None:
        """Replace the pods of every slice (of ``namespaces``, or all) after a re-list."""
        for key in list(self._pods):
            if namespaces is None or key[0] in namespaces:
                del self._pods[key]
        self._pods.update(pods)
        for model in self._by_key.values():
            self._refresh_adapters(model)

    def _put_adapters(self, base: Model) -> None:
        """The adapter models of ``base``: kept (with their waiters) across updates, their endpoints refreshed."""
        key = (base.namespace, base.name)
        old = self._adapters.get(key, {})
        new: dict[str, Model] = {}
        for name, (uri, _) in base.adapters.items():
            model = old.pop(name, None) or Model(base.namespace, base.name, name)
            model.routing, model.api_key, model.replicas = base.routing, base.api_key, base.replicas
            model.service, model.created, model.parent, model.root = base.service, base.created, base.served, uri
            new[name] = model
        for gone in old.values():
            gone._share_endpoints([])
        if new:
            self._adapters[key] = new
        else:
            self._adapters.pop(key, None)
        self._refresh_adapters(base)

    def _refresh_adapters(self, base: Model) -> None:
        adapters = self._adapters.get((base.namespace, base.name))
        if not adapters:
            return
        hosts = {pod: host for (ns, _), pods in self._pods.items() if ns == base.namespace
                 for pod, host in pods.items()}
        for name, model in adapters.items():
            holders = {hosts[p] for p in base.adapters[name][1] if p in hosts}
            model._share_endpoints([ep for ep in base.endpoints if ep.host in holders])

    def set_endpoints(self, namespace: str, service: str, slice_name: str, addrs: list[tuple[str, int]] | None
                      ) -> None:
        """One EndpointSlice's ready addresses (None: the slice is gone)."""
        slices = self._slices.setdefault((namespace, service), {})
        if addrs is None:
            slices.pop(slice_name, None)
        else:
            slices[slice_name] = addrs
        if not slices:
            self._slices.pop((namespace, service), None)
        self._refresh(namespace, service)

    def reset_endpoints(self, namespaces: Iterable[str] | None,
                        slices: dict[tuple[str, str, str], list[tuple[str, int]]]) -> None:
        """Replace every slice (of ``namespaces``, or all) with a fresh list (after a re-list)."""
        touched = set(self._slices)
        for key in list(self._slices):
            if namespaces is None or key[0] in namespaces:
                del self._slices[key]
        for (ns, service, name), addrs in slices.items():
            self._slices.setdefault((ns, service), {})[name] = addrs
            touched.add((ns, service))
        for ns, service in touched:
            self._refresh(ns, service)

    def _addresses(self, namespace: str, service: str) -> list[tuple[str, int]]:
        return [a for addrs in self._slices.get((namespace, service), {}).values() for a in addrs]

    def _refresh(self, namespace: str, service: str) -> None:
        for model in self._by_key.values():
            if model.namespace == namespace and model.service == service:
                model._replace_endpoints(self._addresses(namespace, service))
                self._refresh_adapters(model)

    def _index(self) -> None:
        served: dict[str, Model] = {}
        for key in sorted(self._by_key):
            model = self._by_key[key]
            other = served.get(model.served)
            if other is None:
                served[model.served] = model
            else:
                log.warning("%s/%s serves %r, as %s/%s does already: requests go to the latter", key[0], key[1],
                            model.served, other.namespace, other.name)
        for key in sorted(self._adapters):  # a base model's name wins over an adapter's
            for name, adapter in sorted(self._adapters[key].items()):
                other = served.setdefault(name, adapter)
                if other is not adapter:
                    log.warning("adapter %r of %s/%s is not served: %s/%s serves that name already", name,
                                key[0], key[1], other.namespace, other.name)
        self._by_served = served
