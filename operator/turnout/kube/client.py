"""The project's Kubernetes API client: kubernetes_asyncio's ApiClient, with the calls we make.

kubernetes_asyncio does the HTTP, TLS, authentication and watch framing;
this class names our calls (server-side apply with our field manager,
status merge-patches, ``events.k8s.io/v1`` Events, deletes with a uid
precondition, plain get/create/patch and watches by path), reconnects when
the client certificate files are renewed, and classifies
failures: :class:`TransientApiError` (retry with back-off) or
:class:`PermanentApiError` (the request is wrong as it stands). Objects go
in and come back as plain dicts: no model classes on the hot path.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch

from turnout.kube.credentials import Credentials
from turnout.kube.errors import ApiError, MalformedWatchEvent, PermanentApiError, TransientApiError, from_response
from turnout.kube.session import http_session

log = logging.getLogger("turnout.kube")
# kubernetes_asyncio logs every response body at DEBUG: a Secret read would put its data in a verbose log.
logging.getLogger("kubernetes_asyncio.client.rest").setLevel(logging.INFO)
FIELD_MANAGER = "turnout"
#: A pool replaced by a renewed client certificate is closed this long after (the longest watch read is 330 s).
RETIRE_SECONDS = 360.0
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
_OBJECT = {code: "object" for code in (200, 201, 202)}

#: (apiVersion, kind) -> plural, for the kinds we apply or delete by object.
RESOURCES: dict[tuple[str, str], str] = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkersets",
    ("inference.networking.k8s.io/v1", "InferencePool"): "inferencepools",
    ("v1", "Pod"): "pods",
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Secret"): "secrets",
    ("events.k8s.io/v1", "Event"): "events",
}


def api_path(api_version: str, plural: str, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
    """The REST path of a collection or an object."""
    parts = [f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def object_path(obj: Mapping[str, Any]) -> str:
    plural = RESOURCES.get((obj["apiVersion"], obj["kind"]))
    if plural is None:
        raise ValueError(f"no REST path known for {obj['apiVersion']} {obj['kind']}")
    meta = obj["metadata"]
    return api_path(obj["apiVersion"], plural, meta.get("namespace"), meta.get("name"))


def event_name(regarding_name: str, when_ns: int | None = None) -> str:
    """An Event's name as client-go's recorders make it: ``<object>.<unix nanoseconds in hex>``.

    Not ``generateName: "<object>."``: the API server validates a generateName as a DNS subdomain with
    only a trailing ``-`` allowed, so that prefix is refused (422) for every object.
    """
    stamp = f"{when_ns if when_ns is not None else time.time_ns():x}"
    base = regarding_name[: 253 - len(stamp) - 1].rstrip(".-")
    return f"{base}.{stamp}"


def micro_time(when: datetime.datetime | None = None) -> str:
    """A ``metav1.MicroTime`` (RFC 3339 with microseconds), as ``eventTime`` needs."""
    when = when or datetime.datetime.now(datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubeClient:
    """One identity's API access. Open it in a running event loop; ``close()`` when done."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        timeout: float = 30.0,
        on_error: Callable[[str, int], None] | None = None,
        user_agent: str = "turnout",
        connections: int = 32,
    ) -> None:
        self.credentials = credentials
        # kubernetes_asyncio's default pool is 5 connections per CPU; the operator has up to 32 reconciles
        # in flight, each waiting on one request at a time.
        self._connections = connections
        self._timeout = timeout
        self._on_error = on_error
        self._user_agent = user_agent
        self._api: ApiClient | None = None
        self._retiring: dict[asyncio.Task[None], aiohttp.ClientSession] = {}  # pools of a replaced certificate

    async def _client(self) -> ApiClient:
        if self._api is not None and self.credentials.tls_changed():
            await self._reconnect()
        if self._api is None:
            api = ApiClient(self.credentials.configuration)
            api.user_agent = self._user_agent
            # The library's session reads the environment on every request (a thread hop each for
            # ~/.netrc and the proxy variables); ours has the same TLS and the proxy resolved once.
            await api.rest_client.pool_manager.close()
            api.rest_client.pool_manager = http_session(self.credentials, limit=self._connections)
            self._api = api
        return self._api

    async def _reconnect(self) -> None:
        """The client certificate was renewed: new requests go out on a new pool that presents it.

        Requests in flight finish on the old pool (their connections authenticated with the old
        certificate, which is still valid: renewal comes well before expiry); a watch on it ends at its
        next event or bookmark, and its caller watches again on the new pool. The old pool is closed
        once even a watch's read timeout has passed (aiohttp's close would leave a reader waiting forever).
        """
        assert self._api is not None
        try:
            fresh = http_session(self.credentials, limit=self._connections)
        except (ssl.SSLError, OSError) as exc:  # half-written files: keep the old pool, try again later
            log.warning("cannot load the renewed client certificate yet: %s", exc)
            return
        old, self._api.rest_client.pool_manager = self._api.rest_client.pool_manager, fresh
        log.info("client certificate changed: reconnecting with it")
        task = asyncio.create_task(self._close_later(old))
        self._retiring[task] = old
        task.add_done_callback(lambda t: self._retiring.pop(t, None))

    @staticmethod
    async def _close_later(session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(RETIRE_SECONDS)
        await session.close()

    def _pool(self) -> Any:
        return self._api.rest_client.pool_manager if self._api is not None else None

    async def close(self) -> None:
        for task, session in list(self._retiring.items()):
            task.cancel()
            await session.close()
        self._retiring.clear()
        if self._api is not None:
            await self._api.close()
            self._api = None

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----- the one request path -----

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """One API call; the decoded JSON body, or an :class:`ApiError`. A 401 renews the token once."""
        for attempt in (1, 2):
            try:
                data = await (await self._client()).call_api(
                    path, method,
                    query_params=list((params or {}).items()),
                    header_params={"Content-Type": content_type, "Accept": "application/json"},
                    body=body,
                    auth_settings=["BearerToken"],
                    response_types_map=_OBJECT,
                    _return_http_data_only=True,
                    _request_timeout=timeout or self._timeout,
                )
            except ApiException as exc:
                if exc.status == 401 and attempt == 1 and await self.credentials.invalidate():
                    continue
                raise self._error(exc, method, path) from exc
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                self._count(method, 0)
                raise TransientApiError(0, type(exc).__name__, str(exc) or "connection failed",
                                        method=method, path=path) from exc
            return data if isinstance(data, dict) else {}
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, exc: ApiException, method: str, path: str) -> ApiError:
        status = int(exc.status or 0)
        self._count(method, status)
        if status == 0:
            return TransientApiError(0, "ConnectionFailed", str(exc.reason), method=method, path=path)
        retry_after = (exc.headers or {}).get("Retry-After") if exc.headers else None
        return from_response(status, exc.body, retry_after, method=method, path=path)

    def _count(self, method: str, status: int) -> None:
        if self._on_error is not None:
            self._on_error(method, status)

    # ----- the calls -----

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object at ``path``, or None when it does not exist."""
        try:
            return await self.request("GET", path)
        except PermanentApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body=dict(body), params={"fieldManager": FIELD_MANAGER})

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, body=dict(patch), content_type=MERGE_PATCH,
                                  params={"fieldManager": FIELD_MANAGER})

    async def apply(self, obj: Mapping[str, Any], *, force: bool = True) -> dict[str, Any]:
        """Server-side apply of a whole object with our field manager."""
        params = {"fieldManager": FIELD_MANAGER, "force": "true" if force else "false"}
        return await self.request("PATCH", object_path(obj), body=dict(obj), params=params, content_type=APPLY_PATCH)

    async def delete(
        self, obj: Mapping[str, Any] | str, *, uid: str | None = None, propagation: str | None = "Background",
        grace_seconds: int | None = None,
    ) -> bool:
        """Delete an object (or the object at a path); with ``uid``, only that very object.

        Returns False when it was already gone, or (with ``uid``) replaced by another of the same name.
        """
        path = obj if isinstance(obj, str) else object_path(obj)
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if propagation:
            options["propagationPolicy"] = propagation
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", path, body=options)
        except PermanentApiError as exc:
            if exc.status == 404:
                return False
            raise
        except TransientApiError as exc:
            if exc.status == 409 and uid:  # the uid precondition failed: that object is gone already
                return False
            raise
        return True

    async def patch_status(
        self, api_version: str, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch the status subresource (``None`` values remove fields)."""
        return await self.merge_patch(api_path(api_version, plural, namespace, name, "status"),
                                      {"status": dict(status)})

    async def create_event(
        self, regarding: Mapping[str, Any], *, type_: str, reason: str, note: str, action: str,
        controller: str, instance: str,
    ) -> dict[str, Any]:
        """Post an ``events.k8s.io/v1`` Event about ``regarding`` (an object reference with namespace)."""
        namespace = str(regarding["namespace"])
        now = datetime.datetime.now(datetime.timezone.utc)
        event = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": event_name(str(regarding["name"])), "namespace": namespace},
            "regarding": dict(regarding),
            "type": type_,
            "reason": reason[:128],
            "action": action[:128],
            "note": note[:1024],
            "eventTime": micro_time(now),
            "reportingController": controller,
            "reportingInstance": instance[:128],
        }
        return await self.create(api_path("events.k8s.io/v1", "events", namespace), event)

    async def watch(self, path: str, params: Mapping[str, Any], *, timeout_seconds: int = 300
                    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events (``{"type", "object"}``) until the server ends the stream.

        Raises :class:`ApiError`, or :class:`MalformedWatchEvent` for a line that is no watch event.
        """

        async def _list(watch: bool = True, _preload_content: bool = False, resource_version: str | None = None,
                        **_: Any) -> Any:
            query = {**params, "watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": timeout_seconds}
            if resource_version:
                query["resourceVersion"] = resource_version
            return await (await self._client()).call_api(
                path, "GET", query_params=list(query.items()), header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
                _request_timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=timeout_seconds + 30),
            )

        stream = Watch(return_type="object")
        await self._client()
        pool = self._pool()
        try:
            async for event in stream.stream(_list, timeout_seconds=timeout_seconds,
                                             resource_version=params.get("resourceVersion")):
                # kubernetes_asyncio hands on a line that is not JSON as that string.
                if not isinstance(event, dict) or not isinstance(event.get("raw_object"), dict):
                    raise MalformedWatchEvent(f"WATCH {path}: the server sent no watch event: {str(event)[:200]!r}")
                yield {"type": event["type"], "object": event["raw_object"]}
                if self._pool() is not pool:
                    return  # the certificate was renewed: the caller watches again, on the new pool
        except ApiException as exc:
            raise self._error(exc, "WATCH", path) from exc
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise TransientApiError(0, type(exc).__name__, str(exc) or "watch failed", method="WATCH",
                                    path=path) from exc
        finally:
            await stream.close()
