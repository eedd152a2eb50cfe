"""A keyed work queue for reconciles triggered by the world (nodes, Deployments, Pods).

Like client-go's: a key waits at most once in the queue, is processed by one
worker at a time (added again while processing, it runs once more after),
and failed keys come back after an exponential back-off timer, not a sleep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

logger = logging.getLogger(__name__)


class RetryLater(Exception):
    """Raised by the worker function: process this key again after ``delay`` seconds (or back-off)."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class WorkQueue:
    def __init__(
        self,
        work: Callable[[Hashable], Awaitable[None]],
        *,
        workers: int = 4,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
    ) -> None:
        self._work = work
        self._workers = workers
        self._base, self._max = base_delay, max_delay
        self._queue: asyncio.Queue[Hashable] = asyncio.Queue()
        self._queued: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, key: Hashable) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: Hashable, delay: float) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._fire, key)

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def __len__(self) -> int:
        return len(self._queued) + len(self._processing)

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._run(), name=f"turnout-worker-{i}")
                           for i in range(self._workers)]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _run(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._processing.add(key)
            cancelled = False
            try:
                await self._work(key)
            except asyncio.CancelledError:
                cancelled = True  # the queue is stopping: the key waits for its next start
                raise
            except RetryLater as exc:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = exc.delay if exc.delay is not None else min(self._max, self._base * 2 ** (failures - 1))
                logger.info("retrying %s in %.1fs: %s", key, delay, exc)
                self.add_after(key, delay)
            except Exception:  # a bug must not kill the worker; the key is retried with back-off
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                logger.exception("reconciling %s failed unexpectedly", key)
                self.add_after(key, min(self._max, self._base * 2 ** (failures - 1)))
            else:
                self._failures.pop(key, None)
            finally:
                self._processing.discard(key)
                if key in self._dirty or cancelled:
                    self._dirty.discard(key)
                    self.add(key)
