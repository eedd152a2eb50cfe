"""LeastRequests with two gateway replicas against one: how even the model replicas' load stays when each
gateway knows only its own in-flight requests.

    python benchmarks/bench_gateway_ha.py [--engines 4] [--clients 24] [--requests 400] [--out FILE]

In one event loop: ``--engines`` stand-in engines (``standin_engine.py``, streaming at ``--token-delay``),
one or two :class:`~turnout.gateway.app.GatewayApp` replicas over them (uvicorn, httptools), and
``--clients`` closed-loop clients streaming chat completions of mixed lengths (``max_tokens`` drawn from
4, 8, 16, 32 and 128), each request sent to a gateway drawn at random (as kube-proxy spreads a Service's
connections). Also the benchmark's baseline: one gateway routing at random (``gateway_static``'s Random).

Figures per setup: the engines' in-flight requests sampled every 5 ms while at least half the clients have
a request in flight — the mean over samples of
max/mean across engines (1.0 is perfect balance), the highest in-flight seen on one engine — and the
clients' p50/p99 latency. Prints a markdown table; ``--out`` writes the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_static import RANDOM, FixedSource
from standin_engine import StandinEngine

from turnout.freeport import free_port
from turnout.gateway.app import GatewayApp
from turnout.gateway.routing import LEAST_REQUESTS, RoutingSpec

LENGTHS = (4, 8, 16, 32, 128)


class Counted:
    """An ASGI app that counts its HTTP requests in flight."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.in_flight = 0
        self.served = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.served += 1


async def _serve(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                           http="httptools", access_log=False))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, port


async def run_setup(gateways: int, *, engines: int, clients: int, requests: int, token_delay: float,
                    random_routing: bool = False, seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []
    counted = [Counted(StandinEngine("standin", token_delay)) for _ in range(engines)]
    ports = []
    for app in counted:
        server, task, port = await _serve(app)
        servers.append((server, task))
        ports.append(port)
    gateway_ports = []
    for _ in range(gateways):
        defaults = RoutingSpec()
        source = FixedSource({"standin": [("127.0.0.1", p) for p in ports]},
                             RANDOM if random_routing else LEAST_REQUESTS, defaults.prefix_chars,
                             defaults.load_factor)
        server, task, port = await _serve(GatewayApp(source))
        servers.append((server, task))
        model = source.registry.get("standin")
        assert model is not None and len(model.endpoints) == engines
        gateway_ports.append(port)

    samples: list[list[int]] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            samples.append([c.in_flight for c in counted])
            await asyncio.sleep(0.005)

    todo = list(range(requests))
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while todo:
            todo.pop()
            url = f"http://127.0.0.1:{rng.choice(gateway_ports)}/v1/chat/completions"
            body = {"model": "standin", "messages": [{"role": "user", "content": "x"}], "stream": True,
                    "max_tokens": rng.choice(LENGTHS)}
            start = time.perf_counter()
            async with http.stream("POST", url, json=body) as resp:
                text = await resp.aread()
            if resp.status_code != 200 or not text.rstrip().endswith(b"[DONE]"):
                errors += 1
            latencies.append(time.perf_counter() - start)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    wall = time.perf_counter() - started
    stop.set()
    await sampler
    for server, task in servers:
        server.should_exit = True
        await task
    # Steady state only: at least half the clients in flight (not the ramp-up, not the last stragglers).
    busy = [s for s in samples if sum(s) >= clients / 2]
    ratios = [max(s) / (sum(s) / len(s)) for s in busy]
    latencies.sort()
    return {
        "gateways": gateways, "routing": "Random" if random_routing else "LeastRequests", "engines": engines,
        "clients": clients, "requests": requests, "errors": errors, "wall_s": round(wall, 2),
        "max_over_mean": round(statistics.fmean(ratios), 3) if ratios else None,
        "peak_in_flight": max(max(s) for s in samples), "mean_in_flight": round(
            statistics.fmean(sum(s) / len(s) for s in busy), 2) if busy else 0,
        "served_per_engine": [c.served for c in counted],
        "p50_s": round(latencies[len(latencies) // 2], 3), "p99_s": round(latencies[int(len(latencies) * .99)], 3),
    }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    common = {"engines": args.engines, "clients": args.clients, "requests": args.requests,
              "token_delay": args.token_delay}
    return [await run_setup(1, **common), await run_setup(2, **common),
            await run_setup(1, **common, random_routing=True)]


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| setup | max/mean in-flight (1.0 = even) | peak on one engine | p50 / p99 latency | errors |",
             "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['gateways']} gateway{'s' if r['gateways'] > 1 else ''}, {r['routing']} | "
                     f"{r['max_over_mean']} | {r['peak_in_flight']} | {r['p50_s']} s / {r['p99_s']} s | "
                     f"{r['errors']} / {r['requests']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--engines", type=int, default=4)
    p.add_argument("--clients", type=int, default=24)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--token-delay", type=float, default=0.004)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    results = asyncio.run(main_async(args))
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
