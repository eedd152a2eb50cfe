"""The gateway's models from a cluster: ModelDeployments and their EndpointSlices, listed then watched.

Each watched scope (a namespace, or the whole cluster) has two informers
(:class:`turnout.kube.informer.Informer`: list, watch, list again on ``410
Gone``), one for ``modeldeployments`` and one for ``discovery.k8s.io``
EndpointSlices. An EndpointSlice belongs to the Service named in its
``kubernetes.io/service-name`` label, which the operator names like the
ModelDeployment (``turnout.render.manifests.child_name``); its ready
endpoints' addresses with the slice's ``http`` port are where requests go, and
their ``targetRef`` pod names say which endpoints hold a LoRA adapter (the
ModelDeployment's ``status.adapters[].pods``, written by the operator).

A model scaled to zero is woken through its ``scale`` subresource, from 0 to 1
only: the Scale is read and, at 0, merge-patched to ``{"spec": {"replicas": 1}}``
with the ``resourceVersion`` read, so a write the gateway's watch has not shown
yet (a user's or the autoscaler's scale up, another gateway's wake) is never
undone (see :meth:`KubeSource.wake`). A model with ``apiKeySecretRef``
requires its key, which the gateway never reads: the operator publishes its
SHA-256 in the namespace's Secret ``turnout-gateway-keys``
(:mod:`turnout.controller.keypublish`), the only Secret the gateway may ``get``,
read here and cached for :data:`KEY_TTL` seconds (a failed refresh keeps the
digests read before).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import logging
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from typing import Any

from turnout.api import API_VERSION, GATEWAY_KEYS_SECRET, PLURAL
from turnout.gateway.registry import Model, Registry, SecretRef
from turnout.gateway.routing import RoutingSpec
from turnout.gateway.source import KeyUnavailable
from turnout.kube import ApiError, KubeClient, api_path
from turnout.kube.informer import Informer
from turnout.render.manifests import PORT_NAME, child_name

log = logging.getLogger("turnout.gateway")

SLICES = "discovery.k8s.io/v1"
SERVICE_LABEL = "kubernetes.io/service-name"
#: seconds the published key digests of a namespace are used before they are read again
KEY_TTL = 5.0
#: seconds before a model missing from the digests read makes the gateway read them again
MISS_RETRY = 1.0
#: reads of the Scale a wake makes while other writes keep refusing its patch (409) before it gives up
WAKE_TRIES = 5


def model_from(md: Mapping[str, Any]) -> Model:
    """A :class:`Model` from a ModelDeployment object (raw dict, the CRD's JSON names)."""
    meta, spec = md.get("metadata") or {}, md.get("spec") or {}
    name = str(meta.get("name"))
    held = {str(a.get("name")): tuple(str(p) for p in a.get("pods") or [])
            for a in (md.get("status") or {}).get("adapters") or [] if isinstance(a, dict)}
    adapters = {str(a["name"]): (str(a.get("uri")), held.get(str(a["name"]), ()))
                for a in spec.get("adapters") or [] if isinstance(a, dict) and a.get("name")}
    ref = spec.get("apiKeySecretRef")
    replicas = spec.get("replicas")
    return Model(
        namespace=str(meta.get("namespace") or "default"),
        name=name,
        served=str(spec.get("servedModelName") or name),
        routing=RoutingSpec.from_spec(spec.get("routing")),
        api_key=SecretRef(str(ref["name"]), str(ref.get("key") or "api-key")) if isinstance(ref, dict)
        and ref.get("name") else None,
        replicas=replicas if isinstance(replicas, int) else None,
        service=child_name(name),
        created=_epoch(meta.get("creationTimestamp")),
        adapters=adapters,
    )


def slice_pods(es: Mapping[str, Any]) -> dict[str, str]:
    """The ready endpoints of an EndpointSlice as pod name -> address (from their ``targetRef``)."""
    out = {}
    for ep in es.get("endpoints") or []:
        ref, addresses = ep.get("targetRef") or {}, ep.get("addresses") or []
        if ref.get("kind") == "Pod" and ref.get("name") and addresses:
            out[str(ref["name"])] = str(addresses[0])
    return out


def slice_addresses(es: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The ready endpoints of an EndpointSlice as (address, port of the ``http`` port)."""
    if es.get("addressType") not in ("IPv4", "IPv6"):
        return []
    ports = es.get("ports") or []
    port = next((p.get("port") for p in ports if p.get("name") == PORT_NAME), None)
    if port is None and len(ports) == 1:
        port = ports[0].get("port")
    if not isinstance(port, int):
        return []
    out = []
    for ep in es.get("endpoints") or []:
        conditions = ep.get("conditions") or {}
        addresses = ep.get("addresses") or []
        # discovery/v1: an unknown (absent) ready condition is to be read as ready
        if addresses and conditions.get("ready") is not False:
            out.append((str(addresses[0]), port))
    return out


def _epoch(stamp: Any) -> int:
    if not isinstance(stamp, str):
        return 0
    try:
        return int(datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


class KubeSource:
    """Models and endpoints from ModelDeployments and EndpointSlices in ``namespaces`` (None: all)."""

    def __init__(self, client: KubeClient, namespaces: Iterable[str] | None = None, *,
                 watch_timeout: int = 300, key_ttl: float = KEY_TTL) -> None:
        self.client = client
        self.namespaces = sorted(set(namespaces)) if namespaces is not None else None
        self.registry = Registry()
        self.key_ttl = key_ttl
        self._keys: dict[str, tuple[dict[str, str], float]] = {}  # namespace -> (digests, when read)
        self._key_locks: dict[str, asyncio.Lock] = {}
        self._tasks: list[asyncio.Task[None]] = []
        scopes: list[str | None] = list(self.namespaces) if self.namespaces is not None else [None]
        self._informers = []
        for ns in scopes:
            self._informers.append(Informer(client, api_path(API_VERSION, PLURAL, ns), on_list=self._lister_models(ns),
                                            on_event=self._on_model, timeout_seconds=watch_timeout))
            self._informers.append(Informer(client, api_path(SLICES, "endpointslices", ns),
                                            on_list=self._lister_slices(ns), on_event=self._on_slice,
                                            timeout_seconds=watch_timeout))

    async def start(self) -> None:
        """List everything once (so the first request finds its model), then follow the watches."""
        for informer in self._informers:
            await informer.list()
        self._tasks = [asyncio.create_task(i.run()) for i in self._informers]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    # ----- ModelDeployments ---------------------------------------------------------------------

    def _lister_models(self, ns: str | None) -> Callable[[list[dict[str, Any]]], None]:
        def on_list(items: list[dict[str, Any]]) -> None:
            seen = set()
            for md in items:
                model = self.registry.put_model(model_from(md))
                seen.add((model.namespace, model.name))
            for model in self.registry.every_model():
                if (ns is None or model.namespace == ns) and (model.namespace, model.name) not in seen:
                    self.registry.drop_model(model.namespace, model.name)
        return on_list

    def _on_model(self, kind: str, md: dict[str, Any]) -> None:
        meta = md.get("metadata") or {}
        if kind == "DELETED":
            self.registry.drop_model(str(meta.get("namespace") or "default"), str(meta.get("name")))
        else:
            self.registry.put_model(model_from(md))

    # ----- EndpointSlices -----------------------------------------------------------------------

    def _lister_slices(self, ns: str | None) -> Callable[[list[dict[str, Any]]], None]:
        def on_list(items: list[dict[str, Any]]) -> None:
            slices, pods = {}, {}
            for es in items:
                meta = es.get("metadata") or {}
                service = (meta.get("labels") or {}).get(SERVICE_LABEL)
                if service:
                    slices[(str(meta.get("namespace")), service, str(meta.get("name")))] = slice_addresses(es)
                    pods[(str(meta.get("namespace")), str(meta.get("name")))] = slice_pods(es)
            self.registry.reset_pods(None if ns is None else [ns], pods)
            self.registry.reset_endpoints(None if ns is None else [ns], slices)
        return on_list

    def _on_slice(self, kind: str, es: dict[str, Any]) -> None:
        meta = es.get("metadata") or {}
        service = (meta.get("labels") or {}).get(SERVICE_LABEL)
        if service:
            namespace, name = str(meta.get("namespace")), str(meta.get("name"))
            self.registry.set_pods(namespace, name, None if kind == "DELETED" else slice_pods(es))
            self.registry.set_endpoints(namespace, service, name, None if kind == "DELETED" else slice_addresses(es))

    # ----- wake and keys ------------------------------------------------------------------------

    async def wake(self, model: Model) -> None:
        """Scale a ModelDeployment from zero to one replica through its ``scale`` subresource; never lower it.

        ``model`` is the watch's view, which may be stale: the Scale is read, and only at 0 patched to 1
        carrying the ``resourceVersion`` read. A write in between makes the API server refuse the patch
        (409): the Scale is read again, and a deployment already at 1 or more is left as it is.
        """
        path = api_path(API_VERSION, PLURAL, model.namespace, model.name, "scale")
        for attempt in range(1, WAKE_TRIES + 1):
            scale = await self.client.get(path)
            if scale is None:
                log.info("not waking %s/%s: it no longer exists", model.namespace, model.name)
                return
            # autoscaling/v1 omits a spec.replicas of 0
            replicas = (scale.get("spec") or {}).get("replicas") or 0
            if replicas >= 1:
                log.info("not waking %s/%s: it is at %d replicas already", model.namespace, model.name, replicas)
                return
            version = (scale.get("metadata") or {}).get("resourceVersion")
            try:
                await self.client.merge_patch(path, {"metadata": {"resourceVersion": version},
                                                     "spec": {"replicas": 1}})
                return
            except ApiError as exc:
                if exc.status != 409 or attempt == WAKE_TRIES:
                    raise

    async def api_key(self, model: Model) -> str | None:
        """The hex SHA-256 of the key ``model`` requires, from its namespace's ``turnout-gateway-keys``.

        The Secret is read at most every :attr:`key_ttl` seconds per namespace, and again (at most every
        :data:`MISS_RETRY` seconds) when it lacks the model: the operator may just have published it.
        """
        if model.api_key is None:
            return None
        loop = asyncio.get_running_loop()
        cached = self._keys.get(model.namespace)
        if cached is None or not self._usable(cached, model.name, loop.time()):
            async with self._key_locks.setdefault(model.namespace, asyncio.Lock()):
                cached = self._keys.get(model.namespace)
                if cached is None or not self._usable(cached, model.name, loop.time()):
                    try:
                        digests = await self._read_digests(model.namespace)
                    except KeyUnavailable as exc:
                        if cached is None:
                            raise
                        log.warning("%s; keeping the digests read before", exc)
                        digests = cached[0]
                    cached = (digests, loop.time())
                    self._keys[model.namespace] = cached
        return self._digest(model, cached[0])

    def _usable(self, cached: tuple[dict[str, str], float], name: str, now: float) -> bool:
        age = now - cached[1]
        return age < self.key_ttl and (name in cached[0] or age < MISS_RETRY)

    @staticmethod
    def _digest(model: Model, digests: Mapping[str, str]) -> str:
        digest = digests.get(model.name)
        if digest is None:
            raise KeyUnavailable(f"its key is not published yet (the operator writes its SHA-256 to Secret "
                                 f"{model.namespace}/{GATEWAY_KEYS_SECRET} once it has read the key in Secret "
                                 f"{model.namespace}/{model.api_key.name if model.api_key else '?'}; see the "
                                 f"ModelDeployment's Events)")
        return digest

    async def _read_digests(self, namespace: str) -> dict[str, str]:
        where = f"Secret {namespace}/{GATEWAY_KEYS_SECRET}"
        try:
            secret = await self.client.get(api_path("v1", "secrets", namespace, GATEWAY_KEYS_SECRET))
        except ApiError as exc:
            raise KeyUnavailable(f"cannot read {where}: {exc.status} {exc.reason}") from None
        out = {}
        for name, raw in ((secret or {}).get("data") or {}).items():
            with suppress(binascii.Error, ValueError, UnicodeDecodeError):
                out[str(name)] = base64.b64decode(raw, validate=True).decode("ascii").strip()
        return out
