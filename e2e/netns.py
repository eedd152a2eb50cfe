"""Network namespaces for host agents, each a host of its own, and a TCP forwarder to the API server.

Several host agents on one machine each need their own address: an agent binds its pods' servers to
its node's address (so replicas on two agents share a port), and EndpointSlices refuse loopback
addresses (127.0.0.0/8) as pod IPs. So each agent runs in a network namespace made here:

* namespace ``turnout-e2e-N`` with a veth pair: ``te2eNh`` on the host with ``10.250.N.1/24``, and
  ``te2eNn`` inside with ``10.250.N.2/24`` (the agent's node and pod address), ``lo`` up;
* the agent inside reaches the API server through :class:`Forwarder` on the host end,
  ``10.250.N.1:<port>`` → the API server's own address, with a kubeconfig naming
  ``https://10.250.N.1:<port>`` and ``tls-server-name`` set to a name the server's certificate has
  (it has none for 10.250.N.1), so the agent also proves ``tls-server-name`` on a real server.

The range is ``10.250.0.0/16`` (N from 1): test traffic goes only to 127.0.0.0/8 and to these
namespaces. Nothing is added to the machine's own interfaces; deleting a namespace deletes its veth
pair. :func:`clean_leftovers` removes namespaces and links of a run that crashed. Needs root
(``ip netns``); :func:`problem` says why it cannot run here, for a skip.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

PREFIX = "turnout-e2e-"
#: Label of the agents' nodes (a crashed run's are deleted at the start).
AGENT_LABEL = "e2e.turnout.dev/agent"
SUBNET = "10.250"


def problem() -> str | None:
    """Why agents cannot get namespaces here, or None."""
    if os.geteuid() != 0:
        return "host-agent e2e tests make network namespaces (ip netns): run them as root"
    if shutil.which("ip") is None:
        return "host-agent e2e tests need iproute2's `ip` on PATH"
    return None


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def clean_leftovers() -> None:
    """Remove every ``turnout-e2e-*`` namespace and ``te2e*`` link (a crashed run's)."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX):
            _ip("netns", "delete", name, check=False)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1 and (link := parts[1].strip().split("@")[0]).startswith("te2e"):
            _ip("link", "delete", link, check=False)


@dataclass
class Namespace:
    """One agent's network namespace: ``host`` is the host end's address, ``address`` the one inside."""

    n: int

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.n}"

    @property
    def host(self) -> str:
        return f"{SUBNET}.{self.n}.1"

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.n}.2"

    def create(self) -> Namespace:
        outer, inner = f"te2e{self.n}h", f"te2e{self.n}n"
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", self.name)
            _ip("addr", "add", f"{self.host}/24", "dev", outer)
            _ip("link", "set", outer, "up")
            _ip("addr", "add", f"{self.address}/24", "dev", inner, netns=self.name)
            _ip("link", "set", inner, "up", netns=self.name)
            _ip("link", "set", "lo", "up", netns=self.name)
        except Exception:
            self.delete()
            raise
        return self

    def delete(self) -> None:
        _ip("netns", "delete", self.name, check=False)  # takes the veth pair with it
        _ip("link", "delete", f"te2e{self.n}h", check=False)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: the pid is the program's)."""
        return ["ip", "netns", "exec", self.name, *argv]


class Forwarder:
    """TCP forwarding from ``listen`` addresses to one target, in an asyncio loop of its own thread.

    :meth:`cut` stops listening and drops every connection (an API server outage, as the clients see
    it); :meth:`restore` listens again on the same addresses.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="e2e-forwarder", daemon=True)
        self._thread.start()
        self._addresses: list[tuple[str, int]] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def listen(self, host: str, port: int) -> None:
        self._addresses.append((host, port))
        self._call(self._listen(host, port))

    async def _listen(self, host: str, port: int) -> None:
        self._servers.append(await asyncio.start_server(self._pipe, host, port, reuse_address=True))

    def cut(self) -> None:
        async def cut() -> None:
            for server in self._servers:
                server.close()
            self._servers.clear()
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._call(cut())

    def restore(self) -> None:
        for host, port in self._addresses:
            self._call(self._listen(host, port))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        try:
            await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            self._call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def server_of(kubeconfig: str) -> tuple[str, int, str]:
    """(host, port, TLS name) of the current context's server in a kubeconfig."""
    config = yaml.safe_load(Path(kubeconfig).read_text())
    cluster = _current_cluster(config)
    url = urlsplit(cluster["server"])
    return url.hostname or "127.0.0.1", url.port or 443, cluster.get("tls-server-name") or url.hostname or ""


def _current_cluster(config: dict) -> dict:
    contexts = {c["name"]: c["context"] for c in config.get("contexts") or []}
    context = contexts[config["current-context"]]
    return next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])


def verified_name(kubeconfig: str) -> str:
    """The name to verify the server's certificate for when it is reached at another address."""
    cluster = _current_cluster(yaml.safe_load(Path(kubeconfig).read_text()))
    name = cluster.get("tls-server-name") or urlsplit(cluster["server"]).hostname or ""
    if name.replace(".", "").isdigit():
        name = "localhost"  # an IP SAN cannot be asked for by name: the cert of a local server has localhost
    return name


def kubeconfig_via(kubeconfig: str, host: str, port: int, out_dir: str | None = None) -> str:
    """A copy of ``kubeconfig`` whose server is ``https://host:port``, with ``tls-server-name`` set to the
    original server's name (the certificate's); certificate files are embedded so the copy stands alone."""
    config = yaml.safe_load(Path(kubeconfig).read_text())
    base = Path(kubeconfig).resolve().parent
    cluster = _current_cluster(config)
    cluster["server"], cluster["tls-server-name"] = f"https://{host}:{port}", verified_name(kubeconfig)
    for section, key in (("clusters", "certificate-authority"), ("users", "client-certificate"),
                         ("users", "client-key")):
        for entry in config.get(section) or []:
            body = entry.get("cluster" if section == "clusters" else "user") or {}
            if body.get(key):
                data = (base / body.pop(key)).read_bytes()
                body[f"{key}-data"] = base64.b64encode(data).decode()
    fd, path = tempfile.mkstemp(prefix="kubeconfig-", suffix=".yaml", dir=out_dir)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(config, fh)
    return path
