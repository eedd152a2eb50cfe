"""The gateway's first millisecond at 1 stream: serial requests, direct and through the gateway, timed apart.

    python benchmarks/gateway_latency.py [--tokens 1 --tokens 256] [--gap 0 --gap 0.05] [--requests 300]
        [--base /tmp/base] [--out results/gateway_latency.json]

One fast stand-in engine (``standin_engine.py``, as fast as it can write) and
the gateway over it (``gateway_static.py``), as in ``bench_gateway.py``; then,
for each answer length and each pause between requests, rounds of serial
streamed requests alternate direct and through the gateway. Each request
records when its headers arrived, when its first body read arrived and how many
bytes it held, and when the answer was whole; the gateway's own CPU per request
is read from ``/proc`` (schedstat) over its rounds. ``--gap`` is the pause
after each answer: 0 keeps every process busy, a longer one lets the cores go
idle between requests, so that each hop pays the wake-up of a sleeping process
(the direct path pays it once, the gateway's path three times). With
``--base``, the gateway of that tree (its ``operator/`` and ``benchmarks/``:
``git archive <rev> operator benchmarks``) runs beside this one and every round
adds it, so the two trees are compared in the same minutes. Medians per row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
from benchlib import PYTHON, ROOT, Proc, cpu_seconds, free_port, load_average, rnd, start_proc, wait_ready

LOGS = ROOT / "benchmarks" / "results" / "logs"
STANDIN = "standin"


def _gateway(tree: Path, name: str, engine_port: int) -> Proc:
    port = free_port()
    proc = start_proc(name, [PYTHON, str(tree / "benchmarks" / "gateway_static.py"), "--port", str(port),
                             "--model", f"{STANDIN}=127.0.0.1:{engine_port}"], port, LOGS,
                      env={"PYTHONPATH": str(tree / "operator")})
    wait_ready(proc, "/health", timeout=60)
    return proc


async def _serial(port: int, tokens: int, gap: float, n: int) -> dict[str, float]:
    """``n`` streamed requests one after the other; medians in ms, and the first read's bytes."""
    body = json.dumps({"model": STANDIN, "messages": [{"role": "user", "content": "hi"}], "stream": True,
                       "max_tokens": tokens}).encode()
    heads, firsts, wholes, sizes = [], [], [], []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            t0 = time.perf_counter()
            async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                    headers={"content-type": "application/json"}) as r:
                heads.append(time.perf_counter() - t0)
                first = True
                async for chunk in r.content.iter_any():
                    if first:
                        first = False
                        firsts.append(time.perf_counter() - t0)
                        sizes.append(len(chunk))
                wholes.append(time.perf_counter() - t0)
            if gap:
                await asyncio.sleep(gap)
    return {"headers_ms": rnd(statistics.median(heads) * 1e3, 3),
            "first_read_ms": rnd(statistics.median(firsts) * 1e3, 3),
            "whole_ms": rnd(statistics.median(wholes) * 1e3, 3),
            "first_read_bytes": statistics.median(sizes)}


async def _row(engine_port: int, gateways: dict[str, Proc], tokens: int, gap: float, n: int,
               rounds: int) -> dict[str, Any]:
    direct: list[dict[str, float]] = []
    through: dict[str, list[dict[str, float]]] = {name: [] for name in gateways}
    cpu: dict[str, list[float]] = {name: [] for name in gateways}
    for _ in range(rounds):
        direct.append(await _serial(engine_port, tokens, gap, n))
        for name, gw in gateways.items():
            c0 = cpu_seconds(gw.pid)
            through[name].append(await _serial(gw.port, tokens, gap, n))
            cpu[name].append((cpu_seconds(gw.pid) - c0) / n * 1e6)

    def med(rows: list[dict[str, float]], key: str) -> float:
        return rnd(statistics.median(r[key] for r in rows), 3)

    row: dict[str, Any] = {"tokens": tokens, "gap_s": gap, "requests": n, "rounds": rounds,
                           "direct": {k: med(direct, k) for k in direct[0]}}
    for name in gateways:
        row[name] = {k: med(through[name], k) for k in through[name][0]}
        row[name]["added_first_read_ms"] = rnd(row[name]["first_read_ms"] - row["direct"]["first_read_ms"], 3)
        row[name]["added_headers_ms"] = rnd(row[name]["headers_ms"] - row["direct"]["headers_ms"], 3)
        row[name]["gateway_cpu_us_per_request"] = rnd(statistics.median(cpu[name]), 0)
    return row


def run(tokens: list[int], gaps: list[float], n: int, rounds: int, base: Path | None) -> dict[str, Any]:
    eport = free_port()
    engine = start_proc("latency-standin", [PYTHON, str(ROOT / "benchmarks" / "standin_engine.py"), "--port",
                                            str(eport), "--served-model-name", STANDIN, "--token-delay", "0"],
                        eport, LOGS)
    gateways: dict[str, Proc] = {}
    try:
        wait_ready(engine, "/health", timeout=60)
        gateways["gateway"] = _gateway(ROOT, "latency-gateway", eport)
        if base is not None:
            gateways["base_gateway"] = _gateway(base, "latency-gateway-base", eport)
        load0 = load_average()
        rows = [asyncio.run(_row(eport, gateways, t, g, n, rounds)) for t in tokens for g in gaps]
        return {"rows": rows, "base": str(base) if base else None, "load_average": [load0, load_average()]}
    finally:
        for proc in (*gateways.values(), engine):
            proc.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, action="append", help="answer length (repeatable; default 1 and 256)")
    p.add_argument("--gap", type=float, action="append", help="pause after each answer, s (default 0 and 0.05)")
    p.add_argument("--requests", type=int, default=200, help="serial requests per round and path")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--base", type=Path, help="a baseline tree (with operator/ and benchmarks/) to run beside")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    out = run(a.tokens or [1, 256], a.gap if a.gap is not None else [0.0, 0.05], a.requests, a.rounds, a.base)
    text = json.dumps(out, indent=1)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
