"""Scale from zero through the gateway on a real cluster: time to first token, and client errors.

    sudo env KUBECONFIG=PATH python benchmarks/bench_scale_from_zero.py [--runs 3]

Runs the end-to-end test ``e2e/test_gateway_e2e.py::test_scale_from_zero_through_the_gateway_up_to_two_and_back``
``--runs`` times with ``TURNOUT_E2E_RESULTS`` set, and collects what it measured: host agents (real
nodes, each in a network namespace of this machine: needs root and a reachable cluster, as e2e/ does)
serve the tiny GGUF with llama.cpp; the gateway holds the first request for a deployment at zero
replicas, wakes it through the scale subresource, and the operator, scheduler and agent start a pod.
Per run: the first request's time to first token from zero and its phases (from the pod's
timestamps), the client errors of that request and of four streaming clients that then take it to
two replicas, and how long each scale step took. Writes ``benchmarks/results/scale_from_zero.json``
(each run's pytest output in ``benchmarks/results/logs/``) and prints a markdown table (medians over
the runs). The test asserts no timing; this reports them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEST = "e2e/test_gateway_e2e.py::test_scale_from_zero_through_the_gateway_up_to_two_and_back"
OUT = ROOT / "benchmarks" / "results" / "scale_from_zero.json"
LOGS = ROOT / "benchmarks" / "results" / "logs"  # pytest's output of each run (not committed)
ROWS = (  # (label, path into a run's figures)
    ("time to first token from zero (s)", ("cold_start", "ttft_s")),
    ("  request → pod created: gateway wake, operator, Deployment controller (s)",
     ("cold_start", "request_to_pod_created_s")),
    ("  pod created → bound by the scheduler (s)", ("cold_start", "pod_created_to_scheduled_s")),
    ("  bound → Ready: the agent's startupProbe passes (s)",
     ("cold_start", "scheduled_to_ready_s")),
    ("  Ready → first token: EndpointSlice, gateway, generation (s)", ("cold_start", "ready_to_first_token_s")),
    ("  request → the shim's /health first 200 (polled every 0.2 s) (s)",
     ("cold_start", "request_to_engine_healthy_s")),
    ("  startupProbe periodSeconds of the pod", ("cold_start", "startup_probe_period_s")),
    ("time to first token of the same request once warm (s)", ("warm_ttft_s",)),
    ("client errors, first request", ("cold_start", "client_errors")),
    ("idle → back at zero (s)", ("idle_to_zero_s",)),
    ("4 streaming clients from zero → 2 replicas serving (s)", ("load_to_two_serving_s",)),
    ("client errors under load (answers)", ("load", "client_errors")),
    ("load stops → back at zero (s)", ("load_stop_to_zero_s",)),
)


def _at(run: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = run
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def run_once(python: str, timeout: float, log: Path) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    env = {**os.environ, "TURNOUT_E2E_RESULTS": str(out),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    started = time.monotonic()
    proc = subprocess.run([python, "-m", "pytest", TEST, "-q", "-x", "-p", "no:cacheprovider"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    figures = json.loads(out.read_text()) if out.exists() and out.stat().st_size else {}
    out.unlink(missing_ok=True)
    figures["passed"] = proc.returncode == 0
    figures["wall_s"] = round(time.monotonic() - started, 1)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout + proc.stderr)
    figures["log"] = str(log.relative_to(ROOT)) if log.is_relative_to(ROOT) else str(log)
    return figures


def table(runs: list[dict[str, Any]]) -> str:
    lines = ["| figure | median | runs |", "|---|---|---|"]
    for label, path in ROWS:
        values = [v for v in (_at(r, path) for r in runs) if isinstance(v, (int, float))]
        median = statistics.median(values) if values else "–"
        lines.append(f"| {label} | {median} | {', '.join(str(v) for v in values)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--python", default=sys.executable, help="the interpreter with turnout's dependencies")
    parser.add_argument("--timeout", type=float, default=1500, help="seconds per run")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if not os.environ.get("KUBECONFIG"):
        parser.error("set KUBECONFIG to the test cluster (as for e2e/)")
    runs = []
    for i in range(args.runs):
        runs.append(run_once(args.python, args.timeout, LOGS / f"scale_from_zero-{i + 1}.log"))
        print(f"run {i + 1}/{args.runs}: {'passed' if runs[-1]['passed'] else 'FAILED'} in {runs[-1]['wall_s']} s",
              file=sys.stderr)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    report = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]), "commit": commit.strip(),
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_average": os.getloadavg(),
              "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(runs))
    return 0 if all(r["passed"] for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
