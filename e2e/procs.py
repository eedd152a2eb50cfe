"""The operator and the gateway as subprocesses: started with this checkout's code, stopped, their logs and metrics.

Subprocesses run ``sys.executable`` with ``PYTHONPATH`` led by the folder this very ``turnout`` package
was imported from, so an operator or agent started by a test runs the code under test (not some other
installed copy), also through ``ip netns exec`` and ``unshare``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kubectl import poll

import turnout

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_ROOT = str(Path(turnout.__file__).resolve().parent.parent)
#: For the operator's local endpoints: never through a proxy from the environment.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment for a child: our ``turnout`` first on PYTHONPATH; ``None`` values unset."""
    env = dict(os.environ)
    paths = [PACKAGE_ROOT, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != PACKAGE_ROOT]]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text exposition as {(name, sorted labels): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        name, labels, value = match.groups()
        pairs = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels or "")))
        out[(name, pairs)] = float(value)
    return out


class OperatorProcess:
    """``python -m turnout operator ARGS`` on free local ports for /healthz and /metrics, logging to a file.

    ``wrap`` goes before the command (``unshare ... sh -c``-style wrappers get the command as words to
    append); ``env`` changes the environment (``None`` unsets).
    """

    what = "the operator"

    def __init__(self, args: Sequence[str], log_path: Path, *, env: Mapping[str, str | None] | None = None,
                 wrap: Sequence[str] = ()) -> None:
        self.args = list(args)
        self.log = log_path
        self.env = dict(env or {})
        self.wrap = list(wrap)
        self.proc: subprocess.Popen[bytes] | None = None
        self.health = self.metrics_port = 0

    def command(self) -> list[str]:
        self.health, self.metrics_port = free_port(), free_port()
        return [*self.wrap, sys.executable, "-m", "turnout", "operator", *self.args,
                "--health-port", str(self.health), "--metrics-port", str(self.metrics_port),
                "--bind-address", "127.0.0.1"]

    def start(self, timeout: float = 60) -> OperatorProcess:
        with open(self.log, "a") as log:
            command = self.command()
            log.write(f"----- starting: {' '.join(command)}\n")
            log.flush()
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env=child_env(self.env))
        poll(self._healthy, timeout=timeout, interval=0.5, what=f"{self.what}'s /healthz ({self.log})")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.what} exited {self.proc.returncode}:\n{self.log.read_text()[-5000:]}")
        try:
            with _LOCAL.open(f"http://127.0.0.1:{self.health}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Signal it and wait; SIGKILL after ``timeout``. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        code, self.proc = self.proc.returncode, None
        return code

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return parse_metrics(self.metrics_text())

    def metrics_text(self) -> str:
        with _LOCAL.open(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def total(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, pairs), v in self.metrics().items() if n == name and want <= set(pairs))

    def tail(self, chars: int = 20000) -> str:
        return self.log.read_text()[-chars:] if self.log.exists() else ""


class GatewayProcess(OperatorProcess):
    """``python -m turnout gateway ARGS --host 127.0.0.1 --port P`` (/healthz and /metrics on that port too)."""

    what = "the gateway"

    def __init__(self, args: Sequence[str], log_path: Path, **kwargs: Any) -> None:
        super().__init__(args, log_path, **kwargs)
        self.health = self.metrics_port = free_port()  # kept across restarts: the operator scrapes it

    def command(self) -> list[str]:
        return [*self.wrap, sys.executable, "-m", "turnout", "gateway", *self.args,
                "--host", "127.0.0.1", "--port", str(self.health)]

    @property
    def url(self) -> str:
        """The base URL of the OpenAI API (``http://127.0.0.1:P/v1``)."""
        return f"http://127.0.0.1:{self.health}/v1"
