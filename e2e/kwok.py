"""A small KWOK-style fake kubelet: fake Nodes kept Ready, and the pods bound to them played as running.

A control plane without kubelets (the one the e2e suite may be pointed at, or kind with a node cordoned)
has a real scheduler, Deployment, ReplicaSet, EndpointSlice, garbage-collector and node-lifecycle
controllers, but nothing that runs pods. :class:`FakeKubelet` does the kubelet's part of the API
contract for the Nodes it creates, as `KWOK <https://kwok.sigs.k8s.io>`_ does:

* **Nodes** (label :data:`FAKE_LABEL`): CPU nodes, and GPU nodes as GPU Feature Discovery and the
  NVIDIA device plugin describe them (``nvidia.com/gpu.*`` labels, ``nvidia.com/gpu`` allocatable,
  the ``nvidia.com/gpu=present:NoSchedule`` taint), each with a Lease in ``kube-node-lease``.
* **Heartbeats**: every :attr:`FakeKubelet.heartbeat` seconds the Lease's ``renewTime`` and the Ready
  condition's ``lastHeartbeatTime`` are renewed; without them the node-lifecycle controller marks
  the node NotReady about 40 s after the last one, taints it and evicts its pods.
* **Pods** bound to those nodes (found by one cluster-wide pod watch) are marked Running and Ready:
  ``phase``, the conditions PodScheduled/PodReadyToStartContainers/Initialized/ContainersReady/Ready,
  init containers terminated with exit code 0, containers ready with a ``running`` state, ``podIP``,
  ``hostIP`` and ``startTime``. :meth:`FakeKubelet.set_pod_state` makes a node's pods fail instead
  (``CrashLoopBackOff``, ``OOMKilled``, ``ImagePullBackOff``), the way a broken image or a too small
  limit would. Pods bound to any other node (a real kubelet's, a host agent's) are left alone.
* **Deletes**: a pod on a fake node with a ``deletionTimestamp`` is finalized (deleted with
  ``gracePeriodSeconds: 0``, uid-guarded) as a kubelet does once its containers stopped.

Addresses: node *i* has InternalIP ``10.244.i.1`` and gives its pods ``10.244.i.2`` onwards. They
only have to be valid pod IPs for EndpointSlices (not loopback): nothing ever connects to them.

The kubelet runs its own asyncio loop in a background thread and talks to the API server through the
project's own client (:class:`turnout.kube.KubeClient`, credentials from ``KUBECONFIG``); the
test thread calls its methods, which block until the API server answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import logging
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from turnout.kube import ApiError, KubeClient, load_credentials

T = TypeVar("T")
log = logging.getLogger("e2e.kwok")

FAKE_LABEL = "e2e.turnout.dev/fake-node"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
NOT_READY = "node.kubernetes.io/not-ready"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
#: What a fake node's pods look like, by name (see :func:`pod_status`).
POD_STATES = ("Running", "CrashLoopBackOff", "OOMKilled", "ImagePullBackOff")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_conditions(stamp: str, since: str | None = None) -> list[dict[str, str]]:
    """A healthy kubelet's node conditions; ``since`` keeps their lastTransitionTime."""

    def cond(type_: str, status: str, reason: str) -> dict[str, str]:
        return {"type": type_, "status": status, "reason": reason, "message": "fake kubelet (e2e)",
                "lastHeartbeatTime": stamp, "lastTransitionTime": since or stamp}

    return [cond("Ready", "True", "KubeletReady"), cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID")]


def node_object(name: str, index: int, *, gpus: int = 0, labels: Mapping[str, str] | None = None,
                cpu: str = "16", memory: str = "64Gi", taints: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """A Node as a kubelet registers it; with ``gpus`` as GPU Feature Discovery labels an NVIDIA A10G host."""
    all_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "type": "kwok", FAKE_LABEL: "true"}
    resources = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "100Gi"}
    node_taints = list(taints or [])
    if gpus:
        all_labels.update({
            "nvidia.com/gpu.product": "NVIDIA-A10G", "nvidia.com/gpu.memory": "23028",
            "nvidia.com/gpu.count": str(gpus), "nvidia.com/gpu.compute.major": "8",
            "nvidia.com/gpu.compute.minor": "6", "nvidia.com/gpu.present": "true",
        })
        resources["nvidia.com/gpu"] = str(gpus)
        node_taints.append(dict(GPU_TAINT))
    all_labels.update(labels or {})
    stamp = _now()
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": all_labels, "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"taints": node_taints} if node_taints else {},
        "status": {
            "capacity": dict(resources), "allocatable": dict(resources),
            "conditions": node_conditions(stamp),
            "addresses": [{"type": "InternalIP", "address": f"10.244.{index}.1"},
                          {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "v1.36.0-fake",
                         "kubeProxyVersion": "", "containerRuntimeVersion": "fake://0", "osImage": "fake",
                         "kernelVersion": "fake", "machineID": "", "systemUUID": "", "bootID": ""},
        },
    }


def pod_status(pod: Mapping[str, Any], state: str, pod_ip: str, host_ip: str, started: str) -> dict[str, Any]:
    """The status a kubelet would report for ``pod`` in ``state`` (one of :data:`POD_STATES`)."""
    spec = pod.get("spec") or {}
    running = state == "Running"
    stamp = _now()

    def cond(type_: str, ok: bool, reason: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"type": type_, "status": "True" if ok else "False", "lastTransitionTime": stamp,
                               "lastProbeTime": None}
        if reason and not ok:
            out["reason"] = reason
        return out

    def container(c: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"name": c["name"], "image": c.get("image", ""), "imageID": "",
                               "containerID": f"fake://{pod['metadata']['uid']}-{c['name']}",
                               "ready": running, "started": running, "restartCount": 0,
                               "state": {"running": {"startedAt": started}}}
        if state == "CrashLoopBackOff":
            out.update(restartCount=4, state={"waiting": {"reason": "CrashLoopBackOff", "message":
                       f"back-off 5m0s restarting failed container={c['name']}"}},
                       lastState={"terminated": {"exitCode": 3, "reason": "Error", "startedAt": started,
                                                 "finishedAt": stamp}})
        elif state == "OOMKilled":
            out.update(restartCount=2, state={"waiting": {"reason": "CrashLoopBackOff", "message":
                       f"back-off 40s restarting failed container={c['name']}"}},
                       lastState={"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": started,
                                                 "finishedAt": stamp}})
        elif state == "ImagePullBackOff":
            out.update(started=False, containerID=None, state={"waiting": {
                "reason": "ImagePullBackOff", "message": f'Back-off pulling image "{c.get("image", "")}"'}})
        return {k: v for k, v in out.items() if v is not None}

    inits = [{"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": True, "started": False,
              "restartCount": 0, "containerID": f"fake://{pod['metadata']['uid']}-{c['name']}",
              "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started,
                                       "finishedAt": started}}}
             for c in spec.get("initContainers") or []]
    status: dict[str, Any] = {
        "phase": "Pending" if state == "ImagePullBackOff" else "Running",
        "conditions": [cond("PodReadyToStartContainers", True), cond("Initialized", True),
                       cond("Ready", running, "ContainersNotReady"),
                       cond("ContainersReady", running, "ContainersNotReady"), cond("PodScheduled", True)],
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
        "startTime": started,
        "containerStatuses": [container(c) for c in spec.get("containers") or []],
    }
    if inits:
        status["initContainerStatuses"] = inits
    return status


class FakeKubelet:
    """Fake Nodes and their pods' kubelet, in a background thread. ``start()``, then ``stop()`` to clean up."""

    heartbeat = 10.0  # the node-lifecycle controller's grace period is 40 s

    def __init__(self, kubeconfig: str | None = None) -> None:
        self._kubeconfig = kubeconfig
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-kubelet", daemon=True)
        self._client: KubeClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.nodes: dict[str, dict[str, Any]] = {}  # name -> {"index", "ip", "state", "uid"}
        self._pods: dict[str, dict[str, Any]] = {}  # uid -> what we know of a pod on a fake node
        self._ips: dict[str, itertools.count[int]] = {}
        self._index = itertools.count(1)
        self.errors: list[str] = []  # failed API calls, for the failure report

    # ----- the test thread's side -------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> FakeKubelet:
        self._thread.start()
        self._run(self._start())
        return self

    def stop(self) -> None:
        """Remove every fake node (their pods first) and end the thread."""
        with contextlib.suppress(Exception):
            self._run(self._stop(), timeout=120)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def add_node(self, name: str, **kwargs: Any) -> dict[str, Any]:
        """Create a fake node (see :func:`node_object` for the keyword arguments); returns the Node."""
        return self._run(self._add_node(name, **kwargs))

    def remove_node(self, name: str) -> None:
        """Delete the node as a drained machine leaves: its pods go first (at once), then Lease and Node."""
        self._run(self._remove_node(name))

    def set_allocatable(self, name: str, **resources: str) -> None:
        """Change what the node offers (e.g. ``cpu="16"``), as a kubelet does after a resize."""
        self._run(self._set_allocatable(name, resources))

    def set_pod_state(self, name: str, state: str) -> None:
        """From now on the node's pods are in ``state`` (one of :data:`POD_STATES`); the ones it has change now."""
        if state not in POD_STATES:
            raise ValueError(f"unknown pod state {state!r}: one of {', '.join(POD_STATES)}")
        self._run(self._set_pod_state(name, state))

    # ----- the kubelet's loop -------------------------------------------------------------------

    async def _start(self) -> None:
        self._client = KubeClient(await load_credentials(self._kubeconfig), user_agent="e2e-fake-kubelet")
        await self._clean_leftovers()
        synced = asyncio.Event()
        self._tasks = [asyncio.create_task(self._watch_pods(synced)), asyncio.create_task(self._heartbeats())]
        await asyncio.wait_for(synced.wait(), 60)

    async def _stop(self) -> None:
        for name in list(self.nodes):
            await self._remove_node(name)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    @property
    def _kube(self) -> KubeClient:
        assert self._client is not None, "start() the fake kubelet first"
        return self._client

    async def _clean_leftovers(self) -> None:
        """Fake nodes of an earlier run that crashed: their pods and Leases go with them."""
        listing = await self._kube.request("GET", "/api/v1/nodes", params={"labelSelector": f"{FAKE_LABEL}=true"})
        for node in listing.get("items") or []:
            await self._remove_node(node["metadata"]["name"])

    async def _add_node(self, name: str, **kwargs: Any) -> dict[str, Any]:
        index = next(self._index)
        node = node_object(name, index, **kwargs)
        self._ips[name] = itertools.count(2)
        self.nodes[name] = {"index": index, "ip": f"10.244.{index}.1", "state": "Running", "since": _now()}
        created = await self._kube.create("/api/v1/nodes", node)
        self.nodes[name]["uid"] = created["metadata"]["uid"]
        # A kubelet registers, then reports status: the status sent with the create may be dropped.
        created = await self._kube.merge_patch(f"/api/v1/nodes/{name}/status", {"status": node["status"]})
        await self._kube.create(LEASES, {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": name, "uid": created["metadata"]["uid"]}]},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": _micro_now()},
        })
        # The API server taints a new Node not-ready; the node-lifecycle controller lifts that once it has
        # seen the node Ready (within its 5 s monitor period). Only then does the node take pods.
        deadline = asyncio.get_running_loop().time() + 60
        while any(t.get("key") == NOT_READY for t in (created.get("spec") or {}).get("taints") or []):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"node {name} kept its {NOT_READY} taint for 60 s")
            await asyncio.sleep(0.5)
            created = await self._kube.get(f"/api/v1/nodes/{name}") or created
        return created

    async def _remove_node(self, name: str) -> None:
        self.nodes.pop(name, None)
        pods = await self._kube.request("GET", "/api/v1/pods", params={"fieldSelector": f"spec.nodeName={name}"})
        for pod in pods.get("items") or []:
            meta = pod["metadata"]
            await self._kube.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                                    uid=meta["uid"], propagation=None, grace_seconds=0)
        await self._kube.delete(f"{LEASES}/{name}", propagation=None)
        await self._kube.delete(f"/api/v1/nodes/{name}", propagation=None)

    async def _set_allocatable(self, name: str, resources: Mapping[str, str]) -> None:
        await self._kube.merge_patch(f"/api/v1/nodes/{name}/status", {
            "status": {"allocatable": dict(resources), "capacity": dict(resources)}})

    async def _set_pod_state(self, name: str, state: str) -> None:
        self.nodes[name]["state"] = state
        for known in list(self._pods.values()):
            if known["node"] == name:
                await self._play(known["pod"])

    async def _heartbeats(self) -> None:
        while True:
            for name, node in list(self.nodes.items()):
                try:
                    await self._kube.merge_patch(f"{LEASES}/{name}", {"spec": {"renewTime": _micro_now()}})
                    await self._kube.merge_patch(f"/api/v1/nodes/{name}/status", {
                        "status": {"conditions": node_conditions(_now(), node["since"])}})
                except ApiError as exc:
                    if name in self.nodes:
                        self.errors.append(f"heartbeat {name}: {exc}")
            await asyncio.sleep(self.heartbeat)

    async def _watch_pods(self, synced: asyncio.Event) -> None:
        """List, then watch every pod; act on those bound to a fake node. Re-list when the watch expires."""
        while True:
            try:
                listing = await self._kube.request("GET", "/api/v1/pods")
                for pod in listing.get("items") or []:
                    await self._seen("MODIFIED", pod)
                synced.set()
                rv = listing.get("metadata", {}).get("resourceVersion", "")
                while True:
                    async for event in self._kube.watch("/api/v1/pods", {"resourceVersion": rv}):
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            raise ApiError(int(obj.get("code") or 410), str(obj.get("reason")), "watch expired")
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if event.get("type") != "BOOKMARK":
                            await self._seen(str(event.get("type")), obj)
            except ApiError as exc:
                if exc.status != 410:
                    self.errors.append(f"pod watch: {exc}")
                await asyncio.sleep(0.5)

    async def _seen(self, event_type: str, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        uid = meta["uid"]
        if event_type == "DELETED" or spec.get("nodeName") not in self.nodes:
            self._pods.pop(uid, None)
            return
        try:
            await self._play(pod)
        except ApiError as exc:
            if exc.status not in (404, 409):  # gone, or replaced, meanwhile
                self.errors.append(f"pod {meta['namespace']}/{meta['name']}: {exc}")

    async def _play(self, pod: dict[str, Any]) -> None:
        """Do for this pod what a kubelet would: finalize a deletion, or report the node's pod state."""
        meta = pod["metadata"]
        node_name = pod["spec"]["nodeName"]
        node = self.nodes.get(node_name)
        if node is None:
            return
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        if meta.get("deletionTimestamp"):
            await self._kube.delete(path, uid=meta["uid"], propagation=None, grace_seconds=0)
            return
        known = self._pods.setdefault(meta["uid"], {"node": node_name, "state": None, "started": _now(),
                                                    "ip": f"10.244.{node['index']}.{next(self._ips[node_name])}"})
        known["pod"] = pod
        if known["state"] == node["state"]:
            return
        state = node["state"]
        status = pod_status(pod, state, known["ip"], node["ip"], known["started"])
        await self._kube.merge_patch(f"{path}/status", {"status": status})
        known["state"] = state
