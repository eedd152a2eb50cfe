"""Operator scale: N ModelDeployments applied at once; time until each has its children and status.

    python benchmarks/bench_operator.py [--n 100] [--n 1000] [--quick]
    python benchmarks/bench_operator.py --kubeconfig PATH [--n 100]   # a real cluster
    python benchmarks/bench_operator.py --real [--n 100]              # the same, with $KUBECONFIG

**Emulator** (default): the API server is ``tests/controller/fakekube.py``
(kmock over real HTTP, with the API server's object semantics and the CRD's
schema validation), served from this process. The operator is a separate
process (``python -m turnout.controller -A``) logged in through a
kubeconfig that points at it, so its memory and CPU are its own. The driver
POSTs N ModelDeployments (64 at a time) and the emulator stamps, on its own
event loop, when each one is created, when its Deployment and Service appear
and when its status first has a phase. Beside it, fresh emulators take N bare
creates of the same objects with no operator (the fastest of 3; their CPU
time too): the floor a controller's writes are compared with. The **fair baseline** beside it: the same N
ModelDeployments plus the Deployment and Service the operator rendered for them (taken from the run, without
owner references), written by a plain client on fresh emulators — a POST and two server-side applies per
deployment, 64 deployments at a time, fastest of 3 — what a user who serves the models by hand writes.
Writes are counted from the emulator's request log.

**Real cluster** (``--kubeconfig``/``--real``): the same measurement against
the cluster's API server. It installs the CRD from ``crds/`` if the cluster
lacks it (and removes it afterwards; a CRD already there is left alone and
noted, since an operator already installed may then act on the same objects),
creates two scratch namespaces (``turnout-bench-<id>`` and
``turnout-bench-bare-<id>``), and uses the cluster's own nodes: fake Nodes would
be tainted unreachable by the node lifecycle controller and attract pods that
never run. The ModelDeployments ask for ``replicas: 0``, so the Deployments it
creates start no pods and pull no images (the operator's writes are the same).
Bare creates of the same N objects go to the second namespace before the
operator starts (it watches only the first, ``-n``); the fair baseline (the
same objects plus the rendered Deployment and Service, server-side applied)
goes to a third after the run, with the same three watches of the driver on it as on the operator's
namespace (the API server streams both to this process). Before each of the two it waits for the local
control plane to be at rest (under a quarter of a core for 3 s: the controller manager works off a burst
for minutes under its client-side rate limit), and it records the control plane's own CPU (API server,
etcd, controller manager, scheduler, read from ``/proc`` when they run on this machine) and the driver's
during each: ``cpu_ratio_to_fair`` is all the CPU of the operator's run (operator, control plane, driver)
over the fair baseline's, which on a machine whose cores are all busy is what the wall-time ratio
follows. A canary
ModelDeployment proves the operator is watching before the clock starts. The
stamps come from watches (list, then watch from its resourceVersion; on
410 Gone, list again), taken when the events reach the driver. Writes are
the operator's own counters (``turnout_operator_writes_total``: applies,
status patches, Events) plus kopf's own patches of the ModelDeployments (their
MODIFIED events not explained by a status write). Cleanup always runs:
the operator is stopped, finalizers left on ModelDeployments are removed,
both namespaces are deleted (and waited for), then the CRD if it was ours.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yaml
from benchlib import PYTHON, ROOT, cpu_seconds, free_port, load_average, pct, rnd, rss_mib, start_proc

sys.path.insert(0, str(ROOT / "tests" / "controller"))
import kmock
from fakekube import FakeKube

MDS = ("turnout.dev", "v1alpha1", "modeldeployments")
DEPLOYMENTS = ("apps", "v1", "deployments")
SERVICES = ("", "v1", "services")
NODES = ("", "v1", "nodes")
NS = "models"
WATCHED = {"modeldeployments", "nodes", "deployments", "services", "persistentvolumeclaims", "pods"}
CREATE_CONCURRENCY = 64
BARE_REPEATS = 3
CRD_FILE = ROOT / "crds" / "turnout.dev_modeldeployments.yaml"
CRD_NAME = "modeldeployments.turnout.dev"
MD_PATH = "/apis/turnout.dev/v1alpha1"

log = logging.getLogger("bench_operator")


class Stamps:
    """When each ModelDeployment was created, got its Deployment and Service, and first had a status phase."""

    def __init__(self) -> None:
        self.created: dict[str, float] = {}
        self.children: dict[str, dict[str, float]] = {}
        self.status: dict[str, float] = {}
        self.md_modified: dict[str, int] = {}

    def observe(self, plural: str, type_: str, obj: dict[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        if plural == "modeldeployments":
            if type_ == "ADDED":
                self.created.setdefault(name, now)
            elif type_ == "MODIFIED":
                self.md_modified[name] = self.md_modified.get(name, 0) + 1
            if type_ != "DELETED" and (obj.get("status") or {}).get("phase"):
                self.status.setdefault(name, now)
        elif plural in ("deployments", "services") and type_ != "DELETED":
            self.children.setdefault(name, {}).setdefault(plural, now)

    def done(self, name: str) -> float | None:
        kids = self.children.get(name, {})
        if name in self.status and len(kids) == 2:
            return max(self.status[name], *kids.values())
        return None


class TimedKube(FakeKube):
    """The emulator, stamping (on its own loop) the changes the benchmark waits for."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.stamps = Stamps()

    async def _emit(self, res: Any, type_: str, obj: dict[str, Any]) -> None:
        self.stamps.observe(res[2], type_, obj, time.monotonic())
        await super()._emit(res, type_, obj)


def md(i: int, namespace: str = NS, replicas: int = 1, name: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name or f"md-{i:05d}", "namespace": namespace},
            "spec": {"model": {"name": "qwen2.5-instruct", "size": 1.5, "format": "gguf",
                               "quantization": "Q4_K_M"}, "replicas": replicas, "servedModelName": f"m{i}"}}


def cpu_node(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux"}},
            "spec": {}, "status": {"allocatable": {"cpu": "16", "memory": "64Gi"},
                                   "conditions": [{"type": "Ready", "status": "True"}]}}


async def _prepare(api: FakeKube) -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    api.schemas[MDS] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    await api.put_object(("", "v1", "namespaces"), {"metadata": {"name": NS}})
    for i in range(3):
        await api.put_object(NODES, cpu_node(f"cpu-{i}"))


Post = Callable[[int], Awaitable[tuple[int, float | None, str]]]  # md index -> (status, Retry-After, body)


async def create_each(n: int, post: Post) -> float:
    """Create n ModelDeployments through ``post``, CREATE_CONCURRENCY at a time; seconds until the last
    is accepted. A 429 (a real API server's priority and fairness) waits as it says, ten times at most."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    failures: list[str] = []

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            for _ in range(10):
                status, retry_after, text = await post(i)
                if status == 429:
                    await asyncio.sleep(retry_after or 1.0)
                    continue
                if status not in (200, 201):
                    failures.append(f"{status}: {text[:300]}")
                break
            else:
                failures.append(f"429 ten times for md-{i:05d}")

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(CREATE_CONCURRENCY)))
    if failures:
        raise RuntimeError(f"{len(failures)} of {n} creates failed, first: {failures[0]}")
    return time.monotonic() - start


async def create_all(session: aiohttp.ClientSession, url: str, n: int, *, namespace: str = NS,
                     replicas: int = 1, templates: Sequence[dict[str, Any]] = ()) -> float:
    """POST n ModelDeployments to the emulator at ``url``, each followed by the server-side apply of
    ``templates`` made for it (:func:`child_for`; as ``kubectl apply --server-side``); see :func:`create_each`."""
    url = url.rstrip("/")
    endpoint = f"{url}{MD_PATH}/namespaces/{namespace}/modeldeployments"

    async def post(i: int) -> tuple[int, float | None, str]:
        async with session.post(endpoint, json=md(i, namespace, replicas)) as r:
            if r.status not in (200, 201):
                retry_after = r.headers.get("Retry-After", "")
                return r.status, float(retry_after) if retry_after.isdigit() else None, await r.text()
        for template in templates:
            child = child_for(template, i, namespace)
            async with session.patch(f"{url}{child_path(child)}", data=json.dumps(child), headers=APPLY,
                                     params=APPLY_PARAMS) as r:
                if r.status not in (200, 201):
                    return r.status, None, await r.text()
        return 201, None, ""

    return await create_each(n, post)


#: What a hand-written copy of a rendered child keeps: the API server and the operator fill in the rest.
_KEPT_META = ("name", "namespace", "labels", "annotations")


def child_templates(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Deployment and Service the operator rendered for ``md-00000``, as a user would write them by hand:
    no status, no server fields, no ownerReferences (a hand-written object has no owner)."""
    out = []
    for obj in children:
        meta = {k: v for k, v in obj["metadata"].items() if k in _KEPT_META}
        out.append({"apiVersion": obj.get("apiVersion") or ("apps/v1" if "template" in obj["spec"] else "v1"),
                    "kind": obj.get("kind") or ("Deployment" if "template" in obj["spec"] else "Service"),
                    "metadata": meta, "spec": obj["spec"]})
    return out


def child_for(template: dict[str, Any], i: int, namespace: str) -> dict[str, Any]:
    """``template`` (rendered for md-00000) for ModelDeployment ``i`` in ``namespace``."""
    obj: dict[str, Any] = json.loads(json.dumps(template).replace("md-00000", f"md-{i:05d}"))
    obj["metadata"]["namespace"] = namespace
    if obj["kind"] == "Service":
        obj["spec"].pop("clusterIP", None)
        obj["spec"].pop("clusterIPs", None)
    return obj


def child_path(obj: dict[str, Any]) -> str:
    group = "/api/v1" if obj["apiVersion"] == "v1" else f"/apis/{obj['apiVersion']}"
    plural = "services" if obj["kind"] == "Service" else "deployments"
    return f"{group}/namespaces/{obj['metadata']['namespace']}/{plural}/{obj['metadata']['name']}"


APPLY = {"Content-Type": "application/apply-patch+yaml"}
APPLY_PARAMS = {"fieldManager": "bench-user", "force": "true"}


async def baseline_create(n: int, templates: Sequence[dict[str, Any]] = ()) -> float:
    """n creates with no operator on a fresh emulator, with a plain client. Without ``templates``, the bare
    creates: the ModelDeployments alone. With the Deployment and Service the operator renders, the fair
    baseline: what a user who serves a model without the operator writes, 3 writes each."""
    async with TimedKube() as api, kmock.Server(api), aiohttp.ClientSession() as session:
        await _prepare(api)
        return await create_all(session, str(api.url), n, templates=templates)


def kubeconfig(url: str, tmp: Path) -> Path:
    path = tmp / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "bench",
        "clusters": [{"name": "bench", "cluster": {"server": url.rstrip("/")}}],
        "users": [{"name": "bench", "user": {"token": "bench"}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}],
    }))
    return path


async def _wait_done(names: list[str], stamps: Stamps, op: Any, timeout: float, t0: float,
                     cpu: Callable[[], str]) -> tuple[list[float], float]:
    """Wait until every name is done (sampling the operator's RSS); returns the done stamps and the RSS peak."""
    peak = rss_mib(op.pid)
    while True:
        done = [stamps.done(x) for x in names]
        peak = max(peak, rss_mib(op.pid))
        if all(d is not None for d in done):
            return [d for d in done if d is not None], peak
        if op.popen.poll() is not None:
            raise RuntimeError(f"the operator exited with {op.popen.returncode}: {op.tail()}")
        if time.monotonic() - t0 > timeout:
            missing = sum(d is None for d in done)
            timeouts = op.tail(2_000_000).count("TimeoutError")
            raise TimeoutError(f"{missing} of {len(names)} ModelDeployments had no children and status after "
                               f"{timeout:.0f} s ({len(names) - missing} done; the operator logged {timeouts} "
                               f"request timeouts; {cpu()})")
        await asyncio.sleep(0.1)


def _figures(n: int, names: list[str], stamps: Stamps, done: list[float], t0: float) -> dict[str, Any]:
    latencies = [stamps.done(x) - stamps.created[x] for x in names]  # type: ignore[operator]
    return {"all_done_s": rnd(max(done) - t0, 3), "create_to_done_p50_s": rnd(pct(latencies, 50), 3),
            "create_to_done_p99_s": rnd(pct(latencies, 99), 3)}


async def operator_run(n: int, timeout: float, logdir: Path) -> dict[str, Any]:
    async with TimedKube() as api, kmock.Server(api), aiohttp.ClientSession() as session:
        await _prepare(api)
        url = str(api.url)
        tmp = Path(tempfile.mkdtemp(prefix="bench-operator-"))
        op = start_proc(f"operator-{n}", [PYTHON, "-m", "turnout.controller", "-A",
                                           "--metrics-port", "0", "--health-port", "0"],
                        0, logdir, env={"KUBECONFIG": str(kubeconfig(url, tmp))})
        try:
            t_start = time.monotonic()
            while {r.resource.plural for r in api.requests if r.resource is not None
                   and r.params.get("watch") == "true"} < WATCHED:
                if op.popen.poll() is not None:
                    raise RuntimeError(f"the operator exited with {op.popen.returncode}: {op.tail()}")
                if time.monotonic() - t_start > 120:
                    raise TimeoutError(f"the operator did not watch everything in 120 s: {op.tail()}")
                await asyncio.sleep(0.05)
            ready_s = time.monotonic() - t_start
            idle_rss = rss_mib(op.pid)
            since = len(api.requests)
            cpu_op0, cpu_api0 = cpu_seconds(op.pid), cpu_seconds(os.getpid())

            def cpu() -> str:
                return (f"CPU: operator {cpu_seconds(op.pid) - cpu_op0:.1f} s, emulator and driver "
                        f"{cpu_seconds(os.getpid()) - cpu_api0:.1f} s")

            t0 = time.monotonic()
            create_s = await create_all(session, url, n)
            names = [f"md-{i:05d}" for i in range(n)]
            done, peak = await _wait_done(names, api.stamps, op, timeout, t0, cpu)
            cpu_op, cpu_api = cpu_seconds(op.pid) - cpu_op0, cpu_seconds(os.getpid()) - cpu_api0
            figures = _figures(n, names, api.stamps, done, t0)
            await asyncio.sleep(1.0)  # let trailing writes (Events) land before counting
            after_rss = rss_mib(op.pid)  # what stays once the burst is over (kept state, and freed memory not returned)
            writes: dict[str, int] = {}
            reads: dict[str, int] = {}  # GETs that are not watches (lists, fetches, discovery)
            for r in api.requests[since:]:
                method = str(r.method.value).upper()
                key = f"{r.resource.plural if r.resource else r.url.path}{'/' + r.subresource if r.subresource else ''}"
                if method in ("POST", "PATCH", "PUT", "DELETE") and r.resource is not None:
                    writes[key] = writes.get(key, 0) + 1
                elif method == "GET" and r.params.get("watch") != "true":
                    reads[key] = reads.get(key, 0) + 1
            writes["modeldeployments"] = writes.get("modeldeployments", 0) - n  # the driver's own creates
            operator_writes = sum(writes.values())
            rendered = [api.get(DEPLOYMENTS, NS, "md-00000"), api.get(SERVICES, NS, "md-00000")]
            return {
                "_templates": child_templates([c for c in rendered if c]),
                "n": n, "api": "emulator", "operator_ready_s": rnd(ready_s, 2), "create_s": rnd(create_s, 3),
                **figures,
                "writes_per_deployment": rnd(operator_writes / n, 2), "writes_by_resource": writes,
                "reads": reads, "operator_cpu_s": rnd(cpu_op, 2), "api_and_driver_cpu_s": rnd(cpu_api, 2),
                "operator_rss_idle_mib": rnd(idle_rss, 1), "operator_rss_peak_mib": rnd(peak, 1),
                "operator_rss_after_mib": rnd(after_rss, 1), "load_average": load_average(),
            }
        finally:
            api.close_watches()
            op.stop()


# ----- a real cluster ---------------------------------------------------------------------------------


class Cluster:
    """The driver's session with a real API server, with the kubeconfig's credentials (as the operator logs in)."""

    def __init__(self, kubeconfig_path: str) -> None:
        os.environ["KUBECONFIG"] = kubeconfig_path  # the operator process gets it too
        self.kubeconfig = kubeconfig_path
        self.client: Any = None
        self.server = ""
        self.session: aiohttp.ClientSession | None = None  # plain HTTP to the operator's own /metrics

    async def __aenter__(self) -> Cluster:
        from turnout.kube import KubeClient, load_credentials

        creds = await load_credentials(self.kubeconfig)
        self.server = creds.server
        self.client = KubeClient(creds, timeout=120.0, user_agent="turnout-bench", connections=CREATE_CONCURRENCY + 8)
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.client is not None:
            await self.client.close()
        if self.session is not None:
            await self.session.close()

    async def create_all(self, n: int, *, namespace: str, replicas: int,
                         templates: Sequence[dict[str, Any]] = ()) -> float:
        """POST n ModelDeployments through the project's client, each followed by the server-side apply of
        ``templates`` made for it (the fair baseline: see :func:`baseline_create`; :func:`create_each`)."""
        from turnout.kube import ApiError, TransientApiError

        path = f"{MD_PATH}/namespaces/{namespace}/modeldeployments"

        async def post(i: int) -> tuple[int, float | None, str]:
            try:
                await self.client.request("POST", path, body=md(i, namespace, replicas))
                for template in templates:
                    child = child_for(template, i, namespace)
                    await self.client.request("PATCH", child_path(child), body=child, params=APPLY_PARAMS,
                                              content_type=APPLY["Content-Type"])
            except TransientApiError as exc:
                return exc.status, exc.retry_after, exc.message
            except ApiError as exc:
                return exc.status, None, exc.message
            return 201, None, ""

        return await create_each(n, post)

    async def call(self, method: str, path: str, body: Any = None, *, params: dict[str, str] | None = None,
                   content_type: str = "application/json", ok: tuple[int, ...] = (200, 201, 202)) -> Any:
        """One request; the decoded body, or None for a status in ``ok`` other than 2xx (e.g. 404)."""
        from turnout.kube import ApiError

        try:
            return await self.client.request(method, path, body=body, params=params, content_type=content_type)
        except ApiError as exc:
            if exc.status in ok:
                return None
            raise RuntimeError(f"{method} {path}: {exc.status}: {exc.message[:500]}") from exc

    async def watch(self, path: str, on_event: Callable[[str, dict[str, Any]], None],
                    stop: asyncio.Event, listed: asyncio.Event) -> None:
        """List, then watch from the list's resourceVersion until ``stop``; list again after 410 Gone."""
        from turnout.kube import ApiError

        while not stop.is_set():
            listing = await self.call("GET", path)
            for obj in listing.get("items") or []:
                on_event("ADDED", obj)
            rv = listing["metadata"]["resourceVersion"]
            listed.set()
            try:
                while not stop.is_set():
                    async for event in self.client.watch(path, {"resourceVersion": rv}):
                        obj = event.get("object") or {}
                        rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                        if event.get("type") != "BOOKMARK":
                            on_event(event["type"], obj)
                        if stop.is_set():
                            break
            except ApiError as exc:
                if exc.status != 410:
                    raise

    async def wait_gone(self, path: str, timeout: float = 180.0) -> bool:
        """Poll until the object is gone (cleanup, not measurement); False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.call("GET", path, ok=(200, 404)) is None:
                return True
            await asyncio.sleep(1.0)
        return False


def _writes_counters(text: str) -> dict[str, float]:
    """``turnout_operator_writes_total{kind="..."}`` from the operator's /metrics."""
    out: dict[str, float] = {}
    for m in re.finditer(r'^turnout_operator_writes_total\{kind="([^"]+)"\} ([0-9.e+]+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


async def _metrics(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        return _writes_counters(await r.text())


async def _ensure_crd(cluster: Cluster) -> bool:
    """Install the CRD if the cluster lacks it; True when this run created it. Waits for Established."""
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"
    if await cluster.call("GET", path, ok=(200, 404)) is not None:
        log.warning("the CRD %s is already installed: leaving it; an operator already running in this cluster "
                    "may act on the benchmark's objects too", CRD_NAME)
        return False
    await cluster.call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                       yaml.safe_load(CRD_FILE.read_text()))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        crd = await cluster.call("GET", path)
        if any(c.get("type") == "Established" and c.get("status") == "True"
               for c in (crd.get("status") or {}).get("conditions") or []):
            return True
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the CRD {CRD_NAME} was not Established in 60 s")


async def _cleanup(cluster: Cluster, namespaces: list[str], crd_ours: bool) -> list[str]:
    """Remove finalizers left on ModelDeployments, delete the namespaces (and the CRD if ours); problems found."""
    problems = []
    for ns in namespaces:
        listing = await cluster.call("GET", f"{MD_PATH}/namespaces/{ns}/modeldeployments", ok=(200, 404))
        for obj in (listing or {}).get("items") or []:
            if obj["metadata"].get("finalizers"):
                await cluster.call("PATCH", f"{MD_PATH}/namespaces/{ns}/modeldeployments/{obj['metadata']['name']}",
                                   {"metadata": {"finalizers": None}}, content_type="application/merge-patch+json",
                                   ok=(200, 404))
        await cluster.call("DELETE", f"/api/v1/namespaces/{ns}", ok=(200, 202, 404))
    for ns in namespaces:
        if not await cluster.wait_gone(f"/api/v1/namespaces/{ns}"):
            problems.append(f"namespace {ns} still there after 180 s")
    if crd_ours:
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"
        await cluster.call("DELETE", path, ok=(200, 202, 404))
        if not await cluster.wait_gone(path):
            problems.append(f"CRD {CRD_NAME} still there after 180 s")
    return problems


async def real_run(n: int, kubeconfig_path: str, timeout: float, logdir: Path) -> dict[str, Any]:
    """The measurement against the cluster in ``kubeconfig_path`` (see the module docstring)."""
    run_id = uuid.uuid4().hex[:6]
    ns, bare_ns, fair_ns = (f"turnout-bench-{run_id}", f"turnout-bench-bare-{run_id}",
                            f"turnout-bench-fair-{run_id}")
    async with Cluster(kubeconfig_path) as cluster:
        assert cluster.session is not None
        nodes = (await cluster.call("GET", "/api/v1/nodes")).get("items") or []
        if not nodes:
            raise RuntimeError("the cluster has no nodes: the operator resolves against the nodes' hardware")
        crd_ours = await _ensure_crd(cluster)
        created_ns: list[str] = []
        op = None
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        try:
            for name in (ns, bare_ns, fair_ns):
                await cluster.call("POST", "/api/v1/namespaces", {"metadata": {"name": name, "labels": {
                    "app.kubernetes.io/created-by": "turnout-bench"}}})
                created_ns.append(name)
            bare_s = await cluster.create_all(n, namespace=bare_ns, replicas=0)

            stamps = Stamps()
            tasks += await _watch_all(cluster, ns, stamps, stop)

            port = free_port()
            op = start_proc(f"operator-real-{n}", [PYTHON, "-m", "turnout.controller", "-n", ns,
                                                   "--metrics-port", str(port), "--health-port", "0",
                                                   "--bind-address", "127.0.0.1"],
                            0, logdir, env={"KUBECONFIG": kubeconfig_path})
            t_start = time.monotonic()
            await cluster.call("POST", f"{MD_PATH}/namespaces/{ns}/modeldeployments", md(0, ns, 0, "bench-canary"))
            await _wait_done(["bench-canary"], stamps, op, 120, t_start, lambda: "")
            ready_s = time.monotonic() - t_start
            idle_rss = rss_mib(op.pid)
            await asyncio.sleep(1.0)  # the canary's trailing Events
            before = await _metrics(cluster.session, port)
            modified0 = sum(stamps.md_modified.values())
            cpu_op0 = cpu_seconds(op.pid)

            def cpu() -> str:
                return f"operator CPU {cpu_seconds(op.pid) - cpu_op0:.1f} s"  # type: ignore[union-attr]

            meter = PlaneMeter(serves_locally(cluster.server))
            rest_s = await control_plane_at_rest() if meter.local else 0.0
            t0 = time.monotonic()
            meter.start()
            create_s = await cluster.create_all(n, namespace=ns, replicas=0)
            names = [f"md-{i:05d}" for i in range(n)]
            done, peak = await _wait_done(names, stamps, op, timeout, t0, cpu)
            cpu_op = cpu_seconds(op.pid) - cpu_op0
            plane_op, each_op, driver_op = meter.stop()
            figures = _figures(n, names, stamps, done, t0)
            await asyncio.sleep(2.0)  # let trailing writes (Events, kopf's patches) land before counting
            after = await _metrics(cluster.session, port)
            counted = {k: int(after.get(k, 0) - before.get(k, 0)) for k in sorted(set(after) | set(before))}
            kopf_patches = max(0, sum(stamps.md_modified.values()) - modified0 - counted.get("status", 0))
            rendered = [await cluster.call("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/md-00000"),
                        await cluster.call("GET", f"/api/v1/namespaces/{ns}/services/md-00000")]
            # The same three watches on the fair baseline's namespace while it writes: the API server streams
            # its changes to this process as it does the operator's (what the stamps cost is on both sides).
            fair_stop = asyncio.Event()
            fair_watches = await _watch_all(cluster, fair_ns, Stamps(), fair_stop)
            tasks += fair_watches
            rest_s += await control_plane_at_rest() if meter.local else 0.0
            meter.start()
            fair_s = await cluster.create_all(n, namespace=fair_ns, replicas=0, templates=child_templates(rendered))
            plane_fair, each_fair, driver_fair = meter.stop()
            fair_stop.set()
            writes = {"deployments+services (apply)": counted.get("apply", 0),
                      "modeldeployments/status": counted.get("status", 0), "events": counted.get("event", 0),
                      "modeldeployments (kopf, from the watch)": kopf_patches}
            return {
                "n": n, "api": "real cluster", "server": cluster.server, "nodes": len(nodes),
                "crd_preexisting": not crd_ours, "operator_ready_s": rnd(ready_s, 2), "create_s": rnd(create_s, 3),
                **figures, "bare_create_s": rnd(bare_s, 3),
                "ratio_to_bare": rnd((max(done) - t0) / bare_s, 2) if bare_s else None,
                "fair_create_s": rnd(fair_s, 3), "ratio_to_fair": rnd((max(done) - t0) / fair_s, 2) if fair_s else None,
                "writes_per_deployment": rnd(sum(writes.values()) / n, 2), "writes_by_resource": writes,
                "operator_cpu_s": rnd(cpu_op, 2), "api_and_driver_cpu_s": None,
                # the control plane's own CPU (API server, etcd, controller manager, scheduler) from the creates
                # to the last status, and during the fair baseline's writes (None: it runs elsewhere)
                "control_plane_cpu_s": plane_op, "fair_control_plane_cpu_s": plane_fair,
                "control_plane_cpu_each_s": each_op, "fair_control_plane_cpu_each_s": each_fair,
                "driver_cpu_s": driver_op, "fair_driver_cpu_s": driver_fair,
                # all the CPU of the run (operator, control plane, driver) over the fair baseline's
                "cpu_ratio_to_fair": rnd((cpu_op + plane_op + driver_op) / (plane_fair + driver_fair), 2)
                if plane_op is not None and plane_fair else None,
                "waited_for_rest_s": rnd(rest_s, 1),
                "operator_rss_idle_mib": rnd(idle_rss, 1), "operator_rss_peak_mib": rnd(peak, 1),
                "load_average": load_average(),
            }
        finally:
            if op is not None:
                await asyncio.to_thread(op.stop)  # first, so that nothing writes while the namespaces go
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            problems = await _cleanup(cluster, created_ns, crd_ours)
            for problem in problems:
                log.warning("cleanup: %s", problem)


async def _watch_all(cluster: Cluster, namespace: str, stamps: Stamps,
                     stop: asyncio.Event) -> list[asyncio.Task[None]]:
    """Watches of ``namespace``'s ModelDeployments, Deployments and Services feeding ``stamps``, once listed."""
    listed = [asyncio.Event() for _ in range(3)]

    def on(plural: str) -> Callable[[str, dict[str, Any]], None]:
        return lambda type_, obj: stamps.observe(plural, type_, obj, time.monotonic())

    tasks = [asyncio.create_task(cluster.watch(f"{group_path}/namespaces/{namespace}/{plural}", on(plural), stop,
                                               ready))
             for (group_path, plural), ready in zip(
                 [(MD_PATH, "modeldeployments"), ("/apis/apps/v1", "deployments"), ("/api/v1", "services")],
                 listed, strict=True)]
    await asyncio.gather(*(e.wait() for e in listed))
    return tasks


#: The control plane's processes (``/proc/<pid>/comm``, cut at 15 characters), when it runs on this machine.
CONTROL_PLANE = ("kube-apiserver", "etcd", "kube-controller", "kube-scheduler")


def serves_locally(server: str) -> bool:
    """Whether a kube-apiserver on this machine listens on ``server``'s port (its ``--secure-port``, 6443 by
    default): only then is the local control plane's CPU the one the measured API server spends."""
    port = str(urlsplit(server).port or 443)
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and (proc / "comm").read_text().strip() == "kube-apiserver":
                args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
                ports = [a.split("=", 1)[1] for a in args if a.startswith("--secure-port=")] or ["6443"]
                if port in ports:
                    return True
    return False


def control_plane_cpu() -> float | None:
    """CPU seconds the local control plane's processes used so far (None: none runs on this machine)."""
    each = control_plane_cpu_each()
    return sum(each.values()) if each else None


def control_plane_cpu_each() -> dict[str, float]:
    """CPU seconds so far of each local control-plane process, by name (empty: none runs here)."""
    out: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            name = (proc / "comm").read_text().strip()
            if name in CONTROL_PLANE:
                out[name] = out.get(name, 0.0) + cpu_seconds(int(proc.name))
    return out


class PlaneMeter:
    """The local control plane's CPU over a window, total and per process (all None when the API server
    measured is not the local one, see :func:`serves_locally`), with the driver's own CPU."""

    def __init__(self, local: bool) -> None:
        self.local = local
        self._each: dict[str, float] = {}
        self._driver = 0.0

    def start(self) -> None:
        self._each = control_plane_cpu_each() if self.local else {}
        self._driver = cpu_seconds(os.getpid())

    def stop(self) -> tuple[float | None, dict[str, float] | None, float]:
        """(control plane CPU s, per process, driver CPU s) since :meth:`start`."""
        driver = rnd(cpu_seconds(os.getpid()) - self._driver, 2)
        if not self.local:
            return None, None, driver
        after = control_plane_cpu_each()
        each = {k: rnd(after[k] - self._each.get(k, 0.0), 2) for k in sorted(after)}
        return rnd(sum(each.values()), 2), each, driver


async def control_plane_at_rest(limit: float = 0.25, quiet_s: float = 3.0, timeout: float = 180.0) -> float:
    """Wait until the local control plane used less than ``limit`` of a core for ``quiet_s`` seconds (the
    controller manager works off its client-side rate limit for minutes after a burst: deleting the last run's
    namespaces, ReplicaSets of the last Deployments); the seconds waited. At most ``timeout``."""
    started = time.monotonic()
    last, quiet_since = control_plane_cpu(), time.monotonic()
    if last is None:
        return 0.0
    while time.monotonic() - started < timeout:
        await asyncio.sleep(1.0)
        now = control_plane_cpu() or 0.0
        if now - last > limit:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            break
        last = now
    return time.monotonic() - started


# ----- entry points -----------------------------------------------------------------------------------


def _baseline(n: int, templates: Sequence[dict[str, Any]] = ()) -> tuple[float, float]:
    """:func:`baseline_create` (bare, or fair with ``templates``) on fresh emulators, BARE_REPEATS runs: the
    fastest wall time (the floor; other processes' load only adds to it: on a loaded machine one run in three
    took 6x the others) and the median CPU seconds of this process (emulator and driver, like
    ``api_and_driver_cpu_s``), which the load does not move.
    """
    walls, cpus = [], []
    for _ in range(BARE_REPEATS):
        cpu0 = cpu_seconds(os.getpid())
        walls.append(asyncio.run(baseline_create(n, templates)))
        cpus.append(cpu_seconds(os.getpid()) - cpu0)
    return min(walls), statistics.median(cpus)


def run(quick: bool = False, *, sizes: list[int] | None = None, logdir: Path | None = None,
        kubeconfig: str | None = None) -> dict[str, Any]:
    """Rows for each N; against a real cluster when ``kubeconfig`` (or $TURNOUT_BENCH_KUBECONFIG) is given."""
    sizes = sizes or [100, 1000]  # N=1000 takes ~15-30 s against the emulator, so quick runs it too
    logdir = logdir or ROOT / "benchmarks" / "results" / "logs"
    kubeconfig = kubeconfig or os.environ.get("TURNOUT_BENCH_KUBECONFIG") or None
    started = time.monotonic()
    rows = []
    for n in sizes:
        try:
            if kubeconfig:
                row = asyncio.run(real_run(n, kubeconfig, timeout=300 + 0.5 * n, logdir=logdir))
            else:
                row = asyncio.run(operator_run(n, timeout=120 + 0.3 * n, logdir=logdir))
                bare_s, bare_cpu = _baseline(n)
                row["bare_create_s"], row["bare_create_cpu_s"] = rnd(bare_s, 3), rnd(bare_cpu, 2)
                # All the CPU the operator's run cost (operator + emulator + driver) over the bare creates' CPU:
                # the same question as ratio_to_bare, answered without the other processes' load.
                row["cpu_ratio_to_bare"] = rnd((row["operator_cpu_s"] + row["api_and_driver_cpu_s"]) / bare_cpu, 2) \
                    if bare_cpu else None
                row["ratio_to_bare"] = rnd(row["all_done_s"] / row["bare_create_s"], 2) if row["bare_create_s"] \
                    else None
                templates = row.pop("_templates")
                if len(templates) != 2:
                    raise RuntimeError("the operator rendered no Deployment and Service for md-00000")
                fair_s, fair_cpu = _baseline(n, templates)
                # The fair baseline: the same N ModelDeployments plus the Deployment and Service the operator
                # renders, written by a plain client (3 writes per deployment) on the same kind of API server.
                row["fair_create_s"], row["fair_create_cpu_s"] = rnd(fair_s, 3), rnd(fair_cpu, 2)
                row["ratio_to_fair"] = rnd(row["all_done_s"] / fair_s, 2) if fair_s else None
                row["cpu_ratio_to_fair"] = rnd((row["operator_cpu_s"] + row["api_and_driver_cpu_s"]) / fair_cpu, 2) \
                    if fair_cpu else None
        except Exception as exc:
            row = {"n": n, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        rows.append(row)
    api = f"real cluster ({kubeconfig})" if kubeconfig else "tests/controller/fakekube.py (kmock)"
    return {"rows": rows, "api": api, "wall_s": rnd(time.monotonic() - started, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, action="append", help="deployments per run (repeatable; default 100 and 1000)")
    p.add_argument("--quick", action="store_true", help="N=100 only")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--kubeconfig", metavar="PATH", help="measure against this cluster instead of the emulator")
    where.add_argument("--real", action="store_true", help="measure against the cluster in $KUBECONFIG")
    a = p.parse_args()
    kubeconfig = a.kubeconfig
    if a.real:
        kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        if not os.path.exists(kubeconfig.split(os.pathsep)[0]):
            p.error("--real: set KUBECONFIG (or have ~/.kube/config)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")  # no access logs
    with contextlib.suppress(KeyboardInterrupt):
        sizes = a.n or ([100] if a.quick else None)
        print(json.dumps(run(a.quick, sizes=sizes, kubeconfig=kubeconfig), indent=1))


if __name__ == "__main__":
    main()
