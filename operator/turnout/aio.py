"""``wait_for`` that never loses a cancellation.

Before Python 3.12, :func:`asyncio.wait_for` returns the awaited result when the
awaitable finishes in the same loop turn as the caller is cancelled
(python/cpython#86296): the cancel is swallowed. A loop that calls it
(a probe loop, a wake-up wait) then runs on after its task was cancelled, and
whatever awaits that task hangs — the agent's shutdown waited 60 s on a probe
loop this way. 3.12 rebuilt ``wait_for`` on :func:`asyncio.timeout`, which is
correct; older versions get the same contract from :func:`asyncio.wait`,
which always propagates the caller's cancellation.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def _wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except BaseException:  # the caller was cancelled: the awaited work ends with it, and the cancel goes on
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: what it raised is superseded by the cancel
        raise
    if not done:
        task.cancel()
        await asyncio.wait({task})
        if task.cancelled():
            raise asyncio.TimeoutError
    return task.result()


if sys.version_info >= (3, 12):
    wait_for = asyncio.wait_for
else:
    wait_for = _wait_for
