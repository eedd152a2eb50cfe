"""Helpers for the agent tests: an in-process agent, pod builders, process checks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import sys
from pathlib import Path
from typing import Any

from agentfake import AgentFake

from kubeconfigs import credentials_for
from turnout.agent import AgentConfig, EnvMap
from turnout.agent.agent import run_agent
from turnout.agent.ports import HostPorts
from turnout.localhw import Probes

PODS = ("", "v1", "pods")
NODES = ("", "v1", "nodes")
LEASES = ("coordination.k8s.io", "v1", "leases")
NS = "models"
NODE = "mac-1"
ADDRESS = "127.0.0.1"
STANDIN = str(Path(__file__).with_name("standin.py"))
IMAGE = "example.test/standin:1"


def mac_probes() -> Probes:
    """An Apple silicon host with 10 cores and 64 GiB of unified memory."""
    return Probes(run=lambda argv: None, system=lambda: "Darwin", machine=lambda: "arm64", cpu_count=lambda: 10,
                  memory_bytes=lambda: 64 * 2**30, env={})


#: the claimed-port table of the agents these tests run in one process, as if they shared one host
HOST_PORTS: HostPorts = HostPorts()


class AgentRun:
    """One agent (``run_agent``) in this event loop against the fake API (sharing :data:`HOST_PORTS`)."""

    def __init__(self, fake: AgentFake, *, state_dir: Path, bootstrap: Path | None = None,
                 **overrides: Any) -> None:
        """``bootstrap``: a bootstrap kubeconfig; the agent joins with it (TLS bootstrapping) instead of a token."""
        self.fake = fake
        self.bootstrap = bootstrap
        probes = overrides.pop("probes", None)
        settings: dict[str, Any] = {
            "node_name": NODE, "address": ADDRESS, "state_dir": str(state_dir),
            "env_map": EnvMap.from_mapping({"example.test/*": sys.prefix}),
            "heartbeat_seconds": 0.2, "status_seconds": 0.5, "backoff_initial": 0.3, "backoff_max": 1.2,
        }
        settings.update(overrides)
        self.config = AgentConfig(**settings)
        self.probes = probes
        self.task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> AgentRun:
        self._stop, ready = asyncio.Event(), asyncio.Event()
        self.fake.closing = False
        if self.bootstrap is not None:
            login: dict[str, Any] = {"bootstrap_kubeconfig": str(self.bootstrap)}
        else:
            login = {"credentials": await credentials_for(str(self.fake.url).rstrip("/"))}
        self.task = asyncio.create_task(run_agent(self.config, stop=self._stop, ready=ready, probes=self.probes,
                                                  host_ports=HOST_PORTS, **login))
        done, _ = await asyncio.wait({self.task, asyncio.create_task(ready.wait())}, timeout=30,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            self.task.result()
        assert ready.is_set(), "the agent did not get ready in 30s"
        return self

    async def failed(self, timeout: float = 30) -> BaseException:
        """Wait for the agent to end with an exception and return it (the agent counts as stopped then)."""
        assert self.task is not None, "the agent is not running"
        done, _ = await asyncio.wait({self.task}, timeout=timeout)
        assert done, f"the agent still runs after {timeout}s"
        task, self.task = self.task, None
        error = task.exception()
        assert error is not None, "the agent ended without an error"
        return error

    async def stop(self, *, stop_pods: bool) -> None:
        if self.task is None:
            return
        object.__setattr__(self.config, "stop_pods_on_exit", stop_pods)
        self._stop.set()
        try:
            await asyncio.wait_for(self.task, 60)
        finally:
            self.task = None


def standin_pod(name: str, port: int, *, extra_args: tuple[str, ...] = (), command: list[str] | None = None,
                restart_policy: str = "Always", grace: int = 5, image: str = IMAGE, node: str = NODE,
                **spec: Any) -> dict[str, Any]:
    """A pod bound to the agent's node whose container runs the stand-in server (or ``command``)."""
    container: dict[str, Any] = {
        "name": "server",
        "image": image,
        "command": command or [sys.executable, STANDIN, "--port", str(port), *extra_args],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1,
                           "failureThreshold": 3},
    }
    container.update(spec.pop("container", {}))
    return {
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
        "spec": {"nodeName": node, "restartPolicy": restart_policy, "terminationGracePeriodSeconds": grace,
                 "containers": [container], **spec},
        "status": {"phase": "Pending"},
    }


def pod(fake: AgentFake, name: str) -> dict[str, Any] | None:
    return fake.get(PODS, NS, name)


def status(fake: AgentFake, name: str) -> dict[str, Any]:
    return (pod(fake, name) or {}).get("status") or {}


def container_status(fake: AgentFake, name: str) -> dict[str, Any]:
    statuses = status(fake, name).get("containerStatuses") or [{}]
    return statuses[0]


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return cond
    return {}


def running_and_ready(fake: AgentFake, name: str) -> bool:
    obj = pod(fake, name)
    phase = ((obj or {}).get("status") or {}).get("phase")
    return phase == "Running" and condition(obj, "Ready").get("status") == "True"


def pid_gone(pid: int) -> bool:
    """True when no such process exists (a zombie awaiting its parent counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")
    return False


def pod_events(fake: AgentFake, name: str) -> list[dict[str, Any]]:
    """Every stored version of the pod, oldest first (from the emulator's watch history)."""
    return [e["object"] for _, e in fake.history.get(PODS, [])
            if e["object"]["metadata"]["name"] == name and e["object"]["metadata"].get("namespace") == NS]


async def delete_pod(fake: AgentFake, name: str, grace: int | None = None) -> None:
    """DELETE the pod through the HTTP API, as kubectl would."""
    import aiohttp

    params = {} if grace is None else {"gracePeriodSeconds": str(grace)}
    ca = getattr(fake, "ca", None)  # clusterfake's, over TLS
    tls = ssl.create_default_context(cadata=ca.pem.decode()) if ca is not None else None
    async with aiohttp.ClientSession() as session, session.delete(
            f"{str(fake.url).rstrip('/')}/api/v1/namespaces/{NS}/pods/{name}", params=params, ssl=tls) as resp:
        assert resp.status < 400, await resp.text()
