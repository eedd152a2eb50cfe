"""The host agent: register the Node, keep its Lease, and run the Pods bound to it as native processes."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from turnout.agent.bootstrap import NodeIdentity, renew_forever
from turnout.agent.config import AgentConfig
from turnout.agent.node import (
    LEASE_NAMESPACE,
    detect_address,
    lease_object,
    merge_conditions,
    micro_now,
    node_object,
    node_status,
)
from turnout.agent.pods import PodWorker, pod_key, pod_path
from turnout.agent.ports import HostPorts, is_local, is_wildcard, port_in_use
from turnout.agent.process import ContainerProcess, kill_group
from turnout.agent.tasks import TaskSupervisor
from turnout.hardware import MEMORY_LABEL
from turnout.kube import ApiError, Credentials, KubeClient, PermanentApiError, load_credentials
from turnout.kube.informer import Informer
from turnout.localhw import Probes

log = logging.getLogger("turnout.agent")
T = TypeVar("T")
#: Labels the agent sets only in some configurations; removed when it no longer sets them.
OWN_LABELS = (MEMORY_LABEL,)


class Agent:
    """One node. ``run()`` until ``stop`` is set, or until a task fails (:class:`.tasks.AgentFailed`).

    It is the :class:`~turnout.agent.pods.PodHost` of its pod workers.
    """

    port_poll = 1.0  # how often a pod waiting for a port re-checks (it is also woken by pod events)

    def __init__(self, config: AgentConfig, kube: KubeClient, *, address: str, probes: Probes | None = None,
                 host_ports: HostPorts | None = None, identity: NodeIdentity | None = None) -> None:
        self.config = config
        self.identity = identity  # the node certificate to renew while running (TLS bootstrapping), if any
        self.host_ports: HostPorts = host_ports if host_ports is not None else HostPorts()
        self.kube = kube
        self.address = address
        self.probes = probes
        self.workers: dict[str, PodWorker] = {}
        self.node: dict[str, Any] = {}
        self.bind_address, self.probe_host = bind_and_probe_addresses(config.address, address)
        self.node_path = f"/api/v1/nodes/{config.node_name}"
        self.lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{config.node_name}"
        self.supervisor = TaskSupervisor()

    # ----- for the pod workers (PodHost) --------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        return self.supervisor.spawn(coro, name)

    async def write_pod_status(self, pod: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        try:
            await self.kube.merge_patch(pod_path(pod, "status"), {"status": dict(status)})
        except PermanentApiError as exc:
            if exc.status != 404:  # gone: nothing to report on
                raise

    async def remove_pod(self, pod: Mapping[str, Any]) -> None:
        await self.kube.delete(pod_path(pod), grace_seconds=0, uid=pod["metadata"]["uid"])

    async def fetch(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.kube.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")

    def claim_ports(self, worker: PodWorker, *, force: bool = False) -> str | None:
        """Claim the worker's ports on the bind address; why it cannot (yet), or None when claimed.

        A port conflicts when a pod in ``host_ports`` holds it on an overlapping address, or
        when another process on this host listens there. ``force`` (adopted, running processes) skips both:
        the pod's own process is the listener.
        """
        ports = worker.ports()
        if not force:
            for port in sorted(ports):
                holder = self.host_ports.holder(self.bind_address, port, worker)
                if holder is not None:
                    return (f"port {port} on {self.bind_address} is held by pod {holder.key} on this host; "
                            "this pod starts when it is released")
            for port in sorted(ports):
                if port_in_use(self.bind_address, port):
                    return (f"port {port} on {self.bind_address} is in use by another process on this host "
                            "(another agent with an overlapping --address, or a program outside the cluster); "
                            "this pod starts when it is released")
        self.host_ports.claim(self.bind_address, ports, worker)
        return None

    def release_ports(self, worker: PodWorker) -> None:
        self.host_ports.release(worker)

    # ----- node and lease -----------------------------------------------------------------------

    async def register(self) -> None:
        """Create the Node, or bring an existing one (an earlier run of this agent) up to date."""
        wanted = node_object(self.config, self.address, self.probes)
        current = await self.kube.get(self.node_path)
        if current is None:
            try:
                current = await self.kube.create("/api/v1/nodes", wanted)
                log.info("registered node %s", self.config.node_name)
            except ApiError as exc:
                if exc.status != 409:
                    raise
                current = await self.kube.get(self.node_path) or {}
        if current.get("metadata", {}).get("uid"):
            labels: dict[str, str | None] = dict(wanted["metadata"]["labels"])
            for key in OWN_LABELS:  # e.g. the memory label of a host that no longer advertises Metal
                labels.setdefault(key, None)
            # Taints only at creation: NodeRestriction forbids a node to change its own taints later.
            missing = _missing_taints(current, wanted)
            if missing:
                log.warning("node %s lacks the taint%s %s, which the agent sets only when it creates the Node "
                            "(a node may not change its taints): an admin can add it with kubectl taint nodes %s "
                            "%s", self.config.node_name, "s" if len(missing) > 1 else "", ", ".join(missing),
                            self.config.node_name, " ".join(missing))
            current = await self.kube.merge_patch(self.node_path, {
                "metadata": {"labels": labels, "annotations": wanted["metadata"]["annotations"]},
            })
        self.node = current
        self._capacity = wanted["status"]["capacity"]
        await self.post_status()
        await self.renew_lease()

    async def post_status(self, *, ready: bool = True, reason: str | None = None, message: str | None = None) -> None:
        kwargs = {k: v for k, v in (("reason", reason), ("message", message)) if v}
        fresh = node_status(self.config, self.address, self._capacity, ready=ready, **kwargs)
        previous = (self.node.get("status") or {}).get("conditions")
        fresh["conditions"] = merge_conditions(previous, fresh["conditions"])
        for field in ("capacity", "allocatable"):  # drop resources no longer advertised (merge patch keeps them)
            for key in (self.node.get("status") or {}).get(field) or {}:
                fresh[field].setdefault(key, None)
        self.node = await self.kube.merge_patch(f"{self.node_path}/status", {"status": fresh})

    async def _refresh_node(self) -> None:
        """Post the node status; register again if someone deleted the Node (as kubelet does)."""
        try:
            await self.post_status()
        except ApiError as exc:
            if exc.status != 404:
                raise
            log.warning("node %s was deleted; registering it again", self.config.node_name)
            self.node = {}
            await self.register()

    async def renew_lease(self) -> None:
        current = await self.kube.get(self.lease_path)
        if current is None:
            lease = lease_object(self.config, self.node.get("metadata", {}).get("uid"))
            await self.kube.create(f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases", lease)
            return
        await self.kube.merge_patch(self.lease_path, {"spec": {
            "holderIdentity": self.config.node_name, "leaseDurationSeconds": self.config.lease_seconds,
            "renewTime": micro_now()}})

    async def _every(self, seconds: float, what: str, fn: Any) -> None:
        """Call ``fn`` every ``seconds``; API errors are retried at the next tick, anything else fails the agent."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await fn()
            except ApiError as exc:
                log.warning("%s failed: %s", what, exc)

    # ----- pods ---------------------------------------------------------------------------------

    def handle(self, event_type: str, pod: dict[str, Any]) -> None:
        self._reap()
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if event_type == "DELETED":
            if worker is not None:
                worker.gone()
            return
        if worker is not None and not worker.done:
            worker.update(pod)
            return
        deleting = bool(pod["metadata"].get("deletionTimestamp"))
        finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        if worker is not None and not deleting:
            return  # ran to its end (or failed in the agent); only deletion is left to do
        if finished and not deleting and not (Path(self.config.state_dir) / "pods" / uid).is_dir():
            return  # completed before this agent started: never run it again
        log.info("pod %s: %s", pod_key(pod), "terminating" if deleting else "admitted")
        self.workers[uid] = PodWorker(self, pod)

    async def watch_pods(self, synced: asyncio.Event) -> None:
        """List then watch the pods bound to this node (:class:`~turnout.kube.informer.Informer`).

        ``synced`` is set after the first listing, once the leftovers of pods gone while the agent was
        down are cleaned. Anything but an API error (a line that is not a watch event, an object
        :meth:`handle` cannot process) ends the task, which fails the agent (see :mod:`.tasks`).
        """

        def on_list(pods: list[dict[str, Any]]) -> None:
            seen = set()
            for pod in pods:
                seen.add(pod["metadata"]["uid"])
                self.handle("MODIFIED", pod)
            for uid, worker in list(self.workers.items()):
                if uid not in seen:
                    worker.gone()
            if not synced.is_set():
                self.clean_leftovers(seen)
                synced.set()

        await Informer(self.kube, "/api/v1/pods", on_list=on_list, on_event=self.handle,
                       params={"fieldSelector": f"spec.nodeName={self.config.node_name}"},
                       backoff=0.5, max_backoff=10.0).run()

    def _reap(self) -> None:
        for uid, worker in list(self.workers.items()):
            if worker.done and worker.removed:
                del self.workers[uid]

    def clean_leftovers(self, known: set[str]) -> None:
        """Kill processes and remove folders of pods that no longer exist (gone while the agent was down)."""
        root = Path(self.config.state_dir) / "pods"
        if not root.is_dir():
            return
        for pod_dir in root.iterdir():
            if pod_dir.name in known:
                continue
            for record_file in pod_dir.glob("containers/*/process.json"):
                record = ContainerProcess.load(record_file)
                if record is not None and ContainerProcess.adopt(record) is not None:
                    log.info("killing leftover process group %d of removed pod %s", record.pid, pod_dir.name)
                    kill_group(record.pid)
            shutil.rmtree(pod_dir, ignore_errors=True)

    # ----- main loop ----------------------------------------------------------------------------

    def lock_state_dir(self) -> int:
        """Hold ``<state-dir>/agent.lock``: two agents sharing a state folder would kill each other's pods."""
        state = Path(self.config.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        fd = os.open(state / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RuntimeError(f"another agent uses the state folder {state}: give each agent on a host its own "
                               "--state-dir (and its own --node-name and --address)") from None
        return fd

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        lock = self.lock_state_dir()
        try:
            await self._run(stop, ready)
        finally:
            os.close(lock)  # releases the lock

    async def _run(self, stop: asyncio.Event, ready: asyncio.Event | None) -> None:
        await self.register()
        synced = asyncio.Event()
        spawn = self.supervisor.spawn
        tasks = [
            spawn(self._every(self.config.heartbeat_seconds, "lease renewal", self.renew_lease), "lease renewal"),
            spawn(self._every(self.config.status_seconds, "node status", self._refresh_node), "node status"),
            spawn(self.watch_pods(synced), "pod watch"),
        ]
        if self.identity is not None:
            tasks.append(spawn(renew_forever(self.identity, self.kube), "certificate renewal"))
        failed = asyncio.create_task(self.supervisor.failed())
        listed, stopped = asyncio.create_task(synced.wait()), asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({failed, listed}, return_when=asyncio.FIRST_COMPLETED)
            if synced.is_set() and ready is not None:
                ready.set()
            await asyncio.wait({failed, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failure = self.supervisor.failure
            for task in (*tasks, failed, listed, stopped):
                task.cancel()
            await asyncio.gather(*tasks, failed, listed, stopped, return_exceptions=True)
            if failure is not None:
                with contextlib.suppress(ApiError):  # at once: nobody runs this node's pods until the restart
                    await self.post_status(ready=False, reason="AgentFailed",
                                           message=f"turnout host agent: {failure}; it exits for its service "
                                                   "manager (launchd, systemd) to restart it")
            stop_all = self.config.stop_pods_on_exit
            await asyncio.gather(*(w.shutdown(stop_processes=stop_all) for w in self.workers.values()),
                                 return_exceptions=True)
            await self.supervisor.close()
            if failure is None:
                with contextlib.suppress(ApiError):
                    await self.post_status(ready=False, message="turnout host agent stopped")
            log.info("agent %s %s (%s)", self.config.node_name, "failed" if failure else "stopped",
                     "containers stopped" if stop_all else "containers left running for the next start to adopt")
        if failure is not None:
            raise failure from failure.error


def _missing_taints(current: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Our taints (``key=value:effect``) the existing Node does not carry."""
    have = {(t.get("key"), t.get("effect")) for t in (current.get("spec") or {}).get("taints") or []}
    return [f"{t['key']}={t.get('value', '')}:{t['effect']}" for t in wanted["spec"]["taints"]
            if (t["key"], t["effect"]) not in have]


def bind_and_probe_addresses(configured: str | None, address: str) -> tuple[str, str]:
    """Where the shim listens and where probes connect, from ``--address`` and the node address.

    With ``--address`` set to an address of this host the shim listens there only (so several agents
    with distinct addresses can share a host and its ports); unset, a wildcard, or not an address of
    this host (e.g. a NAT or VPN address routed here), it listens on 0.0.0.0. Probes connect to the pod
    IP (the node address) like kubelet's, or to 127.0.0.1 when that address is not local.
    """
    local = not is_wildcard(address) and is_local(address)
    if configured and not is_wildcard(configured) and not local:
        log.warning("--address %s is not an address of this host: pods listen on 0.0.0.0 (all addresses)",
                    configured)
    bind = address if configured and not is_wildcard(configured) and local else "0.0.0.0"
    probe = address if local else "127.0.0.1"
    return bind, probe


async def run_agent(
    config: AgentConfig,
    *,
    kubeconfig: str | None = None,
    credentials: Credentials | None = None,
    bootstrap_kubeconfig: str | None = None,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    probes: Probes | None = None,
    host_ports: HostPorts | None = None,
) -> None:
    """Run the host agent until ``stop`` is set (or the task is cancelled).

    Raises :class:`~turnout.agent.tasks.AgentFailed` when one of its tasks fails unexpectedly (the
    Node is then not Ready with reason ``AgentFailed``; the pods' processes are left to the next start).

    ``credentials`` win over ``kubeconfig``; without either the usual
    ``$KUBECONFIG`` / ``~/.kube/config`` lookup applies. With
    ``bootstrap_kubeconfig`` (and no ``credentials``) the agent uses its node certificate,
    getting one through TLS bootstrapping first, writes the node kubeconfig to ``kubeconfig``
    (default ``<state-dir>/kubeconfig``) and renews the certificate while it runs
    (:mod:`turnout.agent.bootstrap`).
    ``ready`` is set once the node is registered and the pods bound to it are
    listed (and adopted). ``probes`` overrides hardware detection; ``host_ports`` is the table of
    claimed ports (default: the agent's own; agents sharing an event loop may share one).
    """
    identity = None
    if credentials is None and bootstrap_kubeconfig:
        identity = NodeIdentity.of(config.node_name, config.state_dir, bootstrap_kubeconfig, kubeconfig)
        credentials = await identity.credentials()
    creds = credentials or await load_credentials(kubeconfig)
    kube = KubeClient(creds, user_agent="turnout-agent")
    stop = stop or asyncio.Event()
    try:
        address = config.address or detect_address(creds.server)
        agent = Agent(config, kube, address=address, probes=probes, host_ports=host_ports, identity=identity)
        await agent.run(stop, ready)
    finally:
        await kube.close()
