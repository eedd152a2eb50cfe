"""Resolver throughput: plan every catalog spec against several cluster kinds.

    python benchmarks/bench_resolver.py [--repeat 3] [--sizing]

``--sizing`` plans against the node lists of the sizing work (examples/nodes/: one 8 × H100 node, two
with and without LeaderWorkerSet, a 4 × T4 node, an Ascend 910B node, CPU only, the mixed cluster)
instead of the default cluster kinds; the target is the whole catalog × those clusters in under 1 s.

Prints plans per second and the time for the whole catalog per cluster kind, as CPU
time of this process (best of --repeat; steady on a shared machine) and wall time
(median). The resolver is pure, so this measures only Python work: no I/O, no sleeps.
The first cluster pays the catalog lookups; the resolver memoizes them, as the
operator benefits from when it re-resolves on node changes. Each cluster gets a resolver
cache, as the operator keeps one for its Hardware object (it resolves the same spec on every
reconcile until nodes change), so "first s" (the first pass over a cluster: a node change) is
shown beside the best.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from turnout.api import ModelDeploymentSpec
from turnout.catalog import load_catalog
from turnout.hardware import ClusterFeatures, Hardware, parse_nodes
from turnout.resolver import Plan, ResolverCache, resolve

ROOT = Path(__file__).resolve().parents[1]


def _nodes(path: str) -> list[dict[str, Any]]:
    return yaml.safe_load((ROOT / path).read_text())["items"]


def clusters() -> dict[str, Hardware]:
    mixed = _nodes("examples/nodes/mixed.yaml")
    by = {n["metadata"]["name"]: n for n in mixed}
    return {
        "mixed (4 classes)": parse_nodes(mixed),
        "nvidia only": parse_nodes([by["gpu-a10g-1"], by["gpu-h100-1"]]),
        "ascend + cpu": parse_nodes([by["npu-910b-1"], by["cpu-1"]]),
        "metal only": parse_nodes([by["mac-studio-1"]]),
        "cpu only": parse_nodes(_nodes("examples/nodes/cpu-only.yaml")),
    }


def sizing_clusters() -> dict[str, Hardware]:
    """The clusters the sizing tests plan on (tests/resolver/test_sizing.py)."""
    lws = ClusterFeatures(leader_worker_set=True)
    return {
        "1 × 8 H100": parse_nodes(_nodes("examples/nodes/h100-1x8.yaml")),
        "2 × 8 H100": parse_nodes(_nodes("examples/nodes/h100-2x8.yaml")),
        "2 × 8 H100 + LWS": parse_nodes(_nodes("examples/nodes/h100-2x8.yaml"), lws),
        "4 × T4": parse_nodes(_nodes("examples/nodes/t4.yaml")),
        "8 × Ascend 910B": parse_nodes(_nodes("examples/nodes/ascend-910b.yaml")),
        "cpu only": parse_nodes(_nodes("examples/nodes/cpu-only.yaml")),
        "mixed (4 classes)": parse_nodes(_nodes("examples/nodes/mixed.yaml")),
    }


def every_spec() -> list[ModelDeploymentSpec]:
    """One spec per (family, size, format, quantization) in the catalog."""
    out = []
    for family in load_catalog():
        for spec in family.specs:
            for quant in spec.quantizations:
                model: dict[str, Any] = {"name": family.name, "format": spec.format, "quantization": quant}
                if spec.size_b is not None:
                    model["size"] = spec.size_b
                try:
                    out.append(ModelDeploymentSpec.model_validate({"model": model}))
                except ValueError:
                    continue
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sizing", action="store_true", help="the sizing clusters (examples/nodes/) instead")
    args = parser.parse_args()
    specs = every_spec()
    load_catalog()  # warm: the catalog is read once per process
    rows = []
    for name, hw in (sizing_clusters() if args.sizing else clusters()).items():
        times, cpu = [], []
        cache = ResolverCache()
        for _ in range(args.repeat):
            start, start_cpu = time.perf_counter(), time.process_time()
            plans = sum(isinstance(resolve(s, hw, cache=cache), Plan) for s in specs)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        best = min(cpu)
        rows.append(
            {
                "cluster": name,
                "specs": len(specs),
                "planned": plans,
                "seconds": round(statistics.median(times), 3),
                "cpu_seconds": round(best, 3),
                "first_cpu_seconds": round(cpu[0], 3),
                "plans_per_second": round(len(specs) / best),
            }
        )
    total = sum(r["cpu_seconds"] for r in rows)
    first = sum(r["first_cpu_seconds"] for r in rows)
    if args.json:
        print(json.dumps({"rows": rows, "total_cpu_seconds": round(total, 3), "first_cpu_seconds": round(first, 3)}))
        return
    print(f"{'cluster':<20} {'specs':>6} {'planned':>8} {'cpu s':>7} {'first s':>8} {'wall s':>7} {'plans/s':>9}")
    for r in rows:
        print(
            f"{r['cluster']:<20} {r['specs']:>6} {r['planned']:>8} {r['cpu_seconds']:>7.3f}"
            f" {r['first_cpu_seconds']:>8.3f} {r['seconds']:>7.3f} {r['plans_per_second']:>9}"
        )
    print(f"whole catalog against {len(rows)} cluster kinds: {total:.3f} s of CPU (first pass {first:.3f} s)")


if __name__ == "__main__":
    main()
