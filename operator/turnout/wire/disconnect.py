"""Cancellation on client disconnect, written once for the shim and the gateway.

``async with Disconnect(receive) as watch:`` runs a watcher that reads
``receive`` while the request is answered and cancels the answering task
when the client goes away before :attr:`~Disconnect.finished` is set. That
cancellation ends at the ``async with``: :attr:`~Disconnect.cancelled` says it
happened (the caller counts it, or answers 499); any other cancellation goes on.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from turnout.wire.asgi import Receive


class Disconnect:
    """Watches one request's ``receive`` for ``http.disconnect`` (see the module docstring).

    Set :attr:`finished` just before the last bytes of the answer are sent: a
    disconnect after that cancels nothing.
    """

    __slots__ = ("_receive", "_task", "_watcher", "cancelled", "disconnected", "finished")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[Any] | None = None
        self._watcher: asyncio.Future[None] | None = None
        self.disconnected = False
        self.finished = False
        self.cancelled = False

    async def __aenter__(self) -> Disconnect:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._watcher = asyncio.ensure_future(self._watch(task))
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        assert self._watcher is not None and self._task is not None
        self._watcher.cancel()
        if kind is None or not issubclass(kind, asyncio.CancelledError) or not self.disconnected:
            return False
        uncancel = getattr(self._task, "uncancel", None)  # Python >= 3.11 counts cancellations
        if uncancel is not None:
            uncancel()
        self.cancelled = True
        return True

    async def _watch(self, task: asyncio.Task[Any]) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                if not self.finished:
                    self.disconnected = True
                    task.cancel()
                return
