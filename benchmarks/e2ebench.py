"""Figures from an end-to-end test: run it N times with ``TURNOUT_E2E_RESULTS`` set, collect, tabulate.

The e2e tests assert no timing; the ones that measure write what they saw to the JSON file that variable
names. A benchmark names the test and the rows of its table (label, path into one run's figures).
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "benchmarks" / "results" / "logs"  # pytest's output of each run (not committed)
Row = tuple[str, tuple[str, ...]]


def _at(run: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = run
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def run_once(test: str | Sequence[str], python: str, timeout: float, log: Path) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    env = {**os.environ, "TURNOUT_E2E_RESULTS": str(out),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    started = time.monotonic()
    tests = [test] if isinstance(test, str) else list(test)
    proc = subprocess.run([python, "-m", "pytest", *tests, "-q", "-x", "-s", "-p", "no:cacheprovider"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    figures = json.loads(out.read_text()) if out.exists() and out.stat().st_size else {}
    out.unlink(missing_ok=True)
    figures["passed"] = proc.returncode == 0
    figures["wall_s"] = round(time.monotonic() - started, 1)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout + proc.stderr)
    figures["log"] = str(log.relative_to(ROOT)) if log.is_relative_to(ROOT) else str(log)
    return figures


def table(rows: Sequence[Row], runs: list[dict[str, Any]]) -> str:
    lines = ["| figure | median | runs |", "|---|---|---|"]
    for label, path in rows:
        values = [v for v in (_at(r, path) for r in runs) if isinstance(v, (int, float))]
        median = statistics.median(values) if values else "–"
        lines.append(f"| {label} | {median} | {', '.join(str(v) for v in values)} |")
    return "\n".join(lines)


def main(description: str, test: str | Sequence[str], rows: Sequence[Row], out: Path, argv: list[str] | None = None,
         *, timeout: float = 1500) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--python", default=sys.executable, help="the interpreter with turnout's dependencies")
    parser.add_argument("--timeout", type=float, default=timeout, help="seconds per run")
    parser.add_argument("--out", type=Path, default=out)
    args = parser.parse_args(argv)
    if not os.environ.get("KUBECONFIG"):
        parser.error("set KUBECONFIG to the test cluster (as for e2e/)")
    runs = []
    for i in range(args.runs):
        runs.append(run_once(test, args.python, args.timeout, LOGS / f"{args.out.stem}-{i + 1}.log"))
        print(f"run {i + 1}/{args.runs}: {'passed' if runs[-1]['passed'] else 'FAILED'} in {runs[-1]['wall_s']} s",
              file=sys.stderr)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    report = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]), "commit": commit.strip(),
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_average": os.getloadavg(),
              "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows, runs))
    return 0 if all(r["passed"] for r in runs) else 1
