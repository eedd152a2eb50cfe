"""Operator scale: N ModelDeployments applied at once against the API emulator the operator tests use.

    python benchmarks/bench_operator.py [--n 100] [--n 1000] [--json]

The API server is ``tests/controller/fakekube.py`` (kmock over real HTTP, with
the API server's object semantics and the CRD's schema validation), served
from this process. The operator is a separate process
(``python -m modelplane.controller -A``) logged in through a kubeconfig that
points at it, so its memory is its own. The driver POSTs N ModelDeployments
(64 at a time) and the emulator stamps, on its own event loop, when each one's
Deployment and Service appear and when its status first has a phase. Beside
it, a fresh emulator takes N bare creates of the same objects with no
operator: the floor a controller's writes are compared with.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from benchlib import PYTHON, ROOT, cpu_seconds, load_average, pct, rnd, rss_mib, start_proc

sys.path.insert(0, str(ROOT / "tests" / "controller"))
import kmock
from fakekube import FakeKube

MDS = ("modelplane.io", "v1alpha1", "modeldeployments")
DEPLOYMENTS = ("apps", "v1", "deployments")
SERVICES = ("", "v1", "services")
NODES = ("", "v1", "nodes")
NS = "models"
WATCHED = {"modeldeployments", "nodes", "deployments", "services", "persistentvolumeclaims", "pods"}
CREATE_CONCURRENCY = 64


class TimedKube(FakeKube):
    """The emulator, stamping when each ModelDeployment is created, gets its children, and gets a status."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.t_created: dict[str, float] = {}
        self.t_children: dict[str, dict[str, float]] = {}
        self.t_status: dict[str, float] = {}

    async def _emit(self, res: Any, type_: str, obj: dict[str, Any]) -> None:
        now = time.monotonic()
        name = obj["metadata"]["name"]
        if res == MDS:
            if type_ == "ADDED":
                self.t_created.setdefault(name, now)
            elif (obj.get("status") or {}).get("phase"):
                self.t_status.setdefault(name, now)
        elif res in (DEPLOYMENTS, SERVICES) and type_ == "ADDED":
            self.t_children.setdefault(name, {}).setdefault(res[2], now)
        await super()._emit(res, type_, obj)

    def done(self, name: str) -> float | None:
        kids = self.t_children.get(name, {})
        if name in self.t_status and len(kids) == 2:
            return max(self.t_status[name], *kids.values())
        return None


def md(i: int) -> dict[str, Any]:
    return {"apiVersion": "modelplane.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": f"md-{i:05d}", "namespace": NS},
            "spec": {"model": {"name": "qwen2.5-instruct", "size": 1.5, "format": "gguf",
                               "quantization": "Q4_K_M"}, "replicas": 1, "servedModelName": f"m{i}"}}


def cpu_node(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux"}},
            "spec": {}, "status": {"allocatable": {"cpu": "16", "memory": "64Gi"},
                                   "conditions": [{"type": "Ready", "status": "True"}]}}


async def _prepare(api: FakeKube) -> None:
    crd = yaml.safe_load((ROOT / "crds" / "modelplane.io_modeldeployments.yaml").read_text())
    api.schemas[MDS] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    await api.put_object(("", "v1", "namespaces"), {"metadata": {"name": NS}})
    for i in range(3):
        await api.put_object(NODES, cpu_node(f"cpu-{i}"))


async def create_all(url: str, n: int) -> float:
    """POST n ModelDeployments, CREATE_CONCURRENCY at a time; seconds until the last is accepted."""
    endpoint = f"{url.rstrip('/')}/apis/modelplane.io/v1alpha1/namespaces/{NS}/modeldeployments"
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    failures: list[str] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            async with session.post(endpoint, json=md(i)) as r:
                if r.status != 201 and r.status != 200:
                    failures.append(f"{r.status}: {(await r.text())[:200]}")

    start = time.monotonic()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(CREATE_CONCURRENCY)))
    if failures:
        raise RuntimeError(f"{len(failures)} creates failed, first: {failures[0]}")
    return time.monotonic() - start


async def bare_create(n: int) -> float:
    async with TimedKube() as api, kmock.Server(api):
        await _prepare(api)
        return await create_all(str(api.url), n)


def kubeconfig(url: str, tmp: Path) -> Path:
    path = tmp / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "bench",
        "clusters": [{"name": "bench", "cluster": {"server": url.rstrip("/")}}],
        "users": [{"name": "bench", "user": {"token": "bench"}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}],
    }))
    return path


async def operator_run(n: int, timeout: float, logdir: Path) -> dict[str, Any]:
    async with TimedKube() as api, kmock.Server(api):
        await _prepare(api)
        url = str(api.url)
        tmp = Path(tempfile.mkdtemp(prefix="bench-operator-"))
        op = start_proc(f"operator-{n}", [PYTHON, "-m", "modelplane.controller", "-A",
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
            t0 = time.monotonic()
            create_s = await create_all(url, n)
            names = [f"md-{i:05d}" for i in range(n)]
            peak = rss_mib(op.pid)
            while True:
                done = [api.done(x) for x in names]
                peak = max(peak, rss_mib(op.pid))
                if all(d is not None for d in done):
                    break
                if op.popen.poll() is not None:
                    raise RuntimeError(f"the operator exited with {op.popen.returncode}: {op.tail()}")
                if time.monotonic() - t0 > timeout:
                    missing = sum(d is None for d in done)
                    timeouts = op.tail(2_000_000).count("TimeoutError")
                    cpu_op, cpu_api = cpu_seconds(op.pid) - cpu_op0, cpu_seconds(os.getpid()) - cpu_api0
                    raise TimeoutError(f"{missing} of {n} ModelDeployments had no children and status after "
                                       f"{timeout:.0f} s ({n - missing} done; the operator logged {timeouts} "
                                       f"request timeouts; CPU: operator {cpu_op:.1f} s, emulator and driver "
                                       f"{cpu_api:.1f} s)")
                await asyncio.sleep(0.1)
            all_done = max(d for d in done if d is not None) - t0
            cpu_op, cpu_api = cpu_seconds(op.pid) - cpu_op0, cpu_seconds(os.getpid()) - cpu_api0
            latencies = [api.done(x) - api.t_created[x] for x in names]  # type: ignore[operator]
            await asyncio.sleep(1.0)  # let trailing writes (Events) land before counting
            writes: dict[str, int] = {}
            for r in api.requests[since:]:
                if str(r.method.value).upper() in ("POST", "PATCH", "PUT", "DELETE") and r.resource is not None:
                    key = f"{r.resource.plural}{'/' + r.subresource if r.subresource else ''}"
                    writes[key] = writes.get(key, 0) + 1
            writes["modeldeployments"] = writes.get("modeldeployments", 0) - n  # the driver's own creates
            operator_writes = sum(writes.values())
            return {
                "n": n, "operator_ready_s": rnd(ready_s, 2), "create_s": rnd(create_s, 3),
                "all_done_s": rnd(all_done, 3),
                "create_to_done_p50_s": rnd(pct(latencies, 50), 3), "create_to_done_p99_s": rnd(pct(latencies, 99), 3),
                "writes_per_deployment": rnd(operator_writes / n, 2), "writes_by_resource": writes,
                "operator_cpu_s": rnd(cpu_op, 2), "api_and_driver_cpu_s": rnd(cpu_api, 2),
                "operator_rss_idle_mib": rnd(idle_rss, 1), "operator_rss_peak_mib": rnd(peak, 1),
                "load_average": load_average(),
            }
        finally:
            api.close_watches()
            op.stop()


def run(quick: bool = False, *, sizes: list[int] | None = None, logdir: Path | None = None) -> dict[str, Any]:
    sizes = sizes or ([100] if quick else [100, 1000])
    logdir = logdir or ROOT / "benchmarks" / "results" / "logs"
    started = time.monotonic()
    rows = []
    for n in sizes:
        try:
            row = asyncio.run(operator_run(n, timeout=120 + 0.3 * n, logdir=logdir))
            row["bare_create_s"] = rnd(asyncio.run(bare_create(n)), 3)
            row["ratio_to_bare"] = rnd(row["all_done_s"] / row["bare_create_s"], 2) if row["bare_create_s"] else None
        except Exception as exc:
            row = {"n": n, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        rows.append(row)
    return {"rows": rows, "api": "tests/controller/fakekube.py (kmock)", "wall_s": rnd(time.monotonic() - started, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, action="append")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        print(json.dumps(run(a.quick, sizes=a.n), indent=1))


if __name__ == "__main__":
    main()
