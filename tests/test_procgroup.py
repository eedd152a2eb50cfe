"""Process-group stop (turnout.procgroup) against real process groups: a leader and a worker it started."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from turnout.procgroup import alive, group_alive, stop_group, terminate, terminate_async

# The leader starts a worker in its group (unless "alone"), prints the worker's pid (or its own), then waits;
# with "stubborn" both ignore SIGTERM.
LEADER = """
import os, signal, subprocess, sys, time
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if sys.argv[2] == "alone":
    print(os.getpid(), flush=True)
else:
    worker = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\\n"
                               "if sys.argv[1] == 'stubborn': signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
                               "time.sleep(600)", sys.argv[1]])
    print(worker.pid, flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    """Running, not a zombie: an orphaned worker is a zombie until init reaps it (some containers' init never
    does)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        return alive(pid)  # no /proc (macOS)


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _running(pid)


def _start(mode: str, worker: str = "worker") -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen([sys.executable, "-c", LEADER, mode, worker], stdout=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


async def _start_async(mode: str, worker: str = "worker") -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", LEADER, mode, worker, stdout=subprocess.PIPE,
                                                start_new_session=True)
    assert proc.stdout is not None
    return proc, int(await proc.stdout.readline())


def test_terminate_stops_the_leader_and_its_worker() -> None:
    proc, worker = _start("polite")
    started = time.monotonic()
    assert terminate(proc, grace=10) == -15  # SIGTERM was enough
    assert time.monotonic() - started < 5
    assert _gone(worker)


def test_terminate_kills_what_ignores_sigterm_after_the_grace() -> None:
    proc, worker = _start("stubborn")
    started = time.monotonic()
    assert terminate(proc, grace=0.5) == -9
    assert time.monotonic() - started >= 0.5
    assert _gone(worker)


async def test_terminate_async_says_whether_the_leader_stopped_in_time() -> None:
    proc, worker = await _start_async("polite")
    assert await terminate_async(proc, grace=10) is True and proc.returncode == -15
    assert await asyncio.to_thread(_gone, worker)
    proc, worker = await _start_async("stubborn")
    assert await terminate_async(proc, grace=0.5) is False and proc.returncode == -9
    assert await asyncio.to_thread(_gone, worker)


async def test_stop_group_kills_after_the_grace_and_waits_until_no_process_of_the_group_is_left() -> None:
    proc, _ = await _start_async("stubborn", "alone")
    started = time.monotonic()
    await stop_group(proc.pid, grace=0.3, child=proc)
    assert time.monotonic() - started >= 0.3
    assert proc.returncode == -9 and not group_alive(proc.pid)
    proc, _ = await _start_async("polite", "alone")
    await stop_group(proc.pid, grace=10, child=proc)
    assert proc.returncode == -15 and not group_alive(proc.pid)


def test_signalling_a_group_that_is_gone_is_no_error() -> None:
    proc, worker = _start("polite")
    terminate(proc, grace=10)
    assert _gone(worker)
    assert terminate(proc, grace=1) == -15  # already reaped: nothing to signal
    assert not alive(proc.pid)
