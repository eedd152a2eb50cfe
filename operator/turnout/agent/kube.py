"""The agent's API access: the operator's :class:`~turnout.controller.kube.KubeClient` plus watch streams.

One Kubernetes client in the project: the agent reuses the operator's aiohttp
client (same error classes, same authentication) and adds what a node needs:
plain get/create/patch/delete and a streaming watch.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any
from unittest import mock

import aiohttp
import kopf

from turnout.controller.kube import (
    MERGE_PATCH_CONTENT_TYPE,
    ApiError,
    KubeClient,
    PermanentApiError,
    TransientApiError,
)

__all__ = ["AgentKube", "ApiError", "PermanentApiError", "TransientApiError", "load_connection"]


def load_connection(kubeconfig: str | None = None) -> kopf.ConnectionInfo:
    """Credentials from ``kubeconfig`` (else ``$KUBECONFIG``, else ``~/.kube/config``), read by kopf's own loader."""
    env = {"KUBECONFIG": os.path.expanduser(kubeconfig)} if kubeconfig else {}
    if kubeconfig and not os.path.exists(env["KUBECONFIG"]):
        raise FileNotFoundError(f"kubeconfig {kubeconfig} does not exist")
    with mock.patch.dict(os.environ, env):
        try:
            info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
        except (KeyError, OSError, kopf.LoginError) as exc:
            raise RuntimeError(f"cannot read the kubeconfig: {exc}") from exc
    if info is None:
        raise RuntimeError("no kubeconfig: pass --kubeconfig, set KUBECONFIG, or create ~/.kube/config")
    return info


class AgentKube(KubeClient):
    """:class:`KubeClient` with the calls a node agent makes."""

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object at ``path``, or None when it does not exist."""
        try:
            return await self.request("GET", path)
        except PermanentApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body=dict(body))

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, body=dict(patch), content_type=MERGE_PATCH_CONTENT_TYPE)

    async def delete(self, path: str, *, grace_seconds: int | None = None, uid: str | None = None) -> bool:
        """Delete ``path`` (with a grace period and a uid precondition); False when it was already gone."""
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        params = {}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
            params["gracePeriodSeconds"] = str(grace_seconds)
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", path, body=body, params=params)
        except PermanentApiError as exc:
            if exc.status in (404, 409):  # gone, or a new object with the same name (uid precondition)
                return False
            raise
        return True

    async def watch(self, path: str, params: Mapping[str, str], *, timeout_seconds: int = 300
                    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events (``{"type", "object"}``) until the server ends the stream; raises :class:`ApiError`."""
        session = self._open()
        query = {**params, "watch": "true", "timeoutSeconds": str(timeout_seconds), "allowWatchBookmarks": "true"}
        url = self._info.server.rstrip("/") + path
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=timeout_seconds + 30)
        try:
            async with session.get(url, params=query, timeout=timeout, headers={"Accept": "application/json"}) as resp:
                if resp.status >= 400:
                    text = await resp.text()
                    cls = TransientApiError if resp.status >= 500 or resp.status in (408, 429) else PermanentApiError
                    raise cls(resp.status, str(resp.status), text[:500], method="WATCH", path=path)
                async for line in resp.content:
                    if line.strip():
                        yield json.loads(line)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise TransientApiError(0, type(exc).__name__, str(exc) or "watch failed", method="WATCH",
                                    path=path) from exc
