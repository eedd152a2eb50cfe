"""One worker per Pod bound to the agent's node: admit, start its containers, report status, stop, remove.

Pod status follows kubelet's conventions: phase, ``podIP``/``hostIP`` (the
agent's address), the containers' statuses (:mod:`turnout.agent.container`,
one :class:`~turnout.agent.container.ContainerRunner` each), and the
``Ready``/``ContainersReady`` conditions from their readiness.

Ports: pods of one agent share its address, so each ``containerPort`` can be
held by one pod per address at a time (see :mod:`turnout.agent.ports`). A pod
whose port is held on an overlapping address (by another pod, or by another
process on the host) stays ``Pending`` (waiting reason ``PortInUse``) until
that port is released.

A worker reaches its agent only through :class:`PodHost`; every task it starts runs under the agent's task
supervisor (:mod:`turnout.agent.tasks`), so an unexpected exception fails the agent instead of
ending one pod's task silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from turnout.agent.config import AgentConfig
from turnout.agent.container import RUNTIME, ContainerRunner
from turnout.agent.node import now
from turnout.agent.podspec import (
    ConfigProblem,
    bind_shim,
    container_argv,
    container_env,
    mounts_for,
    prepare_volumes,
)
from turnout.aio import wait_for
from turnout.kube import ApiError, TransientApiError

log = logging.getLogger("turnout.agent")
T = TypeVar("T")


class PodHost(Protocol):
    """What a pod worker needs from the agent that runs it (the agent implements it)."""

    @property
    def config(self) -> AgentConfig: ...

    @property
    def address(self) -> str:
        """The node's address: every pod's IP."""
        ...

    @property
    def bind_address(self) -> str:
        """Where the pods' servers listen."""
        ...

    @property
    def probe_host(self) -> str:
        """Where probes connect."""
        ...

    @property
    def port_poll(self) -> float:
        """How often a pod waiting for a port re-checks (it is also woken by pod events)."""
        ...

    async def fetch(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A namespaced object (a Secret, a ConfigMap), or None when it does not exist."""
        ...

    def claim_ports(self, worker: PodWorker, *, force: bool = False) -> str | None:
        """Claim the worker's ports; why it cannot (yet), or None when claimed."""
        ...

    def release_ports(self, worker: PodWorker) -> None: ...

    async def write_pod_status(self, pod: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """Merge-patch the pod's status (nothing when the pod is gone); raises :class:`ApiError`."""
        ...

    async def remove_pod(self, pod: Mapping[str, Any]) -> None:
        """Delete this very pod (its uid) at once: its processes are gone; raises :class:`ApiError`."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run ``coro`` as a supervised task."""
        ...


def pod_key(pod: Mapping[str, Any]) -> str:
    return f"{pod['metadata'].get('namespace', 'default')}/{pod['metadata']['name']}"


def pod_path(pod: Mapping[str, Any], subresource: str | None = None) -> str:
    meta = pod["metadata"]
    path = f"/api/v1/namespaces/{meta.get('namespace', 'default')}/pods/{meta['name']}"
    return f"{path}/{subresource}" if subresource else path


def grace_of(pod: Mapping[str, Any]) -> float:
    meta, spec = pod["metadata"], pod.get("spec") or {}
    value = meta.get("deletionGracePeriodSeconds")
    if value is None:
        value = spec.get("terminationGracePeriodSeconds", 30)
    return float(value)


class PodWorker:
    """Runs one pod from admission to removal."""

    def __init__(self, host: PodHost, pod: dict[str, Any]) -> None:
        self.host = host
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta.get("namespace", "default")
        self.key = pod_key(pod)
        self.dir = Path(host.config.state_dir) / "pods" / self.uid
        self.containers = [ContainerRunner(self, c, i) for i, c in enumerate((pod.get("spec") or {})
                                                                              .get("containers") or [])]
        self.reason: str | None = None  # pod-level waiting reason (PortInUse, UnsupportedImage...)
        self.message: str | None = None
        self.start_time: str | None = None
        self.removed = False  # the API object is gone
        self.done = False
        self._changed = asyncio.Event()
        self._dirty = asyncio.Event()
        self._written: dict[str, Any] | None = None
        self._transitions: dict[str, tuple[str, str]] = {}
        self.task = host.spawn(self._run(), f"pod {self.key}")
        self._writer = host.spawn(self._write_loop(), f"pod {self.key} status writer")

    # ----- events from the agent --------------------------------------------------------------

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        self._changed.set()

    def gone(self) -> None:
        self.removed = True
        self._changed.set()

    def dirty(self) -> None:
        self._dirty.set()

    @property
    def deleting(self) -> bool:
        return self.removed or bool(self.pod["metadata"].get("deletionTimestamp"))

    def ports(self) -> set[int]:
        return {int(p["containerPort"]) for c in self.containers for p in c.spec.get("ports") or []
                if str(p.get("protocol", "TCP")).upper() == "TCP"}

    # ----- main flow ----------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            if not self.deleting:
                await self._start()
            while not self.deleting:
                if self.containers and all(c.finished for c in self.containers):
                    self.host.release_ports(self)
                self._changed.clear()
                await self._changed.wait()
            await self._terminate()
        finally:
            self.done = True

    async def _wait_change(self, seconds: float) -> None:
        self._changed.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await wait_for(self._changed.wait(), seconds)

    async def _start(self) -> None:
        spec = self.pod.get("spec") or {}
        if spec.get("initContainers"):
            return self._reject("InitContainersNotSupported",
                                "the host agent does not run init containers; this pod cannot start here")
        envs = {}
        for c in self.containers:
            local = self.host.config.env_map.lookup(c.spec.get("image", ""))
            if local is None:
                return self._reject("UnsupportedImage",
                                    f'image "{c.spec.get("image")}" has no local environment on this host: add it '
                                    "to the agent's env map (--env-map)")
            envs[c.name] = local
        adopted = {c.name: c.adopt() for c in self.containers}
        adopted_running = any(c.proc is not None and c.proc.running() for c in self.containers)
        # Ports: one pod per containerPort on an address (the pod IP is the agent's address).
        while not self.deleting:
            problem = self.host.claim_ports(self, force=adopted_running)
            if problem is None:
                break
            self.reason = "PortInUse"
            self.message = problem
            for c in self.containers:
                c.state = {"waiting": {"reason": self.reason, "message": self.message}}
            self.dirty()
            await self._wait_change(self.host.port_poll)
        # Configuration: volumes, env (secrets and config maps may appear later).
        prepared: dict[str, tuple[list[str], dict[str, str], str]] = {}
        while not self.deleting:
            try:
                prepared = await self._prepare(envs)
                break
            except ConfigProblem as exc:
                self.reason, self.message = "CreateContainerConfigError", str(exc)
                for c in self.containers:
                    c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
                self.dirty()
                await self._wait_change(5.0)
        if self.deleting:
            return None
        self.reason = self.message = None
        self.start_time = self.start_time or (self.pod.get("status") or {}).get("startTime") or now()
        for c in self.containers:
            argv, env, cwd = prepared[c.name]
            c.env = env
            c.image_id = f"{RUNTIME}://{envs[c.name].bin_dir}"
            c.task = self.host.spawn(c.run(argv, env, cwd, adopted[c.name]), f"pod {self.key} container {c.name}")
        self.dirty()
        return None

    def _reject(self, reason: str, message: str) -> None:
        self.reason, self.message = reason, message
        for c in self.containers:
            c.state = {"waiting": {"reason": reason, "message": message}}
        log.warning("pod %s: %s: %s", self.key, reason, message)
        self.dirty()

    async def _prepare(self, envs: Mapping[str, Any]) -> dict[str, tuple[list[str], dict[str, str], str]]:
        host = self.host
        volumes = await prepare_volumes(self.pod, self.dir, Path(host.config.state_dir), host.fetch)
        out = {}
        for c in self.containers:
            local = envs[c.name]
            env = {k: os.environ[k] for k in host.config.passthrough_env if k in os.environ}
            env["PATH"] = os.pathsep.join([local.bin_dir, env.get("PATH", os.defpath)])
            if local.venv:
                env["VIRTUAL_ENV"] = local.venv
            mounts = mounts_for(c.spec, volumes)
            env.update(await container_env(self.pod, c.spec, host.fetch, host.address, mounts))
            argv = bind_shim([mounts.rewrite(a) for a in container_argv(c.spec, env)], host.bind_address)
            program = local.resolve(argv[0], env["PATH"])
            if program is None:
                raise ConfigProblem(f'command "{argv[0]}" not found in {local.bin_dir} or PATH (image '
                                    f'"{c.spec.get("image")}" maps to {local.root})')
            argv[0] = program
            cwd = mounts.rewrite(c.spec.get("workingDir") or "") or str(self.dir)
            Path(cwd).mkdir(parents=True, exist_ok=True)
            out[c.name] = (argv, env, cwd)
        return out

    async def _terminate(self) -> None:
        """Graceful stop of every container, final status, then remove the pod object (grace 0)."""
        grace = grace_of(self.pod)
        deadline = time.monotonic() + grace
        log.info("pod %s: stopping (grace %gs)", self.key, grace)
        await asyncio.gather(*(c.stop(deadline) for c in self.containers))
        self.host.release_ports(self)
        delay = 0.5
        while not self.removed:
            try:
                await self._flush()
                await self.host.remove_pod(self.pod)
                break
            except TransientApiError as exc:
                log.warning("pod %s: final status or delete failed (%s); retrying in %gs", self.key, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        log.info("pod %s: removed", self.key)

    async def shutdown(self, *, stop_processes: bool) -> None:
        """The agent is exiting: stop the containers (or leave them for the next agent to adopt)."""
        for c in self.containers:
            if stop_processes:
                await c.stop(time.monotonic() + grace_of(self.pod))
            elif c.task is not None:
                c.task.cancel()
                await asyncio.gather(c.task, return_exceptions=True)
        # Ports leave the in-process table either way; processes left running still hold them in the OS.
        self.host.release_ports(self)
        if stop_processes:
            await self._flush()
        for task in (self.task, self._writer):
            task.cancel()
        await asyncio.gather(self.task, self._writer, return_exceptions=True)

    # ----- status -------------------------------------------------------------------------------

    def _phase(self) -> str:
        if self.reason and not any(c.proc for c in self.containers):
            return "Pending"
        if self.containers and all(c.finished for c in self.containers):
            failed = any(c.state.get("terminated", {}).get("exitCode") for c in self.containers)
            return "Failed" if failed else "Succeeded"
        if any(c.proc is not None for c in self.containers):
            return "Running"
        return "Pending"

    def _condition(self, type_: str, ok: bool, reason: str | None = None) -> dict[str, Any]:
        status = "True" if ok else "False"
        previous = self._transitions.get(type_)
        stamp = previous[1] if previous and previous[0] == status else now()
        self._transitions[type_] = (status, stamp)
        cond: dict[str, Any] = {"type": type_, "status": status, "lastProbeTime": None, "lastTransitionTime": stamp}
        if not ok and reason:
            cond["reason"] = reason
        return cond

    def status(self) -> dict[str, Any]:
        ready = bool(self.containers) and all(c.ready for c in self.containers) and not self.deleting
        address = self.host.address
        status: dict[str, Any] = {
            "phase": self._phase(),
            "hostIP": address,
            "hostIPs": [{"ip": address}],
            "conditions": [
                self._condition("PodScheduled", True),
                self._condition("Initialized", True),
                self._condition("ContainersReady", ready, "ContainersNotReady"),
                self._condition("Ready", ready, "ContainersNotReady"),
            ],
            "containerStatuses": [c.status() for c in self.containers],
            "reason": self.reason if self.reason in ("UnsupportedImage", "InitContainersNotSupported") else None,
            "message": self.message,
        }
        if self.start_time:
            status["startTime"] = self.start_time
        if any(c.proc is not None for c in self.containers):
            status["podIP"] = address
            status["podIPs"] = [{"ip": address}]
        return status

    async def _flush(self) -> None:
        status = self.status()
        if status == self._written:
            return
        await self.host.write_pod_status(self.pod, status)
        self._written = status

    async def _write_loop(self) -> None:
        """Write the pod status whenever it changed, coalescing bursts; retry API errors with back-off."""
        delay = 0.5
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._flush()
                delay = 0.5
            except ApiError as exc:
                log.warning("pod %s: status write failed: %s", self.key, exc)
                self._dirty.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
