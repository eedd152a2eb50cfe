"""Shim overhead on the data path: a stand-in engine called directly and through the shim's proxy.

    python benchmarks/bench_shim.py [--quick] [--json]

The shim runs as ``turnout-shim --engine vllm`` with ``TURNOUT_VLLM_PYTHON``
pointing at a wrapper that starts ``standin_engine.py`` instead of vLLM, so the
proxy backend starts, health-checks and forwards to it exactly as it would to
vLLM. "Direct" calls that same engine process on its own port. Runs alternate
(direct, through, direct, through...) at each concurrency; ratios are the
median of the per-pair ratios. Two paces: ``fixed`` (a realistic per-stream
rate) and ``fast`` (as fast as the stand-in can write).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import (
    PYTHON,
    ROOT,
    children,
    cmdline,
    free_port,
    load_average,
    median,
    rnd,
    start_proc,
    stream_load,
    wait_ready,
)

SERVED = "standin"
PACES = {"fixed": 0.02, "fast": 0.0}  # seconds per token: 50 tokens/s per stream, and flat out
TOKENS = {"fixed": 64, "fast": 256}


def wrapper_script(tmp: Path) -> Path:
    """An executable that the proxy backend runs as "the vLLM Python": it starts the stand-in."""
    path = tmp / "standin-python"
    path.write_text(f'#!/bin/sh\nexec "{PYTHON}" "{ROOT / "benchmarks" / "standin_engine.py"}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def engine_port(shim_pid: int, timeout: float = 30.0) -> tuple[int, int]:
    """The stand-in child's pid and port (read from its command line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in children(shim_pid):
            argv = cmdline(pid)
            if "--port" in argv:
                return pid, int(argv[argv.index("--port") + 1])
        time.sleep(0.05)
    raise RuntimeError("the shim started no engine child with --port")


def measure_pace(pace: str, concurrencies: list[int], duration: float, reps: int, warmup: float,
                 logdir: Path) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-shim-"))
    port = free_port()
    shim = start_proc(f"shim-{pace}", [PYTHON, "-m", "turnout.shim", "--engine", "vllm",
                                        "--model", "file:///standin", "--served-model-name", SERVED,
                                        "--host", "127.0.0.1", "--port", str(port), "--max-queue", "100000"],
                      port, logdir, env={"TURNOUT_VLLM_PYTHON": str(wrapper_script(tmp)),
                                         "STANDIN_TOKEN_DELAY": str(PACES[pace])})
    try:
        startup = wait_ready(shim, "/health", timeout=120)
        _, eport = engine_port(shim.pid)
        body = {"model": SERVED, "messages": [{"role": "user", "content": "hello"}], "max_tokens": TOKENS[pace]}
        direct_url = f"http://127.0.0.1:{eport}/v1/chat/completions"
        shim_url = f"http://127.0.0.1:{port}/v1/chat/completions"
        rows = []
        for c in concurrencies:
            pairs = []
            for _ in range(reps):
                d = asyncio.run(stream_load(direct_url, body, c, duration, warmup=warmup))
                t = asyncio.run(stream_load(shim_url, body, c, duration, warmup=warmup, pid=shim.pid))
                pairs.append((d, t))
            ratios = [t.tokens_per_s / d.tokens_per_s for d, t in pairs if d.tokens_per_s]
            d50 = median([d.summary()["ttft_p50_ms"] for d, _ in pairs])
            t50 = median([t.summary()["ttft_p50_ms"] for _, t in pairs])
            d99 = median([d.summary()["ttft_p99_ms"] for d, _ in pairs])
            t99 = median([t.summary()["ttft_p99_ms"] for _, t in pairs])
            rows.append({
                "concurrency": c,
                "direct_tokens_per_s": rnd(median([d.tokens_per_s for d, _ in pairs]), 1),
                "shim_tokens_per_s": rnd(median([t.tokens_per_s for _, t in pairs]), 1),
                "ratio": rnd(median(ratios)),
                "ttft_p50_direct_ms": rnd(d50, 2), "ttft_p50_shim_ms": rnd(t50, 2),
                "added_ttft_p50_ms": rnd(t50 - d50, 2) if t50 is not None and d50 is not None else None,
                "added_ttft_p99_ms": rnd(t99 - d99, 2) if t99 is not None and d99 is not None else None,
                "shim_cpu_ms_per_1000_chunks": rnd(median([t.summary()["cpu_ms_per_1000_chunks"]
                                                           for _, t in pairs]), 2),
                "shim_rss_peak_mib": rnd(max(t.rss_peak or 0 for _, t in pairs), 1),
                "errors": sum(d.errors + t.errors for d, t in pairs),
                "first_error": next((x.first_error for p in pairs for x in p if x.first_error), None),
                "load_average": load_average(),
                "runs": [{"direct": d.summary(), "shim": t.summary()} for d, t in pairs],
            })
        return {"pace": pace, "seconds_per_token": PACES[pace], "tokens_per_request": TOKENS[pace],
                "shim_startup_s": rnd(startup), "rows": rows}
    finally:
        shim.stop()


def run(quick: bool = False, *, concurrencies: list[int] | None = None, duration: float | None = None,
        reps: int | None = None, logdir: Path | None = None, paces: list[str] | None = None) -> dict[str, Any]:
    concurrencies = concurrencies or [1, 16, 64, 256]
    duration = duration if duration is not None else (2.0 if quick else 8.0)
    reps = reps if reps is not None else (1 if quick else 3)
    warmup = min(1.0, duration / 4)
    logdir = logdir or ROOT / "benchmarks" / "results" / "logs"
    started = time.monotonic()
    results = [measure_pace(p, concurrencies, duration, reps, warmup, logdir) for p in (paces or list(PACES))]
    return {"duration_s": duration, "reps": reps, "warmup_s": warmup, "paces": results,
            "wall_s": rnd(time.monotonic() - started, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--concurrency", type=int, action="append")
    p.add_argument("--duration", type=float)
    p.add_argument("--reps", type=int)
    p.add_argument("--pace", choices=list(PACES), action="append", help="run only this pace (repeatable)")
    a = p.parse_args()
    out = run(a.quick, concurrencies=a.concurrency, duration=a.duration, reps=a.reps, paces=a.pace)
    if a.json:
        print(json.dumps(out, indent=1))
        return
    for pace in out["paces"]:
        for r in pace["rows"]:
            print(pace["pace"], r["concurrency"], r["direct_tokens_per_s"], r["shim_tokens_per_s"], r["ratio"],
                  r["added_ttft_p50_ms"], r["shim_cpu_ms_per_1000_chunks"], r["shim_rss_peak_mib"], r["errors"])


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
