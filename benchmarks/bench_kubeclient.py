"""Kubernetes client libraries on a real API server: kubernetes_asyncio (what turnout uses) vs lightkube.

The work is the operator's own kind of call: server-side apply of N objects (ConfigMaps shaped like a
rendered child, ~1 KiB), a second apply of each that changes nothing, and a merge patch of each. It
runs against the cluster in ``--kubeconfig`` with 16 calls in flight, and reports per library the wall
time and the driver's CPU per call, as ratios to raw aiohttp (a hand-written request with the same
TLS and headers: the floor, what the old client did) in the same run.

    pip install lightkube   # lightkube is not a dependency of turnout
    python benchmarks/bench_kubeclient.py --kubeconfig ~/.kube/config [-n 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

CONCURRENCY = 16


def config_map(name: str, namespace: str, version: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "turnout-bench", "turnout.dev/spec-hash": "abc"}},
        "data": {"args": json.dumps(["--model", "/models/x", "--port", "8000"] * 20), "v": str(version)},
    }


async def _run(calls: list[Callable[[], Awaitable[Any]]]) -> tuple[float, float]:
    queue = list(reversed(calls))

    async def worker() -> None:
        while queue:
            await queue.pop()()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - wall, time.process_time() - cpu


async def bench_kubernetes_asyncio(kubeconfig: str, ns: str, n: int) -> tuple[float, float]:
    from turnout.kube import KubeClient, load_credentials

    creds = await load_credentials(kubeconfig)
    async with KubeClient(creds, connections=CONCURRENCY) as client:
        path = f"/api/v1/namespaces/{ns}/configmaps"
        calls: list[Callable[[], Awaitable[Any]]] = []
        for i in range(n):
            calls.append(lambda i=i: client.apply(config_map(f"ka-{i}", ns, 1)))
        for i in range(n):
            calls.append(lambda i=i: client.apply(config_map(f"ka-{i}", ns, 1)))
        for i in range(n):
            calls.append(lambda i=i: client.merge_patch(f"{path}/ka-{i}", {"data": {"v": "2"}}))
        return await _run(calls)


async def bench_lightkube(kubeconfig: str, ns: str, n: int) -> tuple[float, float]:
    import httpx2
    from lightkube import AsyncClient, KubeConfig
    from lightkube.codecs import from_dict
    from lightkube.resources.core_v1 import ConfigMap
    from lightkube.types import PatchType

    client = AsyncClient(KubeConfig.from_file(kubeconfig), field_manager="turnout",
                         timeout=httpx2.Timeout(60), trust_env=False)
    calls: list[Callable[[], Awaitable[Any]]] = []
    for i in range(n):
        calls.append(lambda i=i: client.apply(from_dict(config_map(f"lk-{i}", ns, 1)), force=True))
    for i in range(n):
        calls.append(lambda i=i: client.apply(from_dict(config_map(f"lk-{i}", ns, 1)), force=True))
    for i in range(n):
        calls.append(lambda i=i: client.patch(ConfigMap, f"lk-{i}", {"data": {"v": "2"}}, namespace=ns,
                                              patch_type=PatchType.MERGE))
    try:
        return await _run(calls)
    finally:
        await client.close()


async def bench_aiohttp(kubeconfig: str, ns: str, n: int) -> tuple[float, float]:
    """The floor: aiohttp with the same TLS context and token, no client library."""
    from turnout.kube import load_credentials
    from turnout.kube.session import aiohttp_session

    creds = await load_credentials(kubeconfig)
    base = f"{creds.server}/api/v1/namespaces/{ns}/configmaps"
    async with aiohttp_session(creds) as session:

        async def send(method: str, url: str, body: Any, content_type: str, params: dict[str, str]) -> Any:
            async with session.request(method, url, data=json.dumps(body), params=params,
                                       headers={"Content-Type": content_type}) as r:
                text = await r.text()
                if r.status >= 300:
                    raise RuntimeError(f"{r.status}: {text[:200]}")
                return json.loads(text)

        apply = {"fieldManager": "turnout", "force": "true"}
        calls: list[Callable[[], Awaitable[Any]]] = []
        for _ in range(2):
            for i in range(n):
                calls.append(lambda i=i: send("PATCH", f"{base}/ah-{i}", config_map(f"ah-{i}", ns, 1),
                                              "application/apply-patch+yaml", apply))
        for i in range(n):
            calls.append(lambda i=i: send("PATCH", f"{base}/ah-{i}", {"data": {"v": "2"}},
                                          "application/merge-patch+json", {"fieldManager": "turnout"}))
        return await _run(calls)


async def main_async(kubeconfig: str, n: int, rounds: int) -> dict[str, Any]:
    from turnout.kube import KubeClient, load_credentials

    ns = f"bench-client-{uuid.uuid4().hex[:6]}"
    async with KubeClient(await load_credentials(kubeconfig)) as admin:
        await admin.create("/api/v1/namespaces", {"metadata": {"name": ns}})
        try:
            results: dict[str, list[tuple[float, float]]] = {"aiohttp": [], "kubernetes_asyncio": [], "lightkube": []}
            for r in range(rounds):  # interleaved, so load changes hit every library alike
                for name, fn in (("aiohttp", bench_aiohttp), ("kubernetes_asyncio", bench_kubernetes_asyncio),
                                 ("lightkube", bench_lightkube)):
                    results[name].append(await fn(kubeconfig, ns, n))
                    print(f"round {r + 1} {name}: {results[name][-1][0]:.2f} s wall, "
                          f"{results[name][-1][1]:.2f} s CPU", file=sys.stderr)
        finally:
            await admin.delete(f"/api/v1/namespaces/{ns}", propagation=None)
    calls = 3 * n
    best = {k: min(v) for k, v in results.items()}  # the least disturbed round of each
    floor_wall, floor_cpu = best["aiohttp"]
    return {
        "n_objects": n, "calls": calls, "concurrency": CONCURRENCY, "rounds": rounds,
        "libraries": {
            k: {"wall_s": round(w, 2), "cpu_ms_per_call": round(1000 * c / calls, 3),
                "wall_ratio_to_aiohttp": round(w / floor_wall, 2), "cpu_ratio_to_aiohttp": round(c / floor_cpu, 2)}
            for k, (w, c) in best.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("-n", type=int, default=500, help="objects per library (3 calls each)")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    print(json.dumps(asyncio.run(main_async(a.kubeconfig, a.n, a.rounds)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
