"""The task supervisor of the host agent: an unexpected exception in any of its long-running tasks fails the agent.

Expected failures (an API error worth a retry, an expired watch) are handled where they happen. Anything
else that escapes a task (a bug, a malformed watch event) would otherwise end that task silently while the
heartbeat keeps the Node Ready and nobody runs its pods. Instead the task supervisor logs it with its traceback
and wakes the agent, which marks the Node not Ready (reason ``AgentFailed``) and exits with status 1 for
launchd or systemd to restart it; the pods' processes keep running and the next start adopts them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("turnout.agent")
T = TypeVar("T")


class AgentFailed(Exception):
    """A supervised task ended with an unexpected exception (``error``, also the ``__cause__`` when raised)."""

    def __init__(self, task: str, error: BaseException) -> None:
        super().__init__(f"{task} failed: {type(error).__name__}: {error}")
        self.task = task
        self.error = error


class TaskSupervisor:
    """Starts tasks with :meth:`spawn`; :meth:`failed` returns the first unexpected failure among them.

    A task that returns or is cancelled is no failure.
    """

    def __init__(self) -> None:
        self.failure: AgentFailed | None = None
        self._failed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run ``coro`` as a task named ``name`` (the name a failure reports)."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        if self.failure is not None:
            log.error("%s failed as well", task.get_name(), exc_info=error)
            return
        log.error("%s failed; the agent stops (its pods' processes keep running)", task.get_name(), exc_info=error)
        self.failure = AgentFailed(task.get_name(), error)
        self._failed.set()

    async def failed(self) -> AgentFailed:
        """Wait for the first failure."""
        await self._failed.wait()
        assert self.failure is not None
        return self.failure

    async def close(self) -> None:
        """Cancel the tasks still running and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
