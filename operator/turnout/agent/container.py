"""One container of a pod as a native process: start or adopt it, probe it, restart it, stop it, report its status.

Container status follows kubelet's conventions: waiting/running/terminated
states with ``restartCount`` and ``lastState``, ``CrashLoopBackOff`` with
exponential back-off, readiness and liveness from the probes (after the
startup probe succeeded), lifecycle hooks, and the log tail of a failed
process as the termination message. A :class:`ContainerRunner` belongs to its
:class:`~turnout.agent.pods.PodWorker`, which it tells when its status changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from turnout.agent.node import now
from turnout.agent.probes import Probe, run_exec
from turnout.agent.process import ContainerProcess, tail
from turnout.aio import wait_for
from turnout.shimargs import TERMINATION_LOG_ENV

if TYPE_CHECKING:
    from turnout.agent.pods import PodWorker

log = logging.getLogger("turnout.agent")
#: the runtime named in container and image IDs (``turnout-agent://...``)
RUNTIME = "turnout-agent"
#: kubelet reads at most this much of a termination message file
MAX_TERMINATION_BYTES = 4096


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
    try:
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        a = datetime.datetime.strptime(str(start), fmt)
        b = datetime.datetime.strptime(str(end), fmt)
    except ValueError:
        return None
    return (b - a).total_seconds()
