"""docs/shim.md's feature x engine table is the one rendered from the suite's committed results."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from conformance_features import CONTRACT, FEATURES, LIVE

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tests" / "conformance" / "results.json"


def _renderer():  # scripts/ is not a package
    spec = importlib.util.spec_from_file_location("render_conformance", ROOT / "scripts" / "render-conformance.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_doc_table_is_rendered_from_the_results() -> None:
    render = _renderer()
    doc = (ROOT / "docs" / "shim.md").read_text()
    assert render.render(doc, json.loads(RESULTS.read_text())) == doc, "run scripts/render-conformance.py"


def test_the_results_have_a_cell_for_every_feature_and_engine() -> None:
    results = json.loads(RESULTS.read_text())
    assert [f for f, _ in results["features"]] == [f.name for f in FEATURES]
    assert results["engines"] == [*LIVE, *CONTRACT]
    for engine in results["engines"]:
        assert set(results["results"][engine]) == {f.name for f in FEATURES}, engine
