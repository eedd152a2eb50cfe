"""Shared pieces of the benchmarks: an async streaming load generator, process stats, servers.

The load generator (aiohttp) keeps ``concurrency`` streams open for a fixed
window: each worker sends a streamed request, counts content chunks as they
arrive, records the time to the first content chunk, and sends the next one
when the answer ends. Tokens per second is the number of content chunks that
arrived inside the window divided by its length, so a slow tail cannot
stretch the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_seconds(pid: int) -> float:
    """CPU time of one process (all its threads, not its children).

    The sum of its threads' ``/proc/<pid>/task/*/schedstat`` run times
    (nanoseconds), so a 2 s window at 50 chunks/s is not rounded to whole
    10 ms clock ticks; utime + stime from ``/proc/<pid>/stat`` where schedstat
    is missing. (Threads that already exited are not in the sum; the shim's
    threads live as long as it does.)
    """
    with contextlib.suppress(OSError, ValueError):
        total = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                total += int((task / "schedstat").read_text().split()[0])
        if total:
            return total / 1e9
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15 of the file)


def rss_mib(pid: int) -> float:
    """Resident memory of one process in MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_rss_mib(pid: int) -> float:
    """RSS of a process and all its descendants."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            total += rss_mib(p)
    return total


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]


def pct(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) or None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def rnd(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


# ---------------------------------------------------------------------------------------------
# processes


@dataclass
class Proc:
    """A server process we started, in its own process group, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-n:]
        return ""

    def stop(self, grace: float = 10.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


def start_proc(name: str, argv: list[str], port: int, logdir: Path, env: dict[str, str] | None = None) -> Proc:
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}.log"
    fh = log.open("wb")
    popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env={**os.environ, **(env or {})}, start_new_session=True, cwd=str(ROOT))
    fh.close()
    return Proc(name, popen, log, port)


def wait_ready(proc: Proc, path: str = "/health", timeout: float = 120.0, *,
               headers: dict[str, str] | None = None) -> float:
    """Poll ``http://127.0.0.1:<port><path>`` until 200; returns seconds waited. Raises with the log tail."""
    start = time.monotonic()
    url = f"http://127.0.0.1:{proc.port}{path}"
    while time.monotonic() - start < timeout:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}: {proc.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0, headers=headers, trust_env=False).status_code == 200:
                return time.monotonic() - start
        time.sleep(0.05)
    raise TimeoutError(f"{proc.name} not ready at {url} after {timeout:.0f}s: {proc.tail()}")


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.stop()


# ---------------------------------------------------------------------------------------------
# load generation


@dataclass
class LoadResult:
    """One window of streaming load."""

    concurrency: int
    seconds: float
    tokens: int
    requests: int
    errors: int
    reconnects: int = 0
    ttft: list[float] = field(default_factory=list)
    first_error: str | None = None
    #: CPU seconds the watched process used inside the window, and its peak RSS (MiB)
    cpu: float | None = None
    rss_peak: float | None = None
    #: with ``usage=True``: the prompt tokens of the answers' usage chunks, and how many of them the engine
    #: took from its prompt cache (``usage.prompt_tokens_details.cached_tokens``)
    prompt_tokens: int = 0
    cached_tokens: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "seconds": rnd(self.seconds), "tokens": self.tokens,
                "tokens_per_s": rnd(self.tokens_per_s, 1), "requests": self.requests, "errors": self.errors,
                "reconnects": self.reconnects,
                "ttft_p50_ms": rnd((pct(self.ttft, 50) or 0) * 1000, 2) if self.ttft else None,
                "ttft_p99_ms": rnd((pct(self.ttft, 99) or 0) * 1000, 2) if self.ttft else None,
                "cpu_s": rnd(self.cpu), "cpu_ms_per_1000_chunks": rnd(self.cpu * 1e6 / self.tokens, 2)
                if self.cpu is not None and self.tokens else None,
                "rss_peak_mib": rnd(self.rss_peak, 1), "first_error": self.first_error,
                **({"prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens}
                   if self.prompt_tokens else {})}


_CONTENT = re.compile(rb'"(?:content|text)":\s*"[^"]')


def _has_content(data: bytes) -> bool:
    """A streamed chunk that carries generated text (chat delta content or completion text)."""
    return _CONTENT.search(data) is not None


async def stream_load(url: str, body: dict[str, Any], concurrency: int, duration: float, *,
                      headers: dict[str, str] | None = None, warmup: float = 0.0,
                      pid: int | None = None, bodies: Sequence[dict[str, Any]] | None = None,
                      usage: bool = False) -> LoadResult:
    """Keep ``concurrency`` streams open against ``url`` for ``duration`` seconds (after ``warmup``).

    With ``pid``, also read that process's CPU time at the window's start and end, and sample its RSS.
    With ``bodies``, requests take them in turn (``body`` is then ignored). With ``usage``, the
    answers' usage chunks are read for prompt and cached prompt tokens.
    """
    payloads = [json.dumps({**b, "stream": True}).encode() for b in (bodies or [body])]
    turn = 0
    hdrs = {"content-type": "application/json", **(headers or {})}
    res = LoadResult(concurrency, duration, 0, 0, 0)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    loop = asyncio.get_running_loop()
    t0 = loop.time() + warmup
    t_end = t0 + duration

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal turn
        while loop.time() < t_end:
            payload = payloads[turn % len(payloads)]
            turn += 1
            sent = loop.time()
            first = True
            try:
                async with session.post(url, data=payload, headers=hdrs) as r:
                    if r.status != 200:
                        res.errors += 1
                        if res.first_error is None:
                            res.first_error = f"HTTP {r.status}: {(await r.text())[:300]}"
                        await asyncio.sleep(0.05)
                        continue
                    async for line in r.content:
                        if not line.startswith(b"data: "):
                            continue
                        now = loop.time()
                        if now >= t_end:
                            return
                        if _has_content(line[6:].strip()):
                            if first:
                                first = False
                                if now >= t0:
                                    res.ttft.append(now - sent)
                            if now >= t0:
                                res.tokens += 1
                        elif usage and sent >= t0 and b'"usage"' in line:
                            u = json.loads(line[6:]).get("usage") or {}
                            res.prompt_tokens += int(u.get("prompt_tokens") or 0)
                            res.cached_tokens += int((u.get("prompt_tokens_details") or {}).get("cached_tokens")
                                                     or 0)
                if sent >= t0:
                    res.requests += 1
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
                if first and res.reconnects < 10_000:
                    # a pooled keep-alive connection the server had closed (llama-server does): retry now
                    res.reconnects += 1
                    continue
                res.errors += 1
                if res.first_error is None:
                    res.first_error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.05)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                res.errors += 1
                if res.first_error is None:
                    res.first_error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.05)

    marks: list[float] = []

    async def watch(p: int) -> None:
        await asyncio.sleep(max(0.0, t0 - loop.time()))
        marks.append(cpu_seconds(p))
        peak = 0.0
        while loop.time() < t_end:
            with contextlib.suppress(OSError):
                peak = max(peak, rss_mib(p))
            await asyncio.sleep(min(0.25, max(0.0, t_end - loop.time())))
        marks.append(cpu_seconds(p))
        res.rss_peak = max(peak, rss_mib(p))

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(worker(session)) for _ in range(concurrency)]
        if pid is not None:
            tasks.append(asyncio.create_task(watch(pid)))
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=warmup + duration + 30)
        except asyncio.TimeoutError:
            for t in tasks:
                t.cancel()
    if len(marks) == 2:
        res.cpu = marks[1] - marks[0]
    return res


def run_load(url: str, body: dict[str, Any], concurrency: int, duration: float, **kw: Any) -> LoadResult:
    return asyncio.run(stream_load(url, body, concurrency, duration, **kw))
