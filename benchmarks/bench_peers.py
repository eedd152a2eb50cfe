"""Peers on the same work: LiteLLM proxy vs the shim's proxy, Xinference vs the transformers backend.

    benchmarks/peers/setup.sh            # once: .venv-bench-litellm, .venv-bench-xinference
    python benchmarks/bench_peers.py [--quick]

* LiteLLM (``litellm[proxy]``, a master key, ``LITELLM_LOCAL_MODEL_COST_MAP=True``)
  and the shim both in front of the same stand-in engine streaming as fast as
  it can; runs alternate direct, shim, LiteLLM.
* Xinference (``xinference[transformers]``, torch 2.13.0, no torchvision,
  ``XINFERENCE_AUTH_ADVANCED=0``) serving the tiny model registered as a custom
  LLM, vs in-process ``generate`` (the same baseline as ``bench_engines.py``)
  (the faster of torch's default threads and one thread) and vs the shim's
  transformers backend, at 1 and 8 streams; its start-up
  (server start + model launch) and memory (the whole process tree).

A peer that is not installed or does not start is recorded with its error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from bench_engines import MESSAGES, Generate, start_shim
from bench_shim import SERVED as STANDIN
from bench_shim import engine_port, wrapper_script
from benchlib import (
    PYTHON,
    ROOT,
    Proc,
    cpu_seconds,
    descendants,
    free_port,
    load_average,
    median,
    rnd,
    start_proc,
    stream_load,
    tree_rss_mib,
    wait_ready,
)

LITELLM_VENV = ROOT / ".venv-bench-litellm"
XINFERENCE_VENV = ROOT / ".venv-bench-xinference"
MASTER_KEY = "sk-turnout-bench"


def _tree_cpu(pid: int) -> float:
    total = 0.0
    for p in [pid, *descendants(pid)]:
        try:
            total += cpu_seconds(p)
        except OSError:
            continue
    return total


async def _load_with_cpu(pid: int, tree: bool, url: str, body: dict[str, Any], c: int, duration: float,
                         **kw: Any) -> tuple[Any, float]:
    """A load window and the CPU seconds of ``pid`` (with its descendants when ``tree``) inside it."""
    cpu = _tree_cpu if tree else cpu_seconds
    warmup = kw.get("warmup", 0.0)
    res_task = asyncio.create_task(stream_load(url, body, c, duration, **kw))
    await asyncio.sleep(warmup)
    c0 = cpu(pid)
    await asyncio.sleep(duration)
    c1 = cpu(pid)
    return await res_task, c1 - c0


def start_litellm(engine_port: int, tmp: Path, logdir: Path, name: str = "litellm") -> tuple[Proc, float]:
    """LiteLLM's proxy (one worker, a master key) in front of the stand-in on ``engine_port``; and its start-up (s)."""
    cfg = tmp / "litellm.yaml"
    cfg.write_text(yaml.safe_dump({
        "model_list": [{"model_name": STANDIN, "litellm_params": {
            "model": f"openai/{STANDIN}", "api_base": f"http://127.0.0.1:{engine_port}/v1", "api_key": "none"}}],
        "general_settings": {"master_key": MASTER_KEY},
    }))
    lport = free_port()
    t0 = time.monotonic()
    lite = start_proc(name, [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(cfg), "--host",
                             "127.0.0.1", "--port", str(lport), "--num_workers", "1"],
                      lport, logdir, env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"})
    try:
        wait_ready(lite, "/health/liveliness", timeout=180)
    except Exception:
        lite.stop()
        raise
    return lite, time.monotonic() - t0


def litellm_version() -> str:
    return subprocess.run([str(LITELLM_VENV / "bin" / "python"), "-c",
                           "import importlib.metadata as m; print(m.version('litellm'))"],
                          capture_output=True, text=True).stdout.strip()


def bench_litellm(concurrencies: list[int], duration: float, reps: int, logdir: Path) -> dict[str, Any]:
    if not (LITELLM_VENV / "bin" / "litellm").exists():
        return {"error": f"{LITELLM_VENV} has no litellm: run benchmarks/peers/setup.sh litellm"}
    tmp = Path(tempfile.mkdtemp(prefix="bench-litellm-"))
    sport = free_port()
    shim = start_proc("peers-shim-fast", [PYTHON, "-m", "turnout.shim", "--engine", "vllm",
                                          "--model", "file:///standin", "--served-model-name", STANDIN,
                                          "--host", "127.0.0.1", "--port", str(sport), "--max-queue", "100000"],
                      sport, logdir, env={"TURNOUT_VLLM_PYTHON": str(wrapper_script(tmp)),
                                          "STANDIN_TOKEN_DELAY": "0"})
    lite = None
    try:
        wait_ready(shim, "/health", timeout=120)
        _, eport = engine_port(shim.pid)
        lite, lite_start = start_litellm(eport, tmp, logdir)
        lport = lite.port
        body = {"model": STANDIN, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 256}
        auth = {"authorization": f"Bearer {MASTER_KEY}"}
        urls = {"direct": f"http://127.0.0.1:{eport}/v1/chat/completions",
                "shim": f"http://127.0.0.1:{sport}/v1/chat/completions",
                "litellm": f"http://127.0.0.1:{lport}/v1/chat/completions"}
        asyncio.run(stream_load(urls["litellm"], body, 1, 1.0, headers=auth))  # warm (first call loads things)
        rows = []
        warm = min(1.0, duration / 4)
        for c in concurrencies:
            runs: dict[str, list[Any]] = {k: [] for k in urls}
            cpu: dict[str, list[float]] = {"shim": [], "litellm": []}
            for _ in range(reps):
                runs["direct"].append(asyncio.run(stream_load(urls["direct"], body, c, duration, warmup=warm)))
                r, cs = asyncio.run(_load_with_cpu(shim.pid, False, urls["shim"], body, c, duration, warmup=warm))
                runs["shim"].append(r)
                cpu["shim"].append(cs)
                r, cl = asyncio.run(_load_with_cpu(lite.pid, True, urls["litellm"], body, c, duration, warmup=warm,
                                                   headers=auth))
                runs["litellm"].append(r)
                cpu["litellm"].append(cl)
            row: dict[str, Any] = {"concurrency": c, "load_average": load_average()}
            d50 = median([r.summary()["ttft_p50_ms"] for r in runs["direct"]])
            for k in urls:
                row[f"{k}_tokens_per_s"] = rnd(median([r.tokens_per_s for r in runs[k]]), 1)
                row[f"{k}_errors"] = sum(r.errors for r in runs[k])
                if k != "direct":
                    ratios = [t.tokens_per_s / d.tokens_per_s for d, t in zip(runs["direct"], runs[k], strict=True)
                              if d.tokens_per_s]
                    row[f"{k}_ratio"] = rnd(median(ratios))
                    t50 = median([r.summary()["ttft_p50_ms"] for r in runs[k]])
                    row[f"{k}_added_ttft_p50_ms"] = rnd(t50 - d50, 2) if t50 is not None and d50 is not None else None
                    per = [cpu_s * 1e6 / r.tokens for cpu_s, r in zip(cpu[k], runs[k], strict=True) if r.tokens]
                    row[f"{k}_cpu_ms_per_1000_chunks"] = rnd(median(per), 2)
                    row[f"{k}_first_error"] = next((r.first_error for r in runs[k] if r.first_error), None)
            rows.append(row)
        return {"version": litellm_version(), "startup_s": rnd(lite_start, 2), "rows": rows,
                "note": "CPU per chunk: the shim process alone (its stand-in engine child is not counted); "
                        "LiteLLM's whole process tree"}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:3000]}
    finally:
        shim.stop()
        if lite is not None:
            lite.stop()


def bench_xinference(duration: float, reps: int, tokens: int, logdir: Path) -> dict[str, Any]:
    if not (XINFERENCE_VENV / "bin" / "xinference-local").exists():
        return {"error": f"{XINFERENCE_VENV} has no xinference: run benchmarks/peers/setup.sh xinference"}
    from turnout.tinymodel import build_tiny_model

    tiny = build_tiny_model()
    tmp = Path(tempfile.mkdtemp(prefix="bench-xinference-"))
    template = tmp / "chat_template.jinja"
    template.write_text(tiny.chat_template)
    xport = free_port()
    env = {"XINFERENCE_AUTH_ADVANCED": "0", "XINFERENCE_HOME": str(tmp / "home"),
           "XINFERENCE_MODEL_SRC": "huggingface", "HF_HUB_OFFLINE": "1"}
    t0 = time.monotonic()
    xinf = start_proc("xinference", [str(XINFERENCE_VENV / "bin" / "xinference-local"), "--host", "127.0.0.1",
                                     "--port", str(xport)], xport, logdir, env=env)
    shim = None
    try:
        wait_ready(xinf, "/v1/models", timeout=300)
        server_s = time.monotonic() - t0
        launch = subprocess.run([str(XINFERENCE_VENV / "bin" / "python"),
                                 str(ROOT / "benchmarks" / "peers" / "xinference_launch.py"),
                                 f"http://127.0.0.1:{xport}", str(tiny.hf_dir), str(template),
                                 str(tiny.eos_token_id)],
                                capture_output=True, text=True, timeout=600, env={**os.environ, **env})
        if launch.returncode != 0:
            raise RuntimeError(f"launching the tiny model failed: {launch.stderr[-2500:]}")
        ready_s = time.monotonic() - t0
        uid = launch.stdout.strip().splitlines()[-1]
        rss = tree_rss_mib(xinf.pid)
        gen = Generate()
        gen.tokens_per_s(1, 4)
        shim, _ = start_shim("transformers", f"file://{tiny.hf_dir}", logdir, "peers-shim-transformers")
        xbody = {"model": uid, "messages": MESSAGES, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
        sbody = {**xbody, "model": "tiny"}
        xurl = f"http://127.0.0.1:{xport}/v1/chat/completions"
        surl = f"http://127.0.0.1:{shim.port}/v1/chat/completions"
        asyncio.run(stream_load(xurl, xbody, 1, 1.0))  # warm
        asyncio.run(stream_load(surl, sbody, 1, 1.0))
        rows = []
        warm = min(1.0, duration / 4)
        for streams in (1, 8):
            base, xs, ss = [], [], []
            for _ in range(reps):
                base.append(gen.best(streams, tokens)[0])
                xs.append(asyncio.run(stream_load(xurl, xbody, streams, duration, warmup=warm)))
                ss.append(asyncio.run(stream_load(surl, sbody, streams, duration, warmup=warm)))
                rss = max(rss, tree_rss_mib(xinf.pid))
            rows.append({
                "streams": streams, "generate_tokens_per_s": rnd(median(base), 1),
                "xinference_tokens_per_s": rnd(median([x.tokens_per_s for x in xs]), 1),
                "shim_tokens_per_s": rnd(median([s.tokens_per_s for s in ss]), 1),
                "xinference_ratio_to_generate": rnd(median([x.tokens_per_s / b for x, b in zip(xs, base, strict=True)
                                                            if b])),
                "shim_ratio_to_generate": rnd(median([s.tokens_per_s / b for s, b in zip(ss, base, strict=True)
                                                      if b])),
                "xinference_ttft_p50_ms": rnd(median([x.summary()["ttft_p50_ms"] for x in xs]), 2),
                "shim_ttft_p50_ms": rnd(median([s.summary()["ttft_p50_ms"] for s in ss]), 2),
                "xinference_errors": sum(x.errors for x in xs),
                "xinference_first_error": next((x.first_error for x in xs if x.first_error), None),
                "load_average": load_average(),
            })
        version = subprocess.run([str(XINFERENCE_VENV / "bin" / "python"), "-c",
                                  "import xinference; print(xinference.__version__)"],
                                 capture_output=True, text=True).stdout.strip()
        return {"version": version, "server_start_s": rnd(server_s, 2), "ready_with_model_s": rnd(ready_s, 2),
                "rss_tree_mib": rnd(rss, 1), "tokens_per_request": tokens, "rows": rows}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:3000], "log_tail": xinf.tail(1500)}
    finally:
        xinf.stop(grace=20)
        if shim is not None:
            shim.stop()


def run(quick: bool = False, *, duration: float | None = None, reps: int | None = None,
        logdir: Path | None = None, which: tuple[str, ...] = ("litellm", "xinference")) -> dict[str, Any]:
    duration = duration if duration is not None else (3.0 if quick else 8.0)
    reps = reps if reps is not None else (1 if quick else 3)
    logdir = logdir or ROOT / "benchmarks" / "results" / "logs"
    started = time.monotonic()
    out: dict[str, Any] = {"duration_s": duration, "reps": reps}
    if "litellm" in which:
        out["litellm"] = bench_litellm([1] if quick else [1, 16], duration, reps, logdir)
    if "xinference" in which:
        out["xinference"] = bench_xinference(duration, reps, 32 if quick else 64, logdir)
    out["wall_s"] = rnd(time.monotonic() - started, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", choices=["litellm", "xinference"])
    p.add_argument("--duration", type=float)
    p.add_argument("--reps", type=int)
    a = p.parse_args()
    which = (a.only,) if a.only else ("litellm", "xinference")
    print(json.dumps(run(a.quick, duration=a.duration, reps=a.reps, which=which), indent=1))


if __name__ == "__main__":
    main()
