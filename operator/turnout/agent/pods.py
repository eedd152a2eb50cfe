"""One worker per Pod bound to the agent's node: start, probe, restart, report status, stop.

Pod status follows kubelet's conventions: phase, ``podIP``/``hostIP`` (the
agent's address), container states (waiting/running/terminated) with
``restartCount`` and ``lastState``, ``CrashLoopBackOff`` with exponential
back-off, the ``Ready``/``ContainersReady`` conditions from readiness probes
(after the startup probe succeeded), liveness restarts, and the log tail of a
failed process as the termination message.

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

import aiohttp

from turnout.agent.config import AgentConfig
from turnout.agent.node import now
from turnout.agent.podspec import (
    ConfigProblem,
    bind_shim,
    container_argv,
    container_env,
    mounts_for,
    prepare_volumes,
)
from turnout.agent.probes import Probe, run_exec
from turnout.agent.process import ContainerProcess, tail
from turnout.aio import wait_for
from turnout.kube import ApiError, TransientApiError
from turnout.shimargs import TERMINATION_LOG_ENV

log = logging.getLogger("turnout.agent")
RUNTIME = "turnout-agent"
#: kubelet reads at most this much of a termination message file
MAX_TERMINATION_BYTES = 4096
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


class ContainerRunner:
    """One container: its process, probes, restarts and status."""

    def __init__(self, worker: PodWorker, spec: Mapping[str, Any], index: int) -> None:
        self.worker = worker
        self.spec = spec
        self.name: str = spec["name"]
        self.dir = worker.dir / "containers" / self.name
        self.restart_count = 0
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict[str, Any] = {}
        self.ready = False
        self.started = False
        self.proc: ContainerProcess | None = None
        self.task: asyncio.Task[None] | None = None
        self.env: dict[str, str] = {}
        self.image_id = ""
        self.finished = False  # terminated and not to be restarted
        self._liveness_failed: asyncio.Event = asyncio.Event()
        self._stopping = False
        self._starting: asyncio.Future[None] | None = None

    # ----- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": self.image_id,
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.proc is not None:
            out["containerID"] = f"{RUNTIME}://{self.worker.uid}-{self.name}-{self.proc.pid}"
        return out

    def _set(self, state: dict[str, Any]) -> None:
        self.state = state
        self.worker.dirty()

    # ----- lifecycle ------------------------------------------------------------------------------

    def record_path(self) -> Path:
        return self.dir / "process.json"

    def termination_path(self) -> Path:
        """The container's termination message file: the agent's stand-in for ``/dev/termination-log``."""
        return self.dir / "termination-log"

    async def start_process(self, argv: list[str], env: dict[str, str], cwd: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # A fresh, empty file per run, as the kubelet mounts one per container instance; a process cannot see
        # terminationMessagePath (there is no container file system), so the shim is told where it is.
        message_file = self.termination_path()
        message_file.write_bytes(b"")
        env = {**env, TERMINATION_LOG_ENV: str(message_file)}
        log_file = str(self.dir / f"{self.restart_count}.log")
        old = self.dir / f"{self.restart_count - 2}.log"
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
        self.proc = await ContainerProcess.start(
            argv, env=env, cwd=cwd, log=log_file, exit_file=str(self.dir / "exit.json"),
            marker=f"turnout-pod={self.worker.uid}/{self.name}", started_at=now(),
            restart_count=self.restart_count)
        self.proc.save(self.record_path())
        log.info("pod %s container %s: started pid %d: %s", self.worker.key, self.name, self.proc.pid,
                 " ".join(argv))

    def adopt(self) -> dict[str, Any] | None:
        """Take over an earlier agent's process; returns its exit result when it ended meanwhile."""
        record = ContainerProcess.load(self.record_path())
        if record is None:
            return None
        self.restart_count = record.restart_count
        proc = ContainerProcess.adopt(record)
        if proc is not None:
            self.proc = proc
            log.info("pod %s container %s: adopted pid %d", self.worker.key, self.name, record.pid)
            return None
        self.proc = ContainerProcess(record, None)
        return self.proc.exit_result() or {"exitCode": 137, "finishedAt": now(), "error": None}

    async def run(self, argv: list[str], env: dict[str, str], cwd: str, adopted_exit: dict[str, Any] | None,
                  ) -> None:
        """Run, watch and restart the container until its restart policy says stop (or the pod stops)."""
        cfg = self.worker.host.config
        policy = (self.worker.pod.get("spec") or {}).get("restartPolicy", "Always")
        backoff = cfg.backoff_initial
        crashes = 0
        pending_exit = adopted_exit
        while True:
            if pending_exit is None:
                if self.proc is None or not self.proc.running():
                    # Shielded: a pod stop that cancels this task waits for the start instead of losing the process.
                    self._starting = asyncio.ensure_future(self.start_process(argv, env, cwd))
                    await asyncio.shield(self._starting)
                assert self.proc is not None
                self._set({"running": {"startedAt": self.proc.record.started_at}})
                pending_exit = await self._watch()
            result = pending_exit
            pending_exit = None
            assert self.proc is not None
            terminated = self._terminated(result)
            self.ready, self.started = False, False
            self._set({"terminated": terminated})
            code = int(terminated["exitCode"])
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                self.finished = True
                self.worker.dirty()
                return
            ran = _seconds_between(terminated.get("startedAt"), terminated.get("finishedAt"))
            if ran is not None and ran >= cfg.backoff_reset:
                crashes, backoff = 0, cfg.backoff_initial
            delay = 0.0 if crashes == 0 else backoff
            if crashes > 0:
                backoff = min(backoff * 2, cfg.backoff_max)
            crashes += 1
            self.last_state = {"terminated": terminated}
            if delay > 0:
                self._set({"waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {delay:g}s restarting failed container={self.name} "
                               f"pod={self.worker.pod['metadata']['name']}_{self.worker.namespace}"
                               f"({self.worker.uid})",
                }})
                await asyncio.sleep(delay)
            self.restart_count += 1
            self.proc = None

    def _terminated(self, result: Mapping[str, Any]) -> dict[str, Any]:
        assert self.proc is not None
        code = int(result.get("exitCode", 137))
        out: dict[str, Any] = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else ("StartError" if result.get("error") else "Error"),
            "startedAt": self.proc.record.started_at,
            "finishedAt": result.get("finishedAt") or now(),
            "containerID": f"{RUNTIME}://{self.worker.uid}-{self.name}-{self.proc.pid}",
        }
        written = self._termination_message()
        if written:
            out["message"] = written  # what the process wrote, as kubelet reads terminationMessagePath
        elif self._liveness_failed.is_set() and not self._stopping:
            out["message"] = "liveness probe failed; container restarted"
        elif code != 0:
            message = tail(self.proc.record.log) or (result.get("error") or "")
            if message:
                out["message"] = message
        return out

    def _termination_message(self) -> str:
        try:
            with open(self.termination_path(), "rb") as handle:
                return handle.read(MAX_TERMINATION_BYTES).decode(errors="replace").strip()
        except OSError:
            return ""

    async def _watch(self) -> dict[str, Any]:
        """Probe the running process until it exits (or liveness kills it); returns its exit result."""
        assert self.proc is not None
        self._liveness_failed.clear()
        probes = self.worker.host.spawn(self._probe_loop(), f"pod {self.worker.key} container {self.name} probes")
        waiter = asyncio.create_task(self.proc.wait())
        killer = asyncio.create_task(self._liveness_failed.wait())
        try:
            done, _ = await asyncio.wait({waiter, killer}, return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                log.warning("pod %s container %s: liveness probe failed, restarting", self.worker.key, self.name)
                await self.proc.stop(float((self.worker.pod.get("spec") or {}).get(
                    "terminationGracePeriodSeconds", 30)))
            return await waiter
        finally:
            for task in (probes, killer, waiter):
                task.cancel()
            await asyncio.gather(probes, killer, waiter, return_exceptions=True)

    def _probe(self, probe: Mapping[str, Any]) -> Probe:
        """A probe against the pod IP, as kubelet's (``httpGet.host`` / ``tcpSocket.host`` still win)."""
        return Probe(probe, self.spec, host=self.worker.host.probe_host)

    async def _probe_loop(self) -> None:
        spec = self.spec
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        try:
            startup = spec.get("startupProbe")
            if startup:
                ok = await self._until(self._probe(startup), session, want=True)
                if not ok:
                    self._liveness_failed.set()  # kubelet kills a container whose startup probe fails
                    return
            self.started = True
            self.worker.dirty()
            tasks = []
            if spec.get("readinessProbe"):
                tasks.append(self._readiness(self._probe(spec["readinessProbe"]), session))
            else:
                self.ready = True
                self.worker.dirty()
            if spec.get("livenessProbe"):
                tasks.append(self._liveness(self._probe(spec["livenessProbe"]), session))
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            await session.close()

    async def _until(self, probe: Probe, session: aiohttp.ClientSession, *, want: bool) -> bool:
        """Startup probe: True once it succeeds, False after failureThreshold failures."""
        await asyncio.sleep(probe.initial_delay)
        failures = 0
        while True:
            ok, _ = await probe.check(self.env, session)
            if ok == want:
                return True
            failures += 1
            if failures >= probe.failure_threshold:
                return False
            await asyncio.sleep(probe.period)

    async def _readiness(self, probe: Probe, session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(probe.initial_delay)
        successes = failures = 0
        while True:
            ok, message = await probe.check(self.env, session)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if ok and successes >= probe.success_threshold and not self.ready:
                self.ready = True
                self.worker.dirty()
            elif not ok and failures >= probe.failure_threshold and self.ready:
                log.info("pod %s container %s: not ready: %s", self.worker.key, self.name, message)
                self.ready = False
                self.worker.dirty()
            await asyncio.sleep(probe.period)

    async def _liveness(self, probe: Probe, session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(probe.initial_delay)
        failures = 0
        while True:
            ok, _ = await probe.check(self.env, session)
            failures = 0 if ok else failures + 1
            if failures >= probe.failure_threshold:
                self._liveness_failed.set()
                return
            await asyncio.sleep(probe.period)

    async def stop(self, deadline: float) -> None:
        """Stop for pod termination: preStop hook, SIGTERM, SIGKILL at ``deadline`` (monotonic)."""
        self._stopping = True
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        self.ready = False
        if self.proc is None or not self.proc.running():
            if self.proc is not None and "terminated" not in self.state:
                self._set({"terminated": self._terminated(self.proc.exit_result() or {"exitCode": 0})})
            return
        pre_stop = ((self.spec.get("lifecycle") or {}).get("preStop")) or {}
        if pre_stop:
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(self._hook(pre_stop), max(0.0, deadline - time.monotonic()))
        waiter = asyncio.create_task(self.proc.wait())
        await self.proc.stop(max(0.0, deadline - time.monotonic()))
        result = await waiter
        self._set({"terminated": self._terminated(result)})

    async def _hook(self, hook: Mapping[str, Any]) -> None:
        if "sleep" in hook:
            await asyncio.sleep(float(hook["sleep"].get("seconds", 0)))
        elif "exec" in hook:
            await run_exec(hook["exec"].get("command") or [], self.env)
        elif "httpGet" in hook:
            await self._probe({"httpGet": hook["httpGet"], "timeoutSeconds": 30}).check(self.env)


def _seconds_between(start: str | None, end: str | None) -> float | None:
    import datetime

    try:
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        a = datetime.datetime.strptime(str(start), fmt)
        b = datetime.datetime.strptime(str(end), fmt)
    except ValueError:
        return None
    return (b - a).total_seconds()


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
