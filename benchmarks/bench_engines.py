"""Real engines through the shim, with the tiny model: llama.cpp and transformers.

    python benchmarks/bench_engines.py [--quick] [--only llamacpp|transformers]

* llama.cpp: llama.cpp's own server (``llamacpp_direct.py``: xllamacpp with the
  backend's own parameters) vs ``turnout-shim --engine llama.cpp`` on the
  same GGUF, at 1 and 8 streams, alternating.
* transformers: ``turnout-shim --engine transformers`` at 1 stream vs
  in-process ``model.generate`` of one prompt, and at 8 streams vs one batched
  ``generate`` of 8 prompts (same prompt, same number of new tokens, EOS
  ignored, greedy), alternating. The baseline is the faster of torch's default
  threads and one thread (both are recorded). The shim runs with its own
  default (one torch thread fewer than the CPUs it may use, so its event loop
  keeps a core; on 2 cores that is 1 thread); ``--shim-threads N`` passes
  ``--engine-args '{"threads": N}'`` instead.
  Requests carry ``min_tokens`` equal to ``max_tokens``: like ``generate``'s
  ``min_new_tokens`` it keeps EOS from being sampled, so both sides produce the
  same tokens (with ``ignore_eos`` alone the shim would generate EOS and other
  special tokens that stream no text). Each row also has CPU milliseconds per
  token of ``generate`` (this process) and of the shim process (utime+stime
  over the window, per content chunk) and their ratio, ``cpu_ratio``: on a
  loaded machine it moves far less than tokens per second.
* start-up: seconds from starting the shim process to ``/health`` 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from benchlib import (
    PYTHON,
    ROOT,
    free_port,
    load_average,
    median,
    rnd,
    start_proc,
    stream_load,
    wait_ready,
)

MESSAGES = [{"role": "user", "content": "Tell me about rivers and the sea."}]
SERVED = "tiny"


def _body(tokens: int) -> dict[str, Any]:
    return {"model": SERVED, "messages": MESSAGES, "max_tokens": tokens, "ignore_eos": True, "temperature": 0}


def start_shim(engine: str, model: str, logdir: Path, name: str,
               engine_args: dict[str, Any] | None = None) -> tuple[Any, float]:
    port = free_port()
    t0 = time.monotonic()
    argv = [PYTHON, "-m", "turnout.shim", "--engine", engine, "--model", model,
            "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port)]
    if engine_args:
        argv += ["--engine-args", json.dumps(engine_args)]
    shim = start_proc(name, argv, port, logdir)
    wait_ready(shim, "/health", timeout=180)
    return shim, time.monotonic() - t0


def _pairs_row(label: str, streams: int, pairs: list[tuple[float, float]], extra: dict[str, Any]) -> dict[str, Any]:
    ratios = [t / d for d, t in pairs if d]
    return {"case": label, "streams": streams,
            "baseline_tokens_per_s": rnd(median([d for d, _ in pairs]), 1),
            "shim_tokens_per_s": rnd(median([t for _, t in pairs]), 1),
            "ratio": rnd(median(ratios)), "load_average": load_average(), **extra}


def bench_llamacpp(tokens: int, duration: float, reps: int, logdir: Path) -> dict[str, Any]:
    from turnout.tinymodel import build_tiny_model

    gguf = str(build_tiny_model().gguf_path)
    dport = free_port()
    direct = start_proc("llamacpp-direct", [PYTHON, str(ROOT / "benchmarks" / "llamacpp_direct.py"),
                                            "--model", gguf, "--served-model-name", SERVED, "--port", str(dport)],
                        dport, logdir)
    shim = None
    try:
        direct_start = wait_ready(direct, "/health", timeout=120)
        shim, startup = start_shim("llama.cpp", gguf, logdir, "shim-llamacpp")
        body = _body(tokens)
        durl = f"http://127.0.0.1:{dport}/v1/chat/completions"
        surl = f"http://127.0.0.1:{shim.port}/v1/chat/completions"
        warm = min(1.0, duration / 4)
        rows = []
        for streams in (1, 8):
            pairs, ttft = [], []
            for _ in range(reps):
                d = asyncio.run(stream_load(durl, body, streams, duration, warmup=warm))
                t = asyncio.run(stream_load(surl, body, streams, duration, warmup=warm))
                pairs.append((d.tokens_per_s, t.tokens_per_s))
                ttft.append((d.summary()["ttft_p50_ms"], t.summary()["ttft_p50_ms"]))
            rows.append(_pairs_row("llama.cpp server vs shim", streams, pairs, {
                "ttft_p50_direct_ms": rnd(median([a for a, _ in ttft]), 2),
                "ttft_p50_shim_ms": rnd(median([b for _, b in ttft]), 2),
                "errors": d.errors + t.errors, "first_error": d.first_error or t.first_error}))
        return {"rows": rows, "shim_startup_s": rnd(startup, 2), "direct_startup_s": rnd(direct_start, 2),
                "tokens_per_request": tokens}
    finally:
        direct.stop()
        if shim is not None:
            shim.stop()


class Generate:
    """In-process ``transformers`` generation with the tiny model: the baseline for the transformers backend."""

    def __init__(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from turnout.tinymodel import build_tiny_model

        self.torch = torch
        hf = build_tiny_model().hf_dir
        self.tok = AutoTokenizer.from_pretrained(hf)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
        self.prompt = self.tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
        #: CPU milliseconds (this process, all threads) per new token of the last call
        self.last_cpu_ms_per_token = 0.0

    def tokens_per_s(self, batch: int, tokens: int, threads: int | None = None) -> tuple[float, float]:
        """(new tokens per second over the whole call, seconds to the end of the call).

        ``threads`` sets torch's intra-op threads for this call (None: torch's default, one per core).
        """
        enc = self.tok([self.prompt] * batch, return_tensors="pt", padding=True, add_special_tokens=False)
        before = self.torch.get_num_threads()
        if threads:
            self.torch.set_num_threads(threads)
        try:
            start, cpu = time.perf_counter(), time.process_time()
            with self.torch.inference_mode():
                out = self.model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                          pad_token_id=self.tok.pad_token_id)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        finally:
            self.torch.set_num_threads(before)
        new = (out.shape[1] - enc["input_ids"].shape[1]) * batch
        self.last_cpu_ms_per_token = cpu * 1000 / new
        return new / elapsed, elapsed

    def best(self, batch: int, tokens: int) -> tuple[float, dict[str, float]]:
        """The faster of torch's default threads and one thread, and both figures.

        On a loaded 2-core machine, torch's default (one intra-op thread per core) can be many times
        slower than one thread for a tiny model; the baseline is the better of the two.
        """
        default = self.tokens_per_s(batch, tokens)[0]
        default_cpu = self.last_cpu_ms_per_token
        one = self.tokens_per_s(batch, tokens, threads=1)[0]
        one_cpu = self.last_cpu_ms_per_token
        return max(default, one), {"default_threads": round(default, 1), "one_thread": round(one, 1),
                                   "cpu_ms_per_token": round(default_cpu if default > one else one_cpu, 4)}


def bench_transformers(tokens: int, duration: float, reps: int, logdir: Path,
                       shim_threads: int | None = None) -> dict[str, Any]:
    from turnout.tinymodel import build_tiny_model

    gen = Generate()
    gen.tokens_per_s(1, 4)  # warm
    threads = shim_threads or "default"
    shim, startup = start_shim("transformers", f"file://{build_tiny_model().hf_dir}", logdir, "shim-transformers",
                               {"threads": shim_threads} if shim_threads else None)
    try:
        url = f"http://127.0.0.1:{shim.port}/v1/chat/completions"
        body = {**_body(tokens), "min_tokens": tokens}  # EOS never sampled, as with min_new_tokens
        asyncio.run(stream_load(url, body, 1, 1.0))  # warm
        rows = []
        for streams in (1, 8):
            pairs, ttft, both, cpu = [], [], [], []
            for _ in range(reps):
                base, detail = gen.best(streams, tokens)
                t = asyncio.run(stream_load(url, body, streams, duration, warmup=min(1.0, duration / 4),
                                            pid=shim.pid))
                pairs.append((base, t.tokens_per_s))
                if t.cpu is not None and t.tokens:
                    cpu.append((detail["cpu_ms_per_token"], t.cpu * 1000 / t.tokens))
                ttft.append(t.summary()["ttft_p50_ms"])
                both.append(detail)
            label = "generate(1) vs shim" if streams == 1 else "generate(batch of 8) vs shim"
            rows.append(_pairs_row(label, streams, pairs, {
                "ttft_p50_shim_ms": rnd(median(ttft), 2), "errors": t.errors, "first_error": t.first_error,
                "generate_default_threads_tokens_per_s": rnd(median([b["default_threads"] for b in both]), 1),
                "generate_one_thread_tokens_per_s": rnd(median([b["one_thread"] for b in both]), 1),
                # CPU per token: generate's process vs the shim process (one content chunk per token);
                # steadier than tokens/s when other work shares the cores
                "generate_cpu_ms_per_token": rnd(median([g for g, _ in cpu]), 4),
                "shim_cpu_ms_per_token": rnd(median([c for _, c in cpu]), 4),
                "cpu_ratio": rnd(median([g / c for g, c in cpu if c]))}))
        return {"rows": rows, "shim_startup_s": rnd(startup, 2), "tokens_per_request": tokens,
                "shim_threads": threads}
    finally:
        shim.stop()


ENGINES = {"llamacpp": bench_llamacpp, "transformers": bench_transformers}


def run(quick: bool = False, *, duration: float | None = None, reps: int | None = None,
        tokens: int | None = None, logdir: Path | None = None, only: list[str] | None = None,
        shim_threads: int | None = None) -> dict[str, Any]:
    duration = duration if duration is not None else (3.0 if quick else 8.0)
    reps = reps if reps is not None else (1 if quick else 3)
    tokens = tokens or (32 if quick else 64)
    logdir = logdir or ROOT / "benchmarks" / "results" / "logs"
    started = time.monotonic()
    out: dict[str, Any] = {"duration_s": duration, "reps": reps}
    for name, fn in ENGINES.items():
        if only and name not in only:
            continue
        try:
            kw = {"shim_threads": shim_threads} if name == "transformers" else {}
            out[name] = fn(tokens, duration, reps, logdir, **kw)
        except Exception as exc:  # one engine failing must not lose the others' numbers
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    out["wall_s"] = rnd(time.monotonic() - started, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--duration", type=float)
    p.add_argument("--reps", type=int)
    p.add_argument("--only", action="append", choices=sorted(ENGINES), help="run only this engine (repeatable)")
    p.add_argument("--shim-threads", type=int, help="torch threads for the transformers shim "
                   "(default: whichever of torch's default and 1 made generate faster)")
    a = p.parse_args()
    print(json.dumps(run(a.quick, duration=a.duration, reps=a.reps, only=a.only, shim_threads=a.shim_threads),
                     indent=1))


if __name__ == "__main__":
    main()
