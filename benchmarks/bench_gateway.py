"""The gateway (issue 17): its cost on the data path, and what prefix-aware routing buys.

    python benchmarks/bench_gateway.py [--quick] [--only overhead|prefix] [--json]

* **overhead**: the fast stand-in engine (``standin_engine.py``, as fast as it
  can write, 256 tokens per answer) called directly and through the gateway
  (``gateway_static.py``: the gateway's own app, uvicorn settings and loop over
  a fixed endpoint), streaming, at 1/16/64/256 streams; and through LiteLLM's
  proxy (``peers/setup.sh litellm``) at 1/16/64, all in the same run,
  alternating direct, gateway, LiteLLM. Throughput ratios are medians of
  per-pair ratios; the gateway's CPU is its process's own (``/proc`` schedstat)
  over the chunks it relayed; ``cpu_ratio`` is the CPU per chunk of the direct
  path (stand-in + load generator) over that of the path through the gateway
  (the same + the gateway): the throughput ratio to expect where the cores are
  the limit, and far steadier under other load than tokens/s. Then the same, direct vs gateway, with the stand-in
  at a fixed 50 tokens/s per stream (64 per answer) at 64 streams.
* **prefix**: three replicas of the tiny GGUF model, each a real
  ``turnout-shim --engine llama.cpp`` (4 slots, unified KV cache of 8,192
  tokens, one thread each), behind three gateways that differ only in routing:
  ``PrefixHash``, ``LeastRequests`` and a uniformly random pick (the baseline;
  not a gateway strategy, see ``gateway_static.py``). The workload: 8 groups,
  each a ~1,500-token system prompt shared by its group, plus a short distinct
  question; requests draw their group at random (the same sequence for every
  strategy); fixed concurrency of 12 streams (4 per replica). llama.cpp's
  prompt cache is on (``cache_prompt``, slot reuse by longest common prefix);
  how much of each prompt came from it is read from every answer's
  ``usage.prompt_tokens_details.cached_tokens``. Twice: with llama.cpp's
  host-memory prompt cache as turnout starts it (``cache_ram_mib`` 8,192: every
  prefix fits, so every replica ends up holding every group), and with it off
  (``cache_ram_mib`` 0: only the 4 slots' KV cache per replica, which is what a
  GPU engine's bounded KV cache is like under many prefixes).
* **scale from zero** needs a cluster: see :func:`scale_from_zero`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from bench_peers import LITELLM_VENV, MASTER_KEY, _load_with_cpu, litellm_version, start_litellm
from benchlib import (
    PYTHON,
    ROOT,
    LoadResult,
    Proc,
    cpu_seconds,
    free_port,
    load_average,
    median,
    rnd,
    rss_mib,
    start_proc,
    stream_load,
    wait_ready,
)

STANDIN = "standin"
#: stand-in paces: (seconds per token, tokens per answer); as bench_shim.py's
PACES = {"fast": (0.0, 256), "fixed": (0.02, 64)}
TINY = "tiny"
STRATEGIES = ("PrefixHash", "LeastRequests", "Random")
GROUPS = 8
PREFIX_WORDS = 1000  # ~1,550 tokens of the tiny model's byte-level BPE (3.3 characters per token)
REPLICAS = 3
PREFIX_STREAMS = 12
PREFIX_TOKENS = 32
#: llama.cpp engine args of every replica: a KV cache that holds 4 prompts of ~1,600 tokens, one thread
REPLICA_ARGS: dict[str, Any] = {"threads": 1, "n_ctx": 8192}
CACHE_CONFIGS = {"ram_cache": {}, "slots_only": {"cache_ram_mib": 0}}
WORDS = ("the", "river", "runs", "to", "sea", "and", "every", "cloud", "over", "hills", "carries", "rain",
         "back", "springs", "where", "stones", "keep", "cold", "of", "night")


def start_gateway(name: str, model: str, addrs: list[int], logdir: Path, strategy: str = "LeastRequests") -> Proc:
    port = free_port()
    spec = f"{model}={','.join(f'127.0.0.1:{p}' for p in addrs)}"
    gw = start_proc(name, [PYTHON, str(ROOT / "benchmarks" / "gateway_static.py"), "--port", str(port),
                           "--model", spec, "--strategy", strategy], port, logdir)
    wait_ready(gw, "/health", timeout=60)
    return gw


def _stop(*procs: Proc | None) -> None:
    for p in procs:
        if p is not None:
            p.stop()


# ---------------------------------------------------------------------------------------------
# overhead


def overhead(concurrencies: list[int], litellm_at: list[int], duration: float, reps: int, logdir: Path,
             pace: str = "fast") -> dict[str, Any]:
    """Direct, gateway (and LiteLLM at ``litellm_at``) over one stand-in at ``pace`` (see :data:`PACES`)."""
    delay, tokens = PACES[pace]
    eport = free_port()
    engine = start_proc(f"gateway-standin-{pace}", [PYTHON, str(ROOT / "benchmarks" / "standin_engine.py"),
                                                    "--port", str(eport), "--served-model-name", STANDIN,
                                                    "--token-delay", str(delay)], eport, logdir)
    gw = lite = None
    out: dict[str, Any] = {"pace": pace, "seconds_per_token": delay, "tokens_per_request": tokens}
    try:
        wait_ready(engine, "/health", timeout=60)
        t0 = time.monotonic()
        gw = start_gateway(f"gateway-overhead-{pace}", STANDIN, [eport], logdir)
        out["gateway_startup_s"] = rnd(time.monotonic() - t0, 2)
        if litellm_at:
            if (LITELLM_VENV / "bin" / "litellm").exists():
                try:
                    lite, start_s = start_litellm(eport, Path(tempfile.mkdtemp(prefix="bench-gw-litellm-")), logdir,
                                                  "gateway-litellm")
                    out["litellm"] = {"version": litellm_version(), "startup_s": rnd(start_s, 2)}
                except Exception as exc:  # the gateway's rows still count
                    out["litellm"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            else:
                out["litellm"] = {"error": f"{LITELLM_VENV} has no litellm: run benchmarks/peers/setup.sh litellm"}
        body = {"model": STANDIN, "messages": [{"role": "user", "content": "hello"}], "max_tokens": tokens}
        auth = {"authorization": f"Bearer {MASTER_KEY}"}
        urls = {"direct": f"http://127.0.0.1:{eport}/v1/chat/completions",
                "gateway": f"http://127.0.0.1:{gw.port}/v1/chat/completions"}
        if lite is not None:
            urls["litellm"] = f"http://127.0.0.1:{lite.port}/v1/chat/completions"
            asyncio.run(stream_load(urls["litellm"], body, 1, 1.0, headers=auth))  # its first call loads things
        asyncio.run(stream_load(urls["gateway"], body, 1, 0.5))
        warm = min(1.0, duration / 4)
        rows = []
        for c in concurrencies:
            runs: dict[str, list[LoadResult]] = {"direct": [], "gateway": [], "litellm": []}
            lite_cpu: list[float] = []
            path_cpu: list[tuple[float, float]] = []  # CPU s per chunk, direct path and through the gateway
            for _ in range(reps):
                d, dcpu = asyncio.run(_measured(urls["direct"], body, c, duration, warm, {"engine": engine.pid}))
                g, gcpu = asyncio.run(_measured(urls["gateway"], body, c, duration, warm, {"engine": engine.pid},
                                                pid=gw.pid))
                runs["direct"].append(d)
                runs["gateway"].append(g)
                if d.tokens and g.tokens and g.cpu is not None:
                    path_cpu.append(((dcpu["engine"] + dcpu["client"]) / d.tokens,
                                     (gcpu["engine"] + gcpu["client"] + g.cpu) / g.tokens))
                if lite is not None and c in litellm_at:
                    r, cpu = asyncio.run(_load_with_cpu(lite.pid, True, urls["litellm"], body, c, duration,
                                                        warmup=warm, headers=auth))
                    runs["litellm"].append(r)
                    lite_cpu.append(cpu)
            row = _overhead_row(c, runs, lite_cpu)
            row["direct_path_cpu_ms_per_1000_chunks"] = rnd(median([a * 1e6 for a, _ in path_cpu]), 2)
            row["gateway_path_cpu_ms_per_1000_chunks"] = rnd(median([b * 1e6 for _, b in path_cpu]), 2)
            row["cpu_ratio"] = rnd(median([a / b for a, b in path_cpu if b]))
            rows.append(row)
        out["rows"] = rows
        out["gateway_rss_mib"] = rnd(rss_mib(gw.pid), 1)
        return out
    finally:
        _stop(gw, lite, engine)


async def _measured(url: str, body: dict[str, Any], c: int, duration: float, warmup: float, pids: dict[str, int],
                    **kw: Any) -> tuple[LoadResult, dict[str, float]]:
    """A load window, and the CPU seconds inside it of ``pids`` and of this process (the load generator: "client")."""
    task = asyncio.create_task(stream_load(url, body, c, duration, warmup=warmup, **kw))
    await asyncio.sleep(warmup)
    c0, t0 = {k: cpu_seconds(p) for k, p in pids.items()}, time.process_time()
    await asyncio.sleep(duration)
    c1, t1 = {k: cpu_seconds(p) for k, p in pids.items()}, time.process_time()
    res = await task
    return res, {**{k: c1[k] - c0[k] for k in pids}, "client": t1 - t0}


def _ms(results: list[LoadResult], q: str) -> float | None:
    return median([r.summary()[f"ttft_{q}_ms"] for r in results])


def _overhead_row(c: int, runs: dict[str, list[LoadResult]], lite_cpu: list[float]) -> dict[str, Any]:
    d, g = runs["direct"], runs["gateway"]
    d50, d99 = _ms(d, "p50"), _ms(d, "p99")
    g50, g99 = _ms(g, "p50"), _ms(g, "p99")
    row: dict[str, Any] = {
        "concurrency": c,
        "direct_tokens_per_s": rnd(median([r.tokens_per_s for r in d]), 1),
        "gateway_tokens_per_s": rnd(median([r.tokens_per_s for r in g]), 1),
        "ratio": rnd(median([b.tokens_per_s / a.tokens_per_s for a, b in zip(d, g, strict=True) if a.tokens_per_s])),
        "ttft_p50_direct_ms": rnd(d50, 2), "ttft_p50_gateway_ms": rnd(g50, 2),
        "added_ttft_p50_ms": rnd(g50 - d50, 2) if g50 is not None and d50 is not None else None,
        "added_ttft_p99_ms": rnd(g99 - d99, 2) if g99 is not None and d99 is not None else None,
        "gateway_cpu_ms_per_1000_chunks": rnd(median([r.summary()["cpu_ms_per_1000_chunks"] for r in g]), 2),
        "gateway_rss_peak_mib": rnd(max(r.rss_peak or 0 for r in g), 1),
        "errors": sum(r.errors for r in d + g),
        "first_error": next((r.first_error for r in d + g if r.first_error), None),
        "load_average": load_average(),
        "runs": [{"direct": a.summary(), "gateway": b.summary()} for a, b in zip(d, g, strict=True)],
    }
    lt = runs["litellm"]
    if lt:
        l50 = _ms(lt, "p50")
        row.update({
            "litellm_tokens_per_s": rnd(median([r.tokens_per_s for r in lt]), 1),
            "litellm_ratio": rnd(median([b.tokens_per_s / a.tokens_per_s for a, b in zip(d, lt, strict=True)
                                         if a.tokens_per_s])),
            "litellm_added_ttft_p50_ms": rnd(l50 - d50, 2) if l50 is not None and d50 is not None else None,
            "litellm_cpu_ms_per_1000_chunks": rnd(median([cpu * 1e6 / r.tokens for cpu, r in
                                                          zip(lite_cpu, lt, strict=True) if r.tokens]), 2),
            "litellm_errors": sum(r.errors for r in lt),
            "litellm_first_error": next((r.first_error for r in lt if r.first_error), None),
        })
    return row


# ---------------------------------------------------------------------------------------------
# prefix-aware routing


def prefix_workload(n: int = 256, seed: int = 17) -> list[dict[str, Any]]:
    """``n`` chat requests: each one of :data:`GROUPS` long shared system prompts and a question of its own."""
    rng = random.Random(seed)
    systems = []
    for g in range(GROUPS):
        grng = random.Random(f"group-{g}")
        systems.append(f"You are assistant number {g} of the river office. "
                       + " ".join(grng.choice(WORDS) for _ in range(PREFIX_WORDS)))
    out = []
    for i in range(n):
        g = rng.randrange(GROUPS)
        question = f"Question {i}: what does the {rng.choice(WORDS)} say about {rng.choice(WORDS)}?"
        out.append({"model": TINY, "max_tokens": PREFIX_TOKENS, "min_tokens": PREFIX_TOKENS, "ignore_eos": True,
                    "temperature": 0, "stream_options": {"include_usage": True},
                    "messages": [{"role": "system", "content": systems[g]}, {"role": "user", "content": question}]})
    return out


def _start_replicas(gguf: str, extra: dict[str, Any], logdir: Path, tag: str) -> list[Proc]:
    procs: list[Proc] = []
    try:
        for n in range(REPLICAS):
            port = free_port()
            argv = [PYTHON, "-m", "turnout.shim", "--engine", "llama.cpp", "--model", gguf, "--served-model-name",
                    TINY, "--host", "127.0.0.1", "--port", str(port),
                    "--engine-args", json.dumps({**REPLICA_ARGS, **extra})]
            procs.append(start_proc(f"gateway-replica-{tag}-{n}", argv, port, logdir))
        for p in procs:
            wait_ready(p, "/health", timeout=120)
        return procs
    except Exception:
        _stop(*procs)
        raise


def _p50s(results: list[LoadResult]) -> list[float | None]:
    return [r.summary()["ttft_p50_ms"] for r in results]


def _prime(replicas: list[Proc], bodies: list[dict[str, Any]]) -> None:
    """Every group's prompt once to every replica, so no strategy meets a cold cache first."""
    firsts: dict[str, dict[str, Any]] = {}
    for b in bodies:
        firsts.setdefault(b["messages"][0]["content"], b)
    with httpx.Client(timeout=120, trust_env=False) as client:
        for p in replicas:
            for b in firsts.values():
                client.post(f"http://127.0.0.1:{p.port}/v1/chat/completions",
                            json={**b, "max_tokens": 1, "min_tokens": 1, "stream": False}).raise_for_status()


def _prefix_config(gguf: str, tag: str, extra: dict[str, Any], bodies: list[dict[str, Any]], duration: float,
                   reps: int, logdir: Path, streams: int) -> dict[str, Any]:
    replicas = _start_replicas(gguf, extra, logdir, tag)
    gateways: dict[str, Proc] = {}
    try:
        for s in STRATEGIES:
            gateways[s] = start_gateway(f"gateway-{tag}-{s}", TINY, [p.port for p in replicas], logdir, s)
        urls = {s: f"http://127.0.0.1:{g.port}/v1/chat/completions" for s, g in gateways.items()}
        warm = min(1.0, duration / 4)
        _prime(replicas, bodies)
        for s in STRATEGIES:  # each strategy's own placement settles here, not in a measured window
            asyncio.run(stream_load(urls[s], {}, streams, max(duration / 4, min(3.0, duration)),
                                    bodies=bodies))
        runs: dict[str, list[LoadResult]] = {s: [] for s in STRATEGIES}
        for rep in range(reps):
            order = STRATEGIES[rep % len(STRATEGIES):] + STRATEGIES[:rep % len(STRATEGIES)]
            for s in order:
                runs[s].append(asyncio.run(stream_load(urls[s], {}, streams, duration, warmup=warm,
                                                       bodies=bodies, usage=True)))
        rows = []
        base = runs["Random"]
        for s in STRATEGIES:
            rs = runs[s]
            prompt = sum(r.prompt_tokens for r in rs)
            rows.append({
                "strategy": s,
                "tokens_per_s": rnd(median([r.tokens_per_s for r in rs]), 1),
                "ttft_p50_ms": rnd(_ms(rs, "p50"), 2), "ttft_p99_ms": rnd(_ms(rs, "p99"), 2),
                "tokens_per_s_vs_random": rnd(median([r.tokens_per_s / b.tokens_per_s for r, b in
                                                      zip(rs, base, strict=True) if b.tokens_per_s])),
                "ttft_p50_random_over_this": rnd(median([b / r for r, b in zip(_p50s(rs), _p50s(base), strict=True)
                                                         if r and b])),
                "prompt_tokens": prompt,
                "cached_share": rnd(sum(r.cached_tokens for r in rs) / prompt) if prompt else None,
                "requests": sum(r.requests for r in rs),
                "errors": sum(r.errors for r in rs),
                "first_error": next((r.first_error for r in rs if r.first_error), None),
                "runs": [r.summary() for r in rs],
            })
        return {"engine_args": {**REPLICA_ARGS, **extra}, "rows": rows, "load_average": load_average()}
    finally:
        _stop(*gateways.values(), *replicas)


def prefix_routing(duration: float, reps: int, logdir: Path, configs: list[str] | None = None,
                   streams: int = PREFIX_STREAMS) -> dict[str, Any]:
    try:
        import xllamacpp  # noqa: F401
    except ImportError as exc:
        return {"skipped": f"llama.cpp (xllamacpp) is not installed: {exc}"}
    from turnout.tinymodel import build_tiny_model

    tiny = build_tiny_model()
    bodies = prefix_workload()
    out: dict[str, Any] = {"replicas": REPLICAS, "streams": streams, "groups": GROUPS,
                           "tokens_per_request": PREFIX_TOKENS, **_shared_share(tiny.hf_dir, bodies)}
    for tag in configs or list(CACHE_CONFIGS):
        try:
            out[tag] = _prefix_config(str(tiny.gguf_path), tag, CACHE_CONFIGS[tag], bodies, duration, reps, logdir,
                                      streams)
        except Exception as exc:  # one configuration failing keeps the other's rows
            out[tag] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    return out


def _shared_share(hf_dir: Path, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """Prompt tokens per request (the system prompt, the question) and the share a group shares."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    systems = [len(tok.encode(b["messages"][0]["content"]).ids) for b in bodies]
    questions = [len(tok.encode(b["messages"][1]["content"]).ids) for b in bodies]
    return {"system_prompt_tokens": int(median(systems) or 0), "question_tokens": int(median(questions) or 0),
            "shared_share": rnd(sum(systems) / (sum(systems) + sum(questions)))}


# ---------------------------------------------------------------------------------------------
# scale from zero


def scale_from_zero(kubeconfig: str | None) -> dict[str, Any]:
    """The hook for the third measurement: first-request TTFT of a ModelDeployment scaled to zero.

    It needs the real control plane: a cluster with the operator and the gateway
    (``turnout gateway``), a ModelDeployment with ``spec.autoscaling.minReplicas: 0``
    at ``replicas: 0``; one streamed request through the gateway, timed to its first
    token, split into wake (the gateway's scale patch) → pod Ready (EndpointSlice)
    → first token. ``benchmarks/bench_scale_from_zero.py`` measures exactly that on a real
    cluster with host agents as nodes (the e2e scale test, as root); this part only points there.
    """
    why = ("needs a cluster with host agents (root): benchmarks/bench_scale_from_zero.py measures it "
           "(results/scale_from_zero.json)")
    return {"skipped": why, "kubeconfig": kubeconfig}


def run(quick: bool = False, *, smoke: bool = False, duration: float | None = None, reps: int | None = None,
        concurrencies: list[int] | None = None, logdir: Path | None = None,
        only: list[str] | None = None, kubeconfig: str | None = None, prefix_streams: int = PREFIX_STREAMS,
        prefix_configs: list[str] | None = None) -> dict[str, Any]:
    logdir = logdir or ROOT / "benchmarks" / "results" / "logs"
    duration = duration if duration is not None else (0.5 if smoke else 2.0 if quick else 8.0)
    reps = reps if reps is not None else (1 if quick or smoke else 3)
    started = time.monotonic()
    out: dict[str, Any] = {"duration_s": duration, "reps": reps}
    if not only or "overhead" in only:
        conc = concurrencies or ([1, 4] if smoke else [1, 16, 64, 256])
        lite = [] if smoke else [1] if quick else [c for c in conc if c <= 64]
        try:
            out["overhead"] = overhead(conc, lite, duration, reps, logdir)
        except Exception as exc:
            out["overhead"] = {"error": f"{type(exc).__name__}: {exc}"[:3000]}
        try:  # the same at a realistic rate per stream, at the goal's concurrency
            out["overhead_fixed"] = overhead([4] if smoke else [64], [], duration, reps, logdir, "fixed")
        except Exception as exc:
            out["overhead_fixed"] = {"error": f"{type(exc).__name__}: {exc}"[:3000]}
    if not only or "prefix" in only:
        pdur = 1.0 if smoke else min(duration, 6.0)  # 6 s keeps the part near 4 minutes in a full run
        out["prefix"] = prefix_routing(pdur, reps, logdir, ["ram_cache"] if smoke else prefix_configs, prefix_streams)
    out["scale_from_zero"] = scale_from_zero(kubeconfig)
    out["wall_s"] = rnd(time.monotonic() - started, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--only", action="append", choices=["overhead", "prefix"])
    p.add_argument("--duration", type=float)
    p.add_argument("--reps", type=int)
    p.add_argument("--concurrency", type=int, action="append")
    p.add_argument("--prefix-streams", type=int, default=PREFIX_STREAMS, help="concurrency of the prefix part")
    p.add_argument("--prefix-config", action="append", choices=list(CACHE_CONFIGS))
    a = p.parse_args()
    out = run(a.quick, duration=a.duration, reps=a.reps, concurrencies=a.concurrency, only=a.only,
              prefix_streams=a.prefix_streams, prefix_configs=a.prefix_config)
    if a.json:
        print(json.dumps(out, indent=1))
        return
    for r in (out.get("overhead") or {}).get("rows", []):
        print("overhead", r["concurrency"], r["ratio"], r["added_ttft_p50_ms"], r["gateway_cpu_ms_per_1000_chunks"],
              r.get("litellm_ratio"), r["errors"])
    for tag in CACHE_CONFIGS:
        for r in ((out.get("prefix") or {}).get(tag) or {}).get("rows", []):
            print("prefix", tag, r["strategy"], r["tokens_per_s"], r["ttft_p50_ms"], r["cached_share"], r["errors"])
    with contextlib.suppress(KeyError):
        print("errors:", {k: v["error"] for k, v in out.items() if isinstance(v, dict) and "error" in v})


if __name__ == "__main__":
    main()
