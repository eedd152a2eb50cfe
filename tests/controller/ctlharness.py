"""Helpers for the operator tests: object builders, fake controllers (Deployment, kubelet), an operator runner."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from typing import Any

import kopf
from fakekube import FakeKube

from kubeconfigs import credentials_for
from turnout.config import OperatorConfig
from turnout.controller import Controller, Options, new_controller, operate

MDS = ("turnout.dev", "v1alpha1", "modeldeployments")
DEPLOYMENTS = ("apps", "v1", "deployments")
SERVICES = ("", "v1", "services")
CLAIMS = ("", "v1", "persistentvolumeclaims")
LWS = ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets")
PODS = ("", "v1", "pods")
NODES = ("", "v1", "nodes")
EVENTS = ("events.k8s.io", "v1", "events")
NS = "models"
WATCHED = {"modeldeployments", "nodes", "deployments", "services", "persistentvolumeclaims", "pods"}


def cpu_node(name: str = "cpu-1") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux"}},
        "spec": {},
        "status": {"allocatable": {"cpu": "16", "memory": "64Gi"}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def gpu_node(name: str = "gpu-1", count: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {
            "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux",
            "nvidia.com/gpu.product": "NVIDIA-A10G", "nvidia.com/gpu.memory": "23028",
            "nvidia.com/gpu.count": str(count), "nvidia.com/gpu.compute.major": "8",
            "nvidia.com/gpu.compute.minor": "6",
        }},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {"allocatable": {"cpu": "8", "memory": "30Gi", "nvidia.com/gpu": str(count)},
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }


def h100_node(name: str = "hgx-h100-1") -> dict[str, Any]:
    """An 8 × H100 80 GB server (GFD labels, 2 TiB of RAM), as examples/nodes/h100-2x8.yaml has it."""
    node = gpu_node(name, 8)
    node["metadata"]["labels"].update({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                                       "nvidia.com/gpu.memory": "81559", "nvidia.com/gpu.compute.major": "9",
                                       "nvidia.com/gpu.compute.minor": "0"})
    node["status"]["allocatable"] = {"cpu": "220", "memory": "2Ti", "nvidia.com/gpu": "8"}
    return node


def llama405_md(name: str = "llama-405b") -> dict[str, Any]:
    """Llama 3.1 405B unquantized (examples/llama-405b-lws.yaml without its cache): more than one 8 × H100 node."""
    return {
        "apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"model": {"name": "llama-3.1-instruct", "size": 405, "format": "pytorch"},
                 "servedModelName": "llama-405b"},
    }


async def mark_lws_rollout(fake: FakeKube, name: str, ready: int, *, namespace: str = NS) -> dict[str, Any]:
    """Play the LeaderWorkerSet controller: every group updated, ``ready`` of them ready."""

    def fn(obj: dict[str, Any]) -> dict[str, Any]:
        replicas = obj["spec"].get("replicas", 1)
        done = ready >= replicas
        obj["status"] = {"observedGeneration": obj["metadata"]["generation"], "replicas": replicas,
                         "updatedReplicas": replicas, "readyReplicas": ready, "conditions": [
                             {"type": "Available", "status": "True" if done else "False",
                              "reason": "AllGroupsReady" if done else "GroupsNotReady", "message": ""},
                             {"type": "Progressing", "status": "False" if done else "True",
                              "reason": "GroupsReady" if done else "GroupsProgressing", "message": ""}]}
        return obj

    return await fake.modify(LWS, (namespace, name), fn, status_only=True)


def gguf_md(name: str = "qwen-gguf", replicas: int = 1, accelerator: str | None = None) -> dict[str, Any]:
    md: dict[str, Any] = {
        "apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"model": {"name": "qwen2.5-instruct", "size": 1.5, "format": "gguf", "quantization": "Q4_K_M"},
                 "replicas": replicas, "servedModelName": "qwen-small"},
    }
    if accelerator:
        md["spec"]["accelerator"] = {"type": accelerator}
    return md


def awq_md(name: str = "qwen-awq") -> dict[str, Any]:
    return {
        "apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"model": {"name": "qwen2.5-instruct", "size": 7, "format": "awq", "quantization": "Int4"},
                 "servedModelName": "qwen", "cache": {"size": "20Gi"}},
    }


def cond(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c
    return {}


def events_of(fake: FakeKube, name: str) -> list[dict[str, Any]]:
    """The operator's events.k8s.io/v1 Events about ``name`` (``message`` mirrors ``note``, as core/v1 shows it)."""
    return [{**e, "message": e["note"]} for e in fake.objects(EVENTS, NS) if e["regarding"]["name"] == name]


def writes(fake: FakeKube, since: int = 0) -> list[Any]:
    """Requests after index ``since`` that change something (not GET/watch)."""
    return [r for r in list(fake.requests)[since:] if str(r.method.value).upper() in ("POST", "PATCH", "PUT", "DELETE")]


async def mark_rollout(fake: FakeKube, name: str, ready: int, *, namespace: str = NS) -> dict[str, Any]:
    """Play the Deployment controller: every replica updated, ``ready`` of them ready."""

    def fn(obj: dict[str, Any]) -> dict[str, Any]:
        replicas = obj["spec"].get("replicas", 1)
        obj["status"] = {"observedGeneration": obj["metadata"]["generation"], "replicas": replicas,
                         "updatedReplicas": replicas, "readyReplicas": ready, "availableReplicas": ready}
        return obj

    return await fake.modify(DEPLOYMENTS, (namespace, name), fn, status_only=True)


async def add_pod(fake: FakeKube, deployment: dict[str, Any], name: str, status: dict[str, Any]) -> dict[str, Any]:
    """Play the ReplicaSet controller and the kubelet: a pod of the Deployment's template with ``status``."""
    template = deployment["spec"]["template"]
    return await fake.put_object(PODS, {
        "metadata": {"name": name, "namespace": deployment["metadata"]["namespace"],
                     "labels": copy.deepcopy(template["metadata"]["labels"])},
        "spec": copy.deepcopy(template["spec"]),
        "status": status,
    })


def _quick_exit(settings: kopf.OperatorSettings) -> None:
    # kopf keeps idle per-object workers for 5 s and waits for them on exit; tests stop often.
    settings.queueing.idle_timeout = 0.3
    settings.queueing.exit_timeout = 0.3


class OperatorRun:
    """One operator instance in this event loop, against the fake API."""

    def __init__(self, fake: FakeKube, config: OperatorConfig | None = None, options: Options | None = None) -> None:
        self.fake = fake
        self.config = config or OperatorConfig()
        self.options = options or Options(all_namespaces=True, metrics_port=0, health_port=0)
        self.controller: Controller | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None

    async def start(self) -> Controller:
        self.fake.closing = False
        self._since = len(self.fake.requests)
        self._stop, ready = asyncio.Event(), asyncio.Event()
        server = str(self.fake.url).rstrip("/")

        credentials = await credentials_for(server)
        self.controller = new_controller(self.options, self.config, credentials, retry_base=0.1)
        self._task = asyncio.create_task(operate(
            self.options, self.controller, stop_flag=self._stop, ready_flag=ready, tune=_quick_exit,
        ))
        done, _ = await asyncio.wait({self._task, asyncio.create_task(ready.wait())},
                                     timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            self._task.result()  # raises what stopped it
        assert ready.is_set(), "the operator did not get ready in 60s"
        # Started = watching every resource it needs (kopf's discovery has finished by then).
        since = self._since
        await self.fake.wait_for(
            lambda: {r.resource.plural for r in list(self.fake.requests)[since:]
                     if r.resource is not None and r.params.get("watch") == "true"} >= WATCHED,
            what="the operator's watches",
        )
        return self.controller

    @property
    def running(self) -> bool:
        """Started and not ended (kopf's run, restarted in-process, is still going)."""
        return self._task is not None and not self._task.done()

    async def kill(self) -> None:
        """Stop abruptly, as SIGKILL would: cancel everything mid-flight."""
        if self._task is not None:
            self.fake.close_watches()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, 60)
            self._task = None

    async def stop(self) -> None:
        if self._task is not None and self._stop is not None:
            self._stop.set()
            # End the fake's server-side watch streams too: kopf waits for every task of its loop.
            self.fake.close_watches()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, 20)
            self._task = None


# ----- load sources for the autoscaler: real HTTP servers serving Prometheus text ----------------------------

ENDPOINT_SLICES = ("discovery.k8s.io", "v1", "endpointslices")
INFERENCE_POOLS = ("inference.networking.k8s.io", "v1", "inferencepools")


class MetricsServer:
    """A small HTTP server on 127.0.0.1 answering ``GET /metrics`` with what the test sets (Prometheus text)."""

    def __init__(self) -> None:
        self.text = ""
        self.status = 200
        self.scrapes = 0
        self.port = 0
        self._runner: Any = None

    async def start(self) -> MetricsServer:
        from aiohttp import web

        async def handle(_: web.Request) -> web.Response:
            self.scrapes += 1
            return web.Response(status=self.status, text=self.text, content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def gateway(self, namespace: str, deployment: str, *, in_flight: float = 0, queued: float = 0) -> None:
        """Serve what the turnout gateway exports for one deployment."""
        labels = f'namespace="{namespace}",deployment="{deployment}",model="{deployment}"'
        self.text = (
            "# HELP turnout_gateway_in_flight Requests sent upstream and not finished.\n"
            "# TYPE turnout_gateway_in_flight gauge\n"
            f"turnout_gateway_in_flight{{{labels}}} {in_flight}\n"
            "# HELP turnout_gateway_queue_length Requests held waiting for a ready endpoint.\n"
            "# TYPE turnout_gateway_queue_length gauge\n"
            f"turnout_gateway_queue_length{{{labels}}} {queued}\n"
        )

    def shim(self, in_flight: float) -> None:
        """Serve what a model pod's shim exports."""
        self.text = ("# HELP turnout_requests_in_flight Requests being served.\n"
                     "# TYPE turnout_requests_in_flight gauge\n"
                     f"turnout_requests_in_flight {in_flight}\n")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def put_endpoint_slice(fake: FakeKube, service: str, ports: list[int], *, namespace: str = NS,
                             ready: bool = True, name: str | None = None) -> dict[str, Any]:
    """Play the EndpointSlice controller: a slice of ``service`` with one endpoint (127.0.0.1) per port.

    One slice per port: a slice's ports apply to all its endpoints, and the test's pods differ by port only.
    """
    last: dict[str, Any] = {}
    for i, port in enumerate(ports):
        last = await fake.put_object(ENDPOINT_SLICES, {
            "metadata": {"name": f"{name or service}-{i}", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service,
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready, "serving": ready}}],
        })
    return last
