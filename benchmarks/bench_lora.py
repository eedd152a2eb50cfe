"""LoRA adapters on the transformers engine: what one adapter, and four mixed in one batch, cost.

    python benchmarks/bench_lora.py [--quick] [--json]

One ``turnout-shim --engine transformers --enable-lora --max-loras 4`` serves the tiny model with four tiny
LoRAs (``turnout.tinymodel.lora``, rank 8 on every linear layer). Streams at a fixed concurrency ask for
the base model, for one adapter, or for the four adapters in turn (so every decode step mixes them);
the three workloads alternate, and each one's tokens/s is compared with the base run next to it (median
of the per-round ratios). Also timed: ``/v1/load_lora_adapter`` of a fifth adapter (which unloads the
least recently used) until its first answer.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import httpx
from benchlib import PYTHON, ROOT, free_port, load_average, median, rnd, run_load, running, start_proc, wait_ready

from turnout.tinymodel import build_tiny_model
from turnout.tinymodel.lora import build_tiny_lora

SERVED = "tiny"


def body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Tell me about the sea"}],
            "max_tokens": 64, "temperature": 0, "ignore_eos": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short windows, one round")
    ap.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    ap.add_argument("--concurrency", type=int, default=8)
    a = ap.parse_args()
    window, rounds = (4.0, 1) if a.quick else (8.0, 3)
    model = build_tiny_model()
    adapters = [build_tiny_lora(seed) for seed in range(1, 6)]
    port = free_port()
    argv = [PYTHON, "-m", "turnout.shim", "--engine", "transformers", "--model", str(model.hf_dir),
            "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port),
            "--enable-lora", "--max-loras", "4", "--max-lora-rank", "8",
            "--lora-modules", *(f"a{i}={p}" for i, p in enumerate(adapters[:4]))]
    shim = start_proc("lora-shim", argv, port, ROOT / "benchmarks" / "results" / "logs",
                      env={"TURNOUT_ACCESS_LOG": "0"})
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    workloads = {"base": [body(SERVED)], "1 adapter": [body("a0")],
                 "4 adapters mixed": [body(f"a{i}") for i in range(4)]}
    load_before = load_average()
    with running(shim):
        wait_ready(shim, timeout=300)
        runs: dict[str, list[float]] = {w: [] for w in workloads}
        for _ in range(rounds):
            for name, bodies in workloads.items():
                res = run_load(url, bodies[0], a.concurrency, window, warmup=1.0, bodies=bodies)
                assert not res.errors, res.first_error
                runs[name].append(res.tokens_per_s)
        t0 = time.perf_counter()
        r = httpx.post(f"http://127.0.0.1:{port}/v1/load_lora_adapter", timeout=60,
                       json={"lora_name": "a4", "lora_path": str(adapters[4])})
        r.raise_for_status()
        loaded = time.perf_counter() - t0
        httpx.post(url, json={**body("a4"), "max_tokens": 1}, timeout=60).raise_for_status()
        answered = time.perf_counter() - t0
    out = {"concurrency": a.concurrency, "window_s": window, "rounds": rounds,
           "load_average": [load_before, load_average()],
           "tokens_per_s": {w: [rnd(x, 1) for x in v] for w, v in runs.items()},
           "ratio_to_base": {w: rnd(median([x / b for x, b in zip(v, runs["base"], strict=True)]), 3)
                             for w, v in runs.items() if w != "base"},
           "load_adapter_s": rnd(loaded, 3), "load_to_first_answer_s": rnd(answered, 3)}
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"| workload (concurrency {a.concurrency}) | tokens/s (median) | vs base |")
    print("|---|---|---|")
    for w, v in runs.items():
        ratio = "1" if w == "base" else out["ratio_to_base"][w]
        print(f"| {w} | {rnd(median(v), 1)} | {ratio} |")
    print(f"\nload a 5th adapter (unloading the least recently used): {out['load_adapter_s']} s; "
          f"to its first answer: {out['load_to_first_answer_s']} s")


if __name__ == "__main__":
    Path(ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    main()
