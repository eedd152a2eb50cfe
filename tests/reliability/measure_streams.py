"""Measure the shim under load and faults; prints one JSON object (recorded in docs/reliability.md).

* ``streams``: N concurrent streaming clients (default 1,000) through a real
  ``turnout-shim`` process (proxy backend) to the SGLang stand-in engine
  (tests/shim/standin), all on 127.0.0.1. The shim's RSS is read from
  ``/proc/<pid>/status`` before, during (sampled) and after; once all N
  streams are open, extra requests past ``--max-queue`` must get 429 with
  ``Retry-After``.
  A second wave on the same shim shows whether memory plateaus or keeps growing.
* ``engine_death``: SIGKILL the engine under an open stream and time how long
  ``/health`` takes to answer 503, and how the stream ends.

Run: ``python tests/reliability/measure_streams.py [--streams 1000] [--repeat 3]``
(about a minute on 2 cores). ``test_reliability_load.py`` runs a smaller load as a slow test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

if str(Path(__file__).resolve().parents[1] / "shim") not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shim"))
from shimproc import RunningShim, start_shim_process

MSG = [{"role": "user", "content": "hi"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def metric(shim: RunningShim, name: str) -> float:
    for line in httpx.get(shim.base_url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def start(tmp: Path, **kw: Any) -> RunningShim:
    tmp.mkdir(parents=True, exist_ok=True)
    shim = start_shim_process(tmp, free_port(), **kw)
    shim.wait_health(200)
    return shim


async def _stream(session: aiohttp.ClientSession, url: str, tokens: int, delay: float,
                  opened: list[int], result: dict[str, int]) -> None:
    body = {"messages": MSG, "max_tokens": tokens, "stream": True, "standin_delay": delay}
    async with session.post(url, json=body) as r:
        if r.status != 200:
            result[f"status_{r.status}"] = result.get(f"status_{r.status}", 0) + 1
            await r.read()
            return
        first, done, content = True, False, 0
        async for line in r.content:
            if not line.startswith(b"data: "):
                continue
            if first:
                opened[0] += 1
                first = False
            if line.strip() == b"data: [DONE]":
                done = True
            elif b'"content":"w' in line:
                content += 1
        key = "complete" if done and content == tokens else "incomplete"
        result[key] = result.get(key, 0) + 1


async def load(shim: RunningShim, streams: int, tokens: int, delay: float, overflow: int) -> dict[str, Any]:
    pid = shim.proc.pid
    url = shim.base_url + "/v1/chat/completions"
    idle = rss_kib(pid)
    result: dict[str, int] = {}
    opened = [0]
    samples: list[int] = []
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = time.monotonic()
        tasks = [asyncio.create_task(_stream(session, url, tokens, delay, opened, result)) for _ in range(streams)]
        while opened[0] < streams and not all(t.done() for t in tasks):
            samples.append(rss_kib(pid)["VmRSS"])
            await asyncio.sleep(0.05)
        all_open_s = time.monotonic() - t0
        at_full = {**rss_kib(pid), "fds": fds(pid)}

        # past the queue limit: 429 with Retry-After, and memory does not grow for them
        async def one() -> tuple[int, str | None]:
            async with session.post(url, json={"messages": MSG, "max_tokens": 1}) as r:
                await r.read()
                return r.status, r.headers.get("Retry-After")

        t_overflow = time.monotonic()
        rejected = await asyncio.gather(*(one() for _ in range(overflow)))
        overflow_s = time.monotonic() - t_overflow
        after_overflow = rss_kib(pid)
        in_flight = await asyncio.to_thread(metric, shim, "turnout_requests_in_flight")
        while not all(t.done() for t in tasks):
            samples.append(rss_kib(pid)["VmRSS"])
            await asyncio.sleep(0.05)
        for t in tasks:
            t.result()
        total_s = time.monotonic() - t0
    await asyncio.sleep(1.0)
    after = rss_kib(pid)
    return {
        "streams": streams, "tokens_per_stream": tokens, "delay_per_token_s": delay,
        "results": result, "all_open_after_s": round(all_open_s, 2), "all_done_after_s": round(total_s, 2),
        "rss_idle_kib": idle["VmRSS"], "rss_all_open_kib": at_full["VmRSS"], "fds_all_open": at_full["fds"],
        "rss_max_sampled_kib": max([*samples, at_full["VmRSS"]]), "rss_peak_hwm_kib": after["VmHWM"],
        "rss_after_kib": after["VmRSS"],
        "rss_per_open_stream_kib": round((at_full["VmRSS"] - idle["VmRSS"]) / streams, 1),
        "overflow_requests": overflow,
        "in_flight_after_overflow": in_flight, "overflow_answered_in_s": round(overflow_s, 2),
        "overflow_statuses": {str(s): sum(1 for x, _ in rejected if x == s) for s in sorted({s for s, _ in rejected})},
        "overflow_retry_after": sorted({ra for _, ra in rejected if ra is not None}),
        "rss_growth_from_overflow_kib": after_overflow["VmRSS"] - at_full["VmRSS"],
    }


def engine_death(tmp: Path) -> dict[str, Any]:
    """SIGKILL the engine under an open stream; seconds until /health says 503, and how the stream ended."""
    shim = start(tmp)
    try:
        engine_pid = shim.engine_stats()["pid"]
        with shim.http() as h, h.stream("POST", "/v1/chat/completions", json={
                "messages": MSG, "max_tokens": 4000, "stream": True, "standin_delay": 0.02}) as r:
            events: list[str] = []
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("data: "):
                    events.append(line[6:])
                if len(events) == 3:
                    t0 = time.monotonic()
                    os.kill(engine_pid, signal.SIGKILL)
                    break
            health_503_s = None
            while time.monotonic() - t0 < 10:
                if httpx.get(shim.base_url + "/health", timeout=5).status_code == 503:
                    health_503_s = time.monotonic() - t0
                    break
                time.sleep(0.005)
            for line in lines:
                if line.startswith("data: "):
                    events.append(line[6:])
            stream_end_s = time.monotonic() - t0
        last_error = json.loads(events[-2]).get("error", {}) if len(events) >= 2 else {}
        return {"health_503_after_s": None if health_503_s is None else round(health_503_s, 3),
                "stream_ended_after_s": round(stream_end_s, 3), "stream_last_event": events[-1],
                "stream_error_code": last_error.get("code")}
    finally:
        shim.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--tokens", type=int, default=100, help="tokens per stream")
    p.add_argument("--delay", type=float, default=0.2, help="seconds per token in the stand-in engine")
    p.add_argument("--overflow", type=int, default=20, help="requests sent once every stream is open")
    p.add_argument("--waves", type=int, default=2, help="load waves on the same shim (memory must plateau)")
    p.add_argument("--repeat", type=int, default=3, help="engine-death measurements")
    a = p.parse_args(argv)
    out: dict[str, Any] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        shim = start(Path(tmp) / "load", max_queue=a.streams,
                     env={"TURNOUT_ACCESS_LOG": "0", "TURNOUT_LOG_LEVEL": "WARNING"})
        try:
            out["load"] = [asyncio.run(load(shim, a.streams, a.tokens, a.delay, a.overflow)) for _ in range(a.waves)]
        finally:
            shim.stop()
        out["engine_death"] = [engine_death(Path(tmp) / f"death{i}") for i in range(a.repeat)]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
