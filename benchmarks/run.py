"""Run every benchmark, write ``benchmarks/results/latest.json`` and print a markdown table.

    python benchmarks/run.py [--quick] [--only shim,engines,peers,gateway,operator,resolver] [--out PATH]
                             [--kubeconfig PATH]

``--quick`` finishes in a few minutes (short windows, one repetition; the
operator at N=100 and 1,000 either way). ``--kubeconfig`` runs the operator
part against that real cluster instead of the emulator. ``--smoke`` is smaller still (the test suite runs it) and
writes nothing unless ``--out`` is given. The machine, its load average at
start and end and the exact command are recorded with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import PYTHON, ROOT, load_average

PARTS = ("shim", "engines", "peers", "gateway", "operator", "resolver")

# (label, target text, reference figure from issue 10)
REFERENCE = {
    "litellm_ratio": "LiteLLM: 0.02 of direct, +14 ms TTFT, ~0.65 ms CPU per chunk",
    "xinference": "Xinference 4.1: 0.77 of generate at 1 stream, 0.23 at 8, +39 ms TTFT, 24 s start, 1.5 GB",
    "llamacpp": "llama.cpp server: ~4,300 tokens/s at 1 stream, ~6,300 at 8, 3 ms TTFT",
    "kubeai": "KubeAI: PrefixHash 4.7× lower TTFT than LeastRequests (800 concurrency, 8 × L4, vLLM)",
}
PREFIX_CONFIGS = {"ram_cache": "RAM prompt cache", "slots_only": "slot cache only"}


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "memory": mem,
            "python": platform.python_version(), "platform": platform.platform()}


def resolver(quick: bool) -> dict[str, Any]:
    """The default cluster kinds, with the sizing clusters (examples/nodes/) under "sizing"."""
    results = []
    for extra in ([], ["--sizing"]):
        out = subprocess.run([PYTHON, str(ROOT / "benchmarks" / "bench_resolver.py"), "--json",
                              "--repeat", "1" if quick else "3", *extra], capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            return {"error": out.stderr[-2000:]}
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {**results[0], "sizing": results[1]}


def run_part(name: str, mode: str, logdir: Path, kubeconfig: str | None = None) -> dict[str, Any]:
    quick = mode != "full"
    smoke = mode == "smoke"
    start = time.monotonic()
    load0 = load_average()
    try:
        if name == "shim":
            import bench_shim

            res = bench_shim.run(quick, concurrencies=[1, 4] if smoke else None, duration=0.5 if smoke else None,
                                 logdir=logdir)
        elif name == "engines":
            import bench_engines

            res = bench_engines.run(quick, duration=1.0 if smoke else None, tokens=8 if smoke else None,
                                    logdir=logdir)
        elif name == "peers":
            import bench_peers

            res = bench_peers.run(quick, duration=1.0 if smoke else None, logdir=logdir)
        elif name == "gateway":
            import bench_gateway

            res = bench_gateway.run(quick, smoke=smoke, logdir=logdir, kubeconfig=kubeconfig)
        elif name == "operator":
            import bench_operator

            res = bench_operator.run(quick, sizes=[10] if smoke else None, logdir=logdir, kubeconfig=kubeconfig)
        else:
            res = resolver(quick)
    except Exception as exc:  # a part that breaks is reported; the others still run
        res = {"error": f"{type(exc).__name__}: {exc}"[:3000]}
    res["part_wall_s"] = round(time.monotonic() - start, 1)
    res["load_average_start"] = load0
    res["load_average_end"] = load_average()
    return res


def _f(x: Any, nd: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _ok(value: Any, good: bool) -> str:
    return f"{_f(value)} {'✅' if good else '❌'}" if value is not None else "—"


def table(results: dict[str, Any]) -> str:
    """The markdown table of the headline figures, with targets and met/missed marks; its last column says the
    run each row came from (a quick run's rows are flagged: its windows are too short to judge a row)."""
    rows = _rows(results)
    mode = results.get("mode", "full")
    run = f"{mode} {results.get('started', '')[:16]}" + (" (too short to judge)" if mode != "full" else "")
    return "\n".join(rows[:2] + [f"{line} {run} |" for line in rows[2:]])


def _rows(results: dict[str, Any]) -> list[str]:
    lines = ["| what | measured | target | peer / reference | run |", "|---|---|---|---|---|"]
    parts = results["parts"]
    shim = parts.get("shim", {})
    for pace in shim.get("paces", []):
        for r in pace["rows"]:
            c = r["concurrency"]
            if pace["pace"] == "fixed":
                lines.append(f"| shim proxy, fixed rate ({1 / pace['seconds_per_token']:.0f} tok/s per stream), "
                             f"{c} streams: through ÷ direct | {_ok(r['ratio'], (r['ratio'] or 0) >= 0.99)} "
                             "| ≥ 0.99 | |")
                a = r["added_ttft_p50_ms"]
                lines.append(f"| … added TTFT p50 / p99 (ms), {c} streams | {_ok(a, a is not None and a < 1)} / "
                             f"{_f(r['added_ttft_p99_ms'])} | < 1 ms p50 | |")
            else:
                lines.append(f"| shim proxy, full speed, {c} streams: through ÷ direct "
                             f"({_f(r['shim_tokens_per_s'], 0)} / {_f(r['direct_tokens_per_s'], 0)} tok/s) | "
                             f"{_ok(r['ratio'], (r['ratio'] or 0) >= 0.5)} | ≥ 0.5 | LiteLLM 0.02 |")
            cpu = r["shim_cpu_ms_per_1000_chunks"]
            lines.append(f"| … shim CPU ms per 1,000 chunks, {pace['pace']}, {c} streams | "
                         f"{_ok(cpu, cpu is not None and cpu <= 20)} | ≤ 20 | LiteLLM ~650 |")
            if c == max(x["concurrency"] for x in pace["rows"]):
                lines.append(f"| … shim RSS under {c} streams ({pace['pace']}), MiB | {_f(r['shim_rss_peak_mib'], 1)} "
                             f"| | |")
    if "error" in shim:
        lines.append(f"| shim overhead | error: {shim['error'][:200]} | | |")
    eng = parts.get("engines", {})
    lc = eng.get("llamacpp", {})
    for r in lc.get("rows", []):
        lines.append(f"| llama.cpp via shim ÷ llama.cpp server, {r['streams']} streams "
                     f"({_f(r['shim_tokens_per_s'], 0)} / {_f(r['baseline_tokens_per_s'], 0)} tok/s; TTFT "
                     f"{_f(r.get('ttft_p50_shim_ms'))} / {_f(r.get('ttft_p50_direct_ms'))} ms) | "
                     f"{_ok(r['ratio'], (r['ratio'] or 0) >= 0.95)} | ≥ 0.95 | {REFERENCE['llamacpp']} |")
    if "error" in lc:
        lines.append(f"| llama.cpp | error: {lc['error'][:200]} | | |")
    if "shim_startup_s" in lc:
        lines.append(f"| llama.cpp shim start to ready, tiny GGUF (s) | "
                     f"{_ok(lc['shim_startup_s'], lc['shim_startup_s'] < 3)} | < 3 | |")
    tf = eng.get("transformers", {})
    for r in tf.get("rows", []):
        target = 0.95 if r["streams"] == 1 else 0.8
        lines.append(f"| transformers backend ÷ {'generate' if r['streams'] == 1 else 'batched generate of 8'}, "
                     f"{r['streams']} streams ({_f(r['shim_tokens_per_s'], 0)} / {_f(r['baseline_tokens_per_s'], 0)}"
                     f" tok/s) | {_ok(r['ratio'], (r['ratio'] or 0) >= target)} | ≥ {target} | Xinference: see below |")
    if "error" in tf:
        lines.append(f"| transformers | error: {tf['error'][:200]} | | |")
    if "shim_startup_s" in tf:
        lines.append(f"| transformers shim start to ready, tiny model (s) | "
                     f"{_ok(tf['shim_startup_s'], tf['shim_startup_s'] < 3)} | < 3 | Xinference ~24 s |")
    peers = parts.get("peers", {})
    lite = peers.get("litellm", {})
    for r in lite.get("rows", []):
        lines.append(f"| LiteLLM {lite.get('version', '')} ÷ direct, full speed, {r['concurrency']} streams "
                     f"(shim in the same run: {_f(r['shim_ratio'])}) | {_f(r['litellm_ratio'], 3)}, +"
                     f"{_f(r['litellm_added_ttft_p50_ms'])} ms TTFT, {_f(r['litellm_cpu_ms_per_1000_chunks'] / 1000 if r['litellm_cpu_ms_per_1000_chunks'] else None)} ms CPU/chunk "  # noqa: E501
                     f"| peer | {REFERENCE['litellm_ratio']} |")
    if "error" in lite:
        lines.append(f"| LiteLLM | error: {lite['error'][:300]} | | |")
    xi = peers.get("xinference", {})
    for r in xi.get("rows", []):
        lines.append(f"| Xinference {xi.get('version', '')} ÷ generate, {r['streams']} streams (shim in the same "
                     f"run: {_f(r['shim_ratio_to_generate'])}) | {_f(r['xinference_ratio_to_generate'])}, TTFT "
                     f"{_f(r['xinference_ttft_p50_ms'])} ms (shim {_f(r['shim_ttft_p50_ms'])}) | peer | "
                     f"{REFERENCE['xinference']} |")
    if xi.get("rows"):
        lines.append(f"| Xinference start (server + model) / memory | {_f(xi['ready_with_model_s'])} s / "
                     f"{_f(xi['rss_tree_mib'], 0)} MiB | peer | 24 s / 1.5 GB |")
    if "error" in xi:
        lines.append(f"| Xinference | error: {xi['error'][:300]} | | |")
    lines += gateway_rows(parts.get("gateway", {}))
    op = parts.get("operator", {})
    for r in op.get("rows", []):
        if "error" in r:
            lines.append(f"| operator, N={r['n']} | error: {r['error'][:200]} | | |")
            continue
        lines.append(f"| operator, N={r['n']}: all with children and status (s) ÷ bare create "
                     f"({_f(r['all_done_s'])} / {_f(r['bare_create_s'])} s) | "
                     f"{_ok(r['ratio_to_bare'], (r['ratio_to_bare'] or 99) <= 4)} | ≤ 4× | |")
        if r.get("ratio_to_fair") is not None:
            lines.append(f"| … ÷ the fair baseline: the same N ModelDeployments + the Deployment and Service the "
                         f"operator renders, applied by a plain client ({_f(r['all_done_s'])} / "
                         f"{_f(r['fair_create_s'])} s); all CPU ÷ its CPU | "
                         f"{_ok(r['ratio_to_fair'], r['ratio_to_fair'] <= 1.5)}; "
                         f"{_f(r.get('cpu_ratio_to_fair'))}× CPU | ≤ 1.5× | |")
        writes = r["writes_per_deployment"]
        lines.append(f"| … create→children p50 / p99 (s), writes per deployment | {_f(r['create_to_done_p50_s'])} / "
                     f"{_f(r['create_to_done_p99_s'])}, {_ok(writes, writes <= 3)} | ≤ 3 writes | |")
        lines.append(f"| … CPU: operator / emulator+driver (s); all CPU ÷ bare create's | "
                     f"{_f(r.get('operator_cpu_s'))} / {_f(r.get('api_and_driver_cpu_s'))}; "
                     f"{_f(r.get('cpu_ratio_to_bare'))}× | | |")
        rss = r["operator_rss_peak_mib"]
        lines.append(f"| … operator RSS peak (MiB) | {_ok(rss, rss < 150)} | < 150 | |")
    res = parts.get("resolver", {})
    total = res.get("total_cpu_seconds", res.get("total_seconds"))
    if total is not None:
        slowest = min(r["plans_per_second"] for r in res["rows"])
        lines.append(f"| resolver: whole catalog ({res['rows'][0]['specs']:,} specs) × {len(res['rows'])} cluster "
                     f"kinds (s) | {_ok(total, total < 1)} (≥ {slowest:,} plans/s) | < 1 s | |")
        sized = res.get("sizing") or {}
        if sized.get("rows"):
            best, first = sized["total_cpu_seconds"], sized["first_cpu_seconds"]
            lines.append(f"| resolver: whole catalog × {len(sized['rows'])} sizing clusters (examples/nodes/) (s), "
                         f"first pass | {_ok(best, best < 1)}, {_f(first)} | < 1 s | |")
    elif "error" in res:
        lines.append(f"| resolver | error: {res['error'][:200]} | | |")
    return lines


def gateway_rows(gw: dict[str, Any]) -> list[str]:
    """The gateway part's rows: overhead (fast and fixed pace, LiteLLM beside), prefix routing, scale from zero."""
    lines = []
    if "error" in gw:
        lines.append(f"| gateway | error: {gw['error'][:200]} | | |")
    ov = gw.get("overhead", {})
    for r in ov.get("rows", []):
        c = r["concurrency"]
        goal = c == 64
        peer = ""
        if r.get("litellm_ratio") is not None:
            peer = (f"LiteLLM {_f(r['litellm_ratio'], 3)}, +{_f(r['litellm_added_ttft_p50_ms'])} ms TTFT, "
                    f"{_f(r['litellm_cpu_ms_per_1000_chunks'], 0)} ms CPU / 1,000 chunks")
        ratio = _ok(r["ratio"], (r["ratio"] or 0) >= 0.9) if goal else _f(r["ratio"])
        lines.append(f"| gateway, full speed, {c} streams: through ÷ direct ({_f(r['gateway_tokens_per_s'], 0)} / "
                     f"{_f(r['direct_tokens_per_s'], 0)} tok/s) | {ratio} | {'≥ 0.9' if goal else ''} | {peer} |")
        a = r["added_ttft_p50_ms"]
        added = _ok(a, a is not None and a <= 1) if c == 1 else _f(a)
        lines.append(f"| … added TTFT p50 / p99 (ms), {c} streams | {added} / {_f(r['added_ttft_p99_ms'])} | "
                     f"{'≤ 1 ms p50' if c == 1 else ''} | |")
        lines.append(f"| … gateway CPU ms per 1,000 chunks, {c} streams | {_f(r['gateway_cpu_ms_per_1000_chunks'])} "
                     "| | |")
        if r.get("cpu_ratio") is not None:
            lines.append(f"| … CPU ms per 1,000 chunks, direct (engine + client) ÷ through the gateway, {c} streams "
                         f"| {_f(r['direct_path_cpu_ms_per_1000_chunks'])} / "
                         f"{_f(r['gateway_path_cpu_ms_per_1000_chunks'])} = {_f(r['cpu_ratio'])} | | |")
    if ov.get("rows"):
        lines.append(f"| … gateway RSS after the runs, MiB | {_f(ov.get('gateway_rss_mib'), 1)} | | |")
    if "error" in ov:
        lines.append(f"| gateway overhead | error: {ov['error'][:200]} | | |")
    if "error" in ov.get("litellm", {}):
        lines.append(f"| LiteLLM beside the gateway | error: {ov['litellm']['error'][:200]} | | |")
    fx = gw.get("overhead_fixed", {})
    for r in fx.get("rows", []):
        lines.append(f"| gateway, fixed rate ({1 / fx['seconds_per_token']:.0f} tok/s per stream), "
                     f"{r['concurrency']} streams: through ÷ direct; added TTFT p50 (ms); CPU ms / 1,000 chunks | "
                     f"{_f(r['ratio'])}; {_f(r['added_ttft_p50_ms'])}; {_f(r['gateway_cpu_ms_per_1000_chunks'])} "
                     "| | |")
    if "error" in fx:
        lines.append(f"| gateway overhead, fixed rate | error: {fx['error'][:200]} | | |")
    pre = gw.get("prefix", {})
    if "skipped" in pre:
        lines.append(f"| prefix-aware routing | skipped: {pre['skipped'][:200]} | | |")
    for tag, label in PREFIX_CONFIGS.items():
        cfg = pre.get(tag, {})
        if "error" in cfg:
            lines.append(f"| prefix-aware routing, {label} | error: {cfg['error'][:200]} | | |")
        rows = {r["strategy"]: r for r in cfg.get("rows", [])}
        for name, r in rows.items():
            others = [o["ttft_p50_ms"] for k, o in rows.items() if k != name and o["ttft_p50_ms"] is not None]
            cached = f"{r['cached_share'] * 100:.0f}%" if r["cached_share"] is not None else "—"
            text = (f"{_f(r['ttft_p50_ms'], 0)} / {_f(r['ttft_p99_ms'], 0)} ms, {_f(r['tokens_per_s'], 0)} tok/s "
                    f"({_f(r['tokens_per_s_vs_random'])}× random), {cached} from cache")
            if name == "PrefixHash":
                best = r["ttft_p50_ms"] is not None and all(r["ttft_p50_ms"] < o for o in others)
                text = f"{text} {'✅' if best else '❌'}"
            lines.append(f"| prefix routing ({label}), {name}: TTFT p50 / p99, tok/s, prompt from cache | {text} | "
                         f"{'lowest TTFT' if name == 'PrefixHash' else ''} | "
                         f"{REFERENCE['kubeai'] if name == 'PrefixHash' else ''} |")
    sz = gw.get("scale_from_zero", {})
    if "skipped" in sz:
        lines.append(f"| scale from zero: first-request TTFT | not measured: {sz['skipped']} | | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short windows, one repetition (a few minutes)")
    p.add_argument("--smoke", action="store_true", help="smallest sizes (tests); writes only with --out")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {','.join(PARTS)}")
    p.add_argument("--out", type=Path, default=None, help="JSON results (default benchmarks/results/latest.json)")
    p.add_argument("--kubeconfig", metavar="PATH", default=None,
                   help="operator part against this real cluster instead of the emulator")
    p.add_argument("--table", type=Path, default=None, help="print the table of an earlier results file and exit")
    a = p.parse_args(argv)
    if a.table is not None:
        print(table(json.loads(a.table.read_text())))
        return 0
    parts = [x for x in a.only.split(",") if x]
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {','.join(PARTS)}")
    mode = "smoke" if a.smoke else "quick" if a.quick else "full"
    out = a.out or (None if a.smoke else ROOT / "benchmarks" / "results" / "latest.json")
    logdir = (out.parent if out else ROOT / "benchmarks" / "results") / "logs"
    started = time.monotonic()
    results: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "mode": mode, "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "load_average_start": load_average(),
        "note": "load generator, servers and (on this machine) other engineers' tests share the same cores",
        "parts": {},
    }
    for name in parts:
        print(f"[run] {name} ...", file=sys.stderr, flush=True)
        results["parts"][name] = run_part(name, mode, logdir, a.kubeconfig)
        print(f"[run] {name}: {results['parts'][name]['part_wall_s']} s", file=sys.stderr, flush=True)
        if out is not None:  # what is done so far survives an interrupted run
            out.parent.mkdir(parents=True, exist_ok=True)
            out.with_suffix(".partial.json").write_text(json.dumps(results, indent=1) + "\n")
    results["load_average_end"] = load_average()
    results["wall_s"] = round(time.monotonic() - started, 1)
    results["table"] = table(results)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
        out.with_suffix(".partial.json").unlink(missing_ok=True)
    print(results["table"])
    print(f"\n{mode} run, {results['wall_s']} s, load average {results['load_average_start']} → "
          f"{results['load_average_end']}" + (f"; results in {out}" if out else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
