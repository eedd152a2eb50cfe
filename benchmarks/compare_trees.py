"""The shim's data-path rows for two source trees in one run: a baseline and this checkout.

    git archive <base> operator | tar -x -C /tmp/base     # the baseline's operator/ package
    python benchmarks/compare_trees.py --base /tmp/base [--quick] [--out results/compare.json]

Both trees' shims run at once (``PYTHONPATH=<tree>/operator`` for each), and
every window alternates: baseline's direct engine, baseline shim, this tree's
direct engine, this tree's shim. Rows are the medians of per-pair ratios
(through ÷ direct), as in ``bench_shim.py`` and ``bench_engines.py``: the proxy
at full speed and at a fixed 50 tokens/s per stream (``standin_engine.py``
behind ``--engine vllm``), with the shim's CPU per 1,000 chunks, and
llama.cpp through the shim ÷ llama.cpp's own server (``llamacpp_direct.py``)
at 1 and 8 streams; and the gateway (each tree's ``benchmarks/gateway_static.py``
over one fast stand-in engine) ÷ the engine direct, with its added TTFT. The
load average is recorded before and after each part. For the gateway part the
baseline tree needs its ``benchmarks/`` too (``git archive <base> operator benchmarks``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_engines import SERVED as LLAMA_SERVED
from bench_engines import _body
from bench_shim import PACES, SERVED, TOKENS, engine_port, wrapper_script
from benchlib import PYTHON, ROOT, Proc, free_port, load_average, median, rnd, start_proc, stream_load, wait_ready

LOGS = ROOT / "benchmarks" / "results" / "logs"


def _env(tree: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(tree / "operator")}


def _proxy_shim(tree: Path, name: str, pace: str) -> tuple[Proc, int]:
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="compare-"))
    shim = start_proc(name, [PYTHON, "-m", "turnout.shim", "--engine", "vllm", "--model", "file:///standin",
                             "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port),
                             "--max-queue", "100000"], port, LOGS,
                      env={**_env(tree), "TURNOUT_VLLM_PYTHON": str(wrapper_script(tmp)),
                           "STANDIN_TOKEN_DELAY": str(PACES[pace])})
    wait_ready(shim, "/health", timeout=120)
    return shim, engine_port(shim.pid)[1]


def proxy(trees: dict[str, Path], pace: str, concurrencies: list[int], duration: float, reps: int) -> dict[str, Any]:
    warm = min(1.0, duration / 4)
    body = {"model": SERVED, "messages": [{"role": "user", "content": "hello"}], "max_tokens": TOKENS[pace]}
    shims = {k: _proxy_shim(tree, f"compare-{k}-{pace}", pace) for k, tree in trees.items()}
    load_before = load_average()
    try:
        rows = []
        for c in concurrencies:
            ratios: dict[str, list[float]] = {k: [] for k in trees}
            cpu: dict[str, list[float]] = {k: [] for k in trees}
            errors = dict.fromkeys(trees, 0)
            for _ in range(reps):
                for k, (shim, eport) in shims.items():
                    d = asyncio.run(stream_load(f"http://127.0.0.1:{eport}/v1/chat/completions", body, c, duration,
                                                warmup=warm))
                    t = asyncio.run(stream_load(f"http://127.0.0.1:{shim.port}/v1/chat/completions", body, c,
                                                duration, warmup=warm, pid=shim.pid))
                    if d.tokens_per_s:
                        ratios[k].append(t.tokens_per_s / d.tokens_per_s)
                    errors[k] += d.errors + t.errors
                    cpu[k].append(t.summary()["cpu_ms_per_1000_chunks"])
            rows.append({"concurrency": c, **{k: {"ratio": rnd(median(ratios[k])),
                                                  "cpu_ms_per_1000_chunks": rnd(median(cpu[k]), 2),
                                                  "errors": errors[k]}
                                              for k in trees}})
        return {"pace": pace, "rows": rows, "load_average": [load_before, load_average()]}
    finally:
        for shim, _ in shims.values():
            shim.stop()


def llamacpp(trees: dict[str, Path], duration: float, reps: int, tokens: int) -> dict[str, Any]:
    from turnout.tinymodel import build_tiny_model

    gguf = str(build_tiny_model().gguf_path)
    warm = min(1.0, duration / 4)
    procs: list[Proc] = []
    try:
        dport = free_port()
        direct = start_proc("compare-llamacpp-direct", [PYTHON, str(ROOT / "benchmarks" / "llamacpp_direct.py"),
                                                        "--model", gguf, "--served-model-name", LLAMA_SERVED,
                                                        "--port", str(dport)], dport, LOGS)
        procs.append(direct)
        wait_ready(direct, "/health", timeout=120)
        shims = {}
        for k, tree in trees.items():
            port = free_port()
            shim = start_proc(f"compare-{k}-llamacpp", [PYTHON, "-m", "turnout.shim", "--engine", "llama.cpp",
                                                        "--model", gguf, "--served-model-name", LLAMA_SERVED,
                                                        "--host", "127.0.0.1", "--port", str(port)],
                              port, LOGS, env=_env(tree))
            procs.append(shim)
            wait_ready(shim, "/health", timeout=180)
            shims[k] = shim
        load_before = load_average()
        body = _body(tokens)
        rows = []
        for streams in (1, 8):
            ratios: dict[str, list[float]] = {k: [] for k in trees}
            cpu: dict[str, list[float]] = {k: [] for k in trees}
            for _ in range(reps):
                for k, shim in shims.items():
                    d = asyncio.run(stream_load(f"http://127.0.0.1:{dport}/v1/chat/completions", body, streams,
                                                duration, warmup=warm))
                    t = asyncio.run(stream_load(f"http://127.0.0.1:{shim.port}/v1/chat/completions", body, streams,
                                                duration, warmup=warm, pid=shim.pid))
                    if d.tokens_per_s:
                        ratios[k].append(t.tokens_per_s / d.tokens_per_s)
                    cpu[k].append(t.summary()["cpu_ms_per_1000_chunks"])
            # the shim process's CPU includes llama.cpp's own compute, the same on both sides
            rows.append({"streams": streams, **{k: {"ratio": rnd(median(ratios[k])),
                                                    "cpu_ms_per_1000_chunks": rnd(median(cpu[k]), 2)}
                                                for k in trees}})
        return {"rows": rows, "load_average": [load_before, load_average()]}
    finally:
        for p in procs:
            p.stop()


def gateway(trees: dict[str, Path], concurrencies: list[int], duration: float, reps: int) -> dict[str, Any]:
    """Each tree's gateway over one fast stand-in: through ÷ direct, TTFT p50 added, gateway CPU per chunk."""
    from bench_gateway import PACES as GW_PACES
    from bench_gateway import STANDIN

    delay, tokens = GW_PACES["fast"]
    eport = free_port()
    procs: list[Proc] = []
    try:
        engine = start_proc("compare-gateway-standin", [PYTHON, str(ROOT / "benchmarks" / "standin_engine.py"),
                                                         "--port", str(eport), "--served-model-name", STANDIN,
                                                         "--token-delay", str(delay)], eport, LOGS)
        procs.append(engine)
        wait_ready(engine, "/health", timeout=60)
        gws = {}
        for k, tree in trees.items():
            port = free_port()
            gw = start_proc(f"compare-{k}-gateway", [PYTHON, str(tree / "benchmarks" / "gateway_static.py"),
                                                     "--port", str(port), "--model", f"{STANDIN}=127.0.0.1:{eport}",
                                                     "--strategy", "LeastRequests"], port, LOGS, env=_env(tree))
            procs.append(gw)
            wait_ready(gw, "/health", timeout=60)
            gws[k] = gw
        body = {"model": STANDIN, "messages": [{"role": "user", "content": "hello"}], "max_tokens": tokens}
        direct = f"http://127.0.0.1:{eport}/v1/chat/completions"
        for gw in gws.values():
            asyncio.run(stream_load(f"http://127.0.0.1:{gw.port}/v1/chat/completions", body, 1, 0.5))
        warm = min(1.0, duration / 4)
        load_before = load_average()
        rows = []
        for c in concurrencies:
            ratios: dict[str, list[float]] = {k: [] for k in trees}
            added: dict[str, list[float]] = {k: [] for k in trees}
            cpu: dict[str, list[float]] = {k: [] for k in trees}
            errors = dict.fromkeys(trees, 0)
            for _ in range(reps):
                for k, gw in gws.items():
                    d = asyncio.run(stream_load(direct, body, c, duration, warmup=warm))
                    t = asyncio.run(stream_load(f"http://127.0.0.1:{gw.port}/v1/chat/completions", body, c,
                                                duration, warmup=warm, pid=gw.pid))
                    if d.tokens_per_s:
                        ratios[k].append(t.tokens_per_s / d.tokens_per_s)
                    ds, ts = d.summary(), t.summary()
                    if ds["ttft_p50_ms"] is not None and ts["ttft_p50_ms"] is not None:
                        added[k].append(ts["ttft_p50_ms"] - ds["ttft_p50_ms"])
                    cpu[k].append(ts["cpu_ms_per_1000_chunks"])
                    errors[k] += d.errors + t.errors
            rows.append({"concurrency": c, **{k: {"ratio": rnd(median(ratios[k])),
                                                  "added_ttft_p50_ms": rnd(median(added[k]), 2),
                                                  "cpu_ms_per_1000_chunks": rnd(median(cpu[k]), 2),
                                                  "errors": errors[k]}
                                              for k in trees}})
        return {"rows": rows, "load_average": [load_before, load_average()]}
    finally:
        for p in procs:
            p.stop()


def table(out: dict[str, Any]) -> str:
    lines = ["| row | baseline | this tree | change |", "|---|---|---|---|"]

    def line(label: str, base: float | None, new: float | None) -> None:
        change = f"{(new / base - 1) * 100:+.0f}%" if base and new is not None else ""
        lines.append(f"| {label} | {base} | {new} | {change} |")

    for part in out["proxy"]:
        for r in part["rows"]:
            c, name = r["concurrency"], "full speed" if part["pace"] == "fast" else "fixed 50 tok/s"
            line(f"proxy {name}, {c} streams: through ÷ direct", r["base"]["ratio"], r["new"]["ratio"])
            line(f"… shim CPU ms per 1,000 chunks ({name}, {c})", r["base"]["cpu_ms_per_1000_chunks"],
                 r["new"]["cpu_ms_per_1000_chunks"])
    for r in out["llamacpp"]["rows"]:
        line(f"llama.cpp via shim ÷ llama-server, {r['streams']} streams", r["base"]["ratio"], r["new"]["ratio"])
        line(f"… shim process CPU ms per 1,000 chunks, llama.cpp compute included ({r['streams']})",
             r["base"].get("cpu_ms_per_1000_chunks"), r["new"].get("cpu_ms_per_1000_chunks"))
    for r in out.get("gateway", {}).get("rows", []):
        c = r["concurrency"]
        line(f"gateway, {c} streams: through ÷ direct", r["base"]["ratio"], r["new"]["ratio"])
        line(f"… gateway added TTFT p50 ms ({c})", r["base"]["added_ttft_p50_ms"], r["new"]["added_ttft_p50_ms"])
        line(f"… gateway CPU ms per 1,000 chunks ({c})", r["base"]["cpu_ms_per_1000_chunks"],
             r["new"]["cpu_ms_per_1000_chunks"])
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", type=Path, required=True, help="a tree holding the baseline's operator/ package")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--duration", type=float)
    p.add_argument("--reps", type=int)
    p.add_argument("--concurrency", type=int, action="append", help="proxy streams (default 1, 16, 64, 256)")
    p.add_argument("--parts", default="fast,fixed,llamacpp,gateway", help="any of fast,fixed,llamacpp,gateway")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compare.json")
    a = p.parse_args()
    duration = a.duration or (2.0 if a.quick else 5.0)
    reps = a.reps or (1 if a.quick else 3)
    trees = {"base": a.base.resolve(), "new": ROOT}
    started = time.monotonic()
    out: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "duration_s": duration, "reps": reps,
                           "base": str(trees["base"]), "load_average_start": load_average()}
    parts = a.parts.split(",")
    out["proxy"] = [proxy(trees, pace, a.concurrency or [1, 16, 64, 256], duration, reps)
                    for pace in ("fast", "fixed") if pace in parts]
    out["llamacpp"] = llamacpp(trees, duration, reps, 64) if "llamacpp" in parts else {"rows": []}
    if "gateway" in parts:
        out["gateway"] = gateway(trees, a.concurrency or [1, 16, 64], duration, reps)
    out["load_average_end"] = load_average()
    out["wall_s"] = rnd(time.monotonic() - started, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    print(table(out))


if __name__ == "__main__":
    main()
