"""Native container processes: each runs under :mod:`~turnout.agent.runner` in its own process group.

Stopping signals the whole group (SIGTERM, then SIGKILL after the grace
period) and waits until no process of the group is left, so nothing a
container started outlives it. State kept on disk (pid, start time, restart
count) lets a restarted agent adopt running containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from turnout.procgroup import POLL, alive, signal_group, stop_group

RUNNER = str(Path(__file__).with_name("runner.py"))
#: kubelet's termination message limits for FallbackToLogsOnError
TAIL_LINES = 80
TAIL_BYTES = 2048


@dataclass
class ProcessRecord:
    """What is persisted per container so a restarted agent can adopt it."""

    pid: int
    marker: str
    started_at: str
    restart_count: int
    log: str
    exit_file: str
    argv: list[str]


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        pass
    try:  # macOS
        done = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True,
                              timeout=5, check=False)
        return done.stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def tail(path: str | os.PathLike[str], lines: int = TAIL_LINES, limit: int = TAIL_BYTES) -> str:
    """The last ``lines`` lines of a log, at most ``limit`` bytes (kubelet's termination-message rule)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode(errors="replace")
    if len(data) == limit and size > limit and "\n" in text:
        text = text.split("\n", 1)[1]  # drop the partial first line
    return "\n".join(text.rstrip("\n").split("\n")[-lines:])


class ContainerProcess:
    """One running (or adopted) container process group."""

    def __init__(self, record: ProcessRecord, proc: asyncio.subprocess.Process | None) -> None:
        self.record = record
        self._proc = proc  # None when adopted from an earlier agent

    @property
    def pid(self) -> int:
        return self.record.pid

    @classmethod
    async def start(cls, argv: Sequence[str], *, env: Mapping[str, str], cwd: str, log: str, exit_file: str,
                    marker: str, started_at: str, restart_count: int) -> ContainerProcess:
        """Start ``argv`` under the runner in a new session; output goes to ``log``."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(exit_file)
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab", buffering=0) as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", RUNNER, "--exit-file", exit_file, "--marker", marker, "--cwd", cwd,
                "--", *argv,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd,
                start_new_session=True,
            )
        record = ProcessRecord(proc.pid, marker, started_at, restart_count, log, exit_file, list(argv))
        return cls(record, proc)

    @classmethod
    def adopt(cls, record: ProcessRecord) -> ContainerProcess | None:
        """The process of an earlier agent, if it still runs and is what the record says."""
        if not alive(record.pid) or record.marker not in _command_line(record.pid):
            return None
        return cls(record, None)

    def save(self, path: str | os.PathLike[str]) -> None:
        tmp = f"{path}.tmp"
        Path(tmp).write_text(json.dumps(asdict(self.record)), encoding="utf-8")
        os.replace(tmp, path)

    @staticmethod
    def load(path: str | os.PathLike[str]) -> ProcessRecord | None:
        try:
            return ProcessRecord(**json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.returncode is None
        return alive(self.record.pid)

    async def wait(self) -> dict[str, Any]:
        """Wait for the runner to end; ``{"exitCode", "finishedAt", "error"}``."""
        if self._proc is not None:
            code = await self._proc.wait()
        else:
            while alive(self.record.pid):
                await asyncio.sleep(POLL)
            code = None
        result = self.exit_result()
        if result is None:  # the runner itself was killed (SIGKILL of the group)
            from turnout.agent.node import now

            code = 137 if code is None else (128 - code if code < 0 else code)
            result = {"exitCode": code, "finishedAt": now(), "error": None}
        return result

    def exit_result(self) -> dict[str, Any] | None:
        try:
            return json.loads(Path(self.record.exit_file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def signal_group(self, signum: int) -> None:
        signal_group(self.record.pid, signum)

    async def stop(self, grace: float) -> None:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds, return once no process of it is left."""
        await stop_group(self.record.pid, grace, self._proc)


def kill_group(pgid: int) -> None:
    """SIGKILL a leftover group (an earlier agent's container whose pod is gone)."""
    signal_group(pgid, signal.SIGKILL)
