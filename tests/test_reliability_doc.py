"""docs/reliability.md's issue-29 table is what scripts/render-reliability.py makes of the recorded figures, and
every test it names exists."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_reliability", ROOT / "scripts" / "render-reliability.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_table_matches_the_recorded_figures() -> None:
    script = _script()
    text = script.DOC.read_text()
    assert script.render(text) == text, "run python scripts/render-reliability.py"


def test_every_named_test_exists() -> None:
    for row in _script().ROWS:
        if not row.test.startswith(("tests/", "e2e/", "benchmarks/")):
            continue
        first, *more = row.test.split(", ")
        path, *names = first.split("::")
        names += [t.strip().lstrip(":") for t in more]
        source = ROOT / path
        assert source.exists(), path
        defined = {n.name for n in ast.walk(ast.parse(source.read_text()))
                   if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for name in names:
            assert name in defined, f"{path}::{name}"


def test_a_missing_figure_reads_not_run() -> None:
    script = _script()
    rendered = script.table({"figures": {}, "e2e": {}, "bench": []})
    assert rendered.count(script.NOT_RUN) == sum(1 for r in script.ROWS if r.key or r.source == "bench")


def test_the_soak_row_sums_the_figures_the_soak_records() -> None:
    # The shape test_soak_e2e.py records: descriptors as (first half's median, second half's, max) per group.
    soak = {"seconds": 1800, "requests": {"chat ok": 1000, "embed ok": 500, "stream failed (502)": 1},
            "lost": {"stream failed (502)": 1}, "rss_growth": {"gw-a": 0.006, "op": -0.014},
            "fds": {"gateways": [48, 49, 51], "op": [16, 16, 17]}, "scale_to_zero": {"asked": 900.0}}
    row = next(r for r in _script().ROWS if r.key == "soak")
    assert row.figure(soak) == ("1800 s, 1,501 requests, 1 lost; RSS growth at most +0.6%; descriptors (median of "
                                "the second half − the first's, gateway replicas together) at most +1; scaled to "
                                "zero and back")
