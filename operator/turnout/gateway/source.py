"""The seam between the gateway's request path and where its models come from.

:class:`~turnout.gateway.kubesource.KubeSource` watches ModelDeployments and
EndpointSlices in a cluster; :class:`StaticSource` serves a fixed set of local
shims (``turnout up -f a.yaml -f b.yaml``). Both keep a
:class:`~turnout.gateway.registry.Registry` current.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from turnout.gateway.registry import Model, Registry
from turnout.gateway.routing import RoutingSpec


class Source(Protocol):
    """Fills the registry; wakes models scaled to zero; knows the API key each model requires."""

    registry: Registry

    async def start(self) -> None:
        """Fill the registry before the first request is served, then keep it current."""

    async def close(self) -> None: ...

    async def wake(self, model: Model) -> None:
        """Ask for the model to be scaled up from zero (called once per wake)."""

    async def api_key(self, model: Model) -> str | None:
        """The hex SHA-256 of the Bearer key ``model`` requires (None: open); raises :class:`KeyUnavailable`
        when it is not known (not published, unreadable)."""


class KeyUnavailable(Exception):
    """The key a model requires cannot be read right now (the request is refused, never let through)."""


@dataclass(frozen=True)
class StaticModel:
    """A model served by a process on a fixed address."""

    served: str
    host: str
    port: int
    routing: RoutingSpec = field(default_factory=RoutingSpec)
    adapters: dict[str, str] = field(default_factory=dict)  # LoRA adapters the process serves: name -> URI


class StaticSource:
    """Fixed models at fixed addresses: no Kubernetes, nothing to wake, no per-model keys."""

    NAMESPACE = "local"

    def __init__(self, models: Sequence[StaticModel]) -> None:
        self.registry = Registry()
        self._models = list(models)

    async def start(self) -> None:
        for m in self._models:
            adapters = {name: (uri, (m.served,)) for name, uri in m.adapters.items()}  # held by its one process
            self.registry.put_model(Model(namespace=self.NAMESPACE, name=m.served, served=m.served,
                                          routing=m.routing, service=m.served, adapters=adapters))
            self.registry.set_pods(self.NAMESPACE, m.served, {m.served: m.host})
            self.registry.set_endpoints(self.NAMESPACE, m.served, "static", [(m.host, m.port)])

    async def close(self) -> None:
        for m in self._models:
            self.registry.drop_model(self.NAMESPACE, m.served)

    async def wake(self, model: Model) -> None:
        return None

    async def api_key(self, model: Model) -> str | None:
        return None
