"""Stopping a process and everything it started: its process group (it was started with ``start_new_session``).

A stop sends SIGTERM to the group, waits up to a grace period, then SIGKILLs what is left of the
group, so no worker outlives its leader. :func:`terminate` and :func:`terminate_async` wait for the
leader, a child of ours; :func:`stop_group` waits until no process of the group is left, for a
group whose leader may not be our child (one adopted from an earlier run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable

from turnout.aio import wait_for

#: how often :func:`stop_group` looks whether the group is gone
POLL = 0.2


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to the group; a group already gone (or no longer ours to signal) is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def alive(pid: int) -> bool:
    """True while process ``pid`` exists (another user's included)."""
    return _exists(os.kill, pid)


def group_alive(pgid: int) -> bool:
    """True while any process of the group exists (zombies of our own children included)."""
    return _exists(os.killpg, pgid)


def _exists(send: Callable[[int, int], None], target: int) -> bool:
    try:
        send(target, 0)  # signal 0: checks only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM ``proc``'s group, SIGKILL it after ``grace`` seconds; ``proc``'s exit status."""
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    signal_group(proc.pid, signal.SIGKILL)  # the leader if it is still there, and whatever it left in the group
    return proc.wait()


async def terminate_async(proc: asyncio.subprocess.Process, grace: float) -> bool:
    """SIGTERM ``proc``'s group, SIGKILL it after ``grace`` seconds; False when the leader outlived the grace."""
    signal_group(proc.pid, signal.SIGTERM)
    in_time = True
    if proc.returncode is None:
        try:
            await wait_for(proc.wait(), grace)
        except asyncio.TimeoutError:
            in_time = False
    signal_group(proc.pid, signal.SIGKILL)  # the leader if it is still there, and whatever it left in the group
    if proc.returncode is None:
        await proc.wait()
    return in_time


async def stop_group(pgid: int, grace: float, child: asyncio.subprocess.Process | None = None) -> None:
    """SIGTERM the group, SIGKILL it after ``grace`` seconds, return once no process of it is left.

    ``child``: the leader when it is our child (waited for, so it is no zombie left in the group).
    """

    def left() -> bool:
        if child is not None and child.returncode is None:
            return True  # our child (possibly a zombie until waited)
        return group_alive(pgid)

    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + max(0.0, grace)
    while left() and time.monotonic() < deadline:
        await asyncio.sleep(POLL)
    while left():
        signal_group(pgid, signal.SIGKILL)
        await asyncio.sleep(POLL / 4)
    if child is not None:
        await child.wait()
