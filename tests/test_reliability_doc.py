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
