"""List, then watch, one collection; list again when the watch's version has expired (``410 Gone``).

An :class:`Informer` hands ``on_list(items)`` every full listing (the first, and each after a 410: it
replaces what the caller knew, so a change made while nobody watched is not missed) and
``on_event(type, object)`` each ``ADDED``, ``MODIFIED`` and ``DELETED`` event after it. A watch that
ends (the server's ``timeoutSeconds``, a renewed client certificate) is opened again from the last
version seen. Another API error backs off (doubling up to a limit) and then resumes the watch, or
lists again if no listing succeeded yet. Anything else (a line that is no watch event, an exception
in a callback) ends :meth:`Informer.run` for its caller to handle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from turnout.kube.client import KubeClient
from turnout.kube.errors import ApiError, TransientApiError

log = logging.getLogger("turnout.kube")

#: The events handed to ``on_event`` (BOOKMARK only moves the version on).
CHANGES = ("ADDED", "MODIFIED", "DELETED")


class Informer:
    """Follow the collection at ``path`` (``params``: selectors); see the module docstring."""

    def __init__(self, client: KubeClient, path: str, *, on_list: Callable[[list[dict[str, Any]]], None],
                 on_event: Callable[[str, dict[str, Any]], None], params: Mapping[str, str] | None = None,
                 timeout_seconds: int = 300, backoff: float = 1.0, max_backoff: float = 30.0) -> None:
        self.client, self.path, self.params = client, path, dict(params or {})
        self.on_list, self.on_event = on_list, on_event
        self.timeout_seconds = timeout_seconds
        self.backoff, self.max_backoff = backoff, max_backoff
        #: the version to watch from; None until listed (and again after a 410)
        self.rv: str | None = None

    async def list(self) -> None:
        """List the collection, hand the items to ``on_list`` and remember the listing's version."""
        listing = await self.client.request("GET", self.path, params=self.params)
        self.on_list(list(listing.get("items") or []))
        self.rv = str((listing.get("metadata") or {}).get("resourceVersion") or "") or None

    async def run(self) -> None:
        """List (unless :meth:`list` ran), then watch until cancelled."""
        delay = self.backoff
        while True:
            try:
                if self.rv is None:
                    await self.list()
                await self._watch()
                delay = self.backoff
            except ApiError as exc:
                if exc.status == 410:  # our version is too old: start over from a fresh list
                    log.info("%s: watch expired (410); listing again", self.path)
                    self.rv = None
                    continue
                log.warning("%s: %s; retrying in %.1f s", self.path, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    async def _watch(self) -> None:
        params = {**self.params, "resourceVersion": self.rv} if self.rv else self.params
        async for event in self.client.watch(self.path, params, timeout_seconds=self.timeout_seconds):
            kind, obj = event["type"], event["object"]
            if kind == "ERROR":  # the API server's Status in the stream (the client raises most of these itself)
                raise TransientApiError(int(obj.get("code") or 410), str(obj.get("reason")),
                                        str(obj.get("message")), method="WATCH", path=self.path)
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv:
                self.rv = str(rv)
            if kind in CHANGES:
                self.on_event(kind, obj)
