"""A small asynchronous Kubernetes API client on aiohttp (what kopf already uses).

It authenticates with the same :class:`kopf.ConnectionInfo` that kopf's login
produced, so the operator has one identity. It does only what the controller
needs: server-side apply, deleting children it no longer wants (with a uid
precondition), status merge-patches and Event creation. Failures
are classified: :class:`TransientApiError` (retry with back-off) or
:class:`PermanentApiError` (the request itself is wrong; retrying won't help).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import kopf

FIELD_MANAGER = "turnout"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
MERGE_PATCH_CONTENT_TYPE = "application/merge-patch+json"

RESOURCES: dict[tuple[str, str], tuple[str, str]] = {  # (apiVersion, kind) -> (api group, plural)
    ("apps/v1", "Deployment"): ("apps", "deployments"),
    ("v1", "Service"): ("", "services"),
    ("v1", "PersistentVolumeClaim"): ("", "persistentvolumeclaims"),
    ("v1", "Event"): ("", "events"),
}


class ApiError(Exception):
    """A failed API request; ``status`` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, status: int, reason: str, message: str, *, method: str = "", path: str = "") -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message


class TransientApiError(ApiError):
    """Connection failures, timeouts, 409 conflicts, 429 and 5xx: retry later."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class PermanentApiError(ApiError):
    """400, 403, 404, 422 and the like: the request is wrong as it stands."""


def api_path(api_version: str, plural: str, namespace: str | None, name: str | None = None,
             subresource: str | None = None) -> str:
    """The REST path of a collection or an object."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    parts = [base]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def _ssl_context(info: kopf.ConnectionInfo, stack: contextlib.ExitStack) -> ssl.SSLContext | bool:
    """An SSL context for the connection info (False for plain HTTP or insecure servers)."""
    if info.server.startswith("http://"):
        return False
    if info.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif info.ca_path or info.ca_data:
        cadata = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
        ctx = ssl.create_default_context(cafile=os.fsdecode(info.ca_path) if info.ca_path else None, cadata=cadata)
    else:
        ctx = ssl.create_default_context()

    def _file(path: Any, data: Any) -> str | None:
        if path:
            return os.fsdecode(path)
        if data:
            handle = stack.enter_context(tempfile.NamedTemporaryFile(buffering=0))  # noqa: SIM115
            handle.write(data.encode() if isinstance(data, str) else data)
            return handle.name
        return None

    cert = _file(info.certificate_path, info.certificate_data)
    key = _file(info.private_key_path, info.private_key_data)
    if cert:
        ctx.load_cert_chain(certfile=cert, keyfile=key)
    return ctx


def _auth_headers(info: kopf.ConnectionInfo) -> dict[str, str]:
    if info.username and info.password:
        return {"Authorization": aiohttp.BasicAuth(info.username, info.password).encode()}
    if info.token:
        return {"Authorization": f"{info.scheme or 'Bearer'} {info.token}"}
    return {}


class KubeClient:
    """The controller's API client. ``relogin`` refreshes credentials after a 401."""

    def __init__(
        self,
        info: kopf.ConnectionInfo,
        *,
        relogin: Callable[[], kopf.ConnectionInfo | None] | None = None,
        timeout: float = 30.0,
        on_error: Callable[[str, int], None] | None = None,
    ) -> None:
        self._info = info
        self._relogin = relogin
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._on_error = on_error

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            with contextlib.ExitStack() as stack:  # temp cert files live only while the context loads them
                ssl_ctx = _ssl_context(self._info, stack)
                self._session = aiohttp.ClientSession(
                    base_url=None,
                    connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=32),
                    headers={**_auth_headers(self._info), "User-Agent": "turnout-operator"},
                    timeout=self._timeout,
                    trust_env=bool(getattr(self._info, "trust_env", False)),
                )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One API call; returns the decoded JSON body or raises an :class:`ApiError`."""
        for attempt in (1, 2):
            session = self._open()
            url = self._info.server.rstrip("/") + path
            data = None if body is None else json.dumps(body, sort_keys=True)
            try:
                async with session.request(
                    method, url, params=params, data=data, proxy=getattr(self._info, "proxy_url", None),
                    headers={"Content-Type": content_type, "Accept": "application/json"},
                ) as response:
                    text = await response.text()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                self._count(method, 0)
                raise TransientApiError(0, type(exc).__name__, str(exc) or "connection failed",
                                        method=method, path=path) from exc
            if status == 401 and attempt == 1 and self._relogin is not None:
                fresh = self._relogin()
                if fresh is not None:
                    self._info = fresh
                    await self.close()
                    continue
            if status < 400:
                return json.loads(text) if text else {}
            self._count(method, status)
            try:
                payload = json.loads(text)
            except ValueError:
                payload = {}
            reason = str(payload.get("reason") or status) if isinstance(payload, dict) else str(status)
            message = str(payload.get("message") or text[:500]) if isinstance(payload, dict) else text[:500]
            if status in (408, 409, 429) or status >= 500:
                delay = float(retry_after) if retry_after and retry_after.isdigit() else None
                raise TransientApiError(status, reason, message, method=method, path=path, retry_after=delay)
            raise PermanentApiError(status, reason, message, method=method, path=path)
        raise AssertionError("unreachable")  # pragma: no cover

    def _count(self, method: str, status: int) -> None:
        if self._on_error is not None:
            self._on_error(method, status)

    async def apply(self, obj: Mapping[str, Any], *, force: bool = True) -> dict[str, Any]:
        """Server-side apply of a whole object with the operator's field manager."""
        group_plural = RESOURCES.get((obj["apiVersion"], obj["kind"]))
        if group_plural is None:
            raise ValueError(f"the operator does not apply {obj['apiVersion']} {obj['kind']}")
        meta = obj["metadata"]
        path = api_path(obj["apiVersion"], group_plural[1], meta.get("namespace"), meta["name"])
        params = {"fieldManager": FIELD_MANAGER, "force": "true" if force else "false"}
        return await self.request("PATCH", path, body=obj, params=params, content_type=APPLY_CONTENT_TYPE)

    async def delete(
        self, obj: Mapping[str, Any], *, uid: str | None = None, propagation: str = "Background"
    ) -> dict[str, Any]:
        """Delete one object; with ``uid``, only that very object (a precondition: 409 if it was replaced).

        A 404 (already gone) is success: returns ``{}``.
        """
        group_plural = RESOURCES.get((obj["apiVersion"], obj["kind"]))
        if group_plural is None:
            raise ValueError(f"the operator does not delete {obj['apiVersion']} {obj['kind']}")
        meta = obj["metadata"]
        path = api_path(obj["apiVersion"], group_plural[1], meta.get("namespace"), meta["name"])
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            return await self.request("DELETE", path, body=options)
        except PermanentApiError as exc:
            if exc.status == 404:
                return {}
            raise

    async def patch_status(
        self, api_version: str, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch the status subresource (``None`` values remove fields)."""
        path = api_path(api_version, plural, namespace, name, "status")
        return await self.request("PATCH", path, body={"status": dict(status)}, params={"fieldManager": FIELD_MANAGER},
                                  content_type=MERGE_PATCH_CONTENT_TYPE)

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", api_path("v1", "events", namespace), body=dict(event),
                                  params={"fieldManager": FIELD_MANAGER})
