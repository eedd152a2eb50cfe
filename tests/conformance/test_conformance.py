"""The feature x engine table: each cell is what its check found, compared with ``results.json``.

``results.json`` is committed and ``docs/shim.md``'s table is rendered from it
(``scripts/render-conformance.py``). A cell that changes (a feature that starts or stops working on
an engine) fails its test until the results are refreshed: ``TURNOUT_CONFORMANCE_UPDATE=1 pytest
tests/conformance`` writes ``results.json`` and renders the table into ``docs/shim.md``; commit both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from conformance_features import CONTRACT, FEATURES, LIVE, SERVED, USER, Feature, Target

RESULTS = Path(__file__).resolve().parent / "results.json"
RENDER = Path(__file__).resolve().parents[2] / "scripts" / "render-conformance.py"
UPDATE = os.environ.get("TURNOUT_CONFORMANCE_UPDATE") == "1"

pytestmark = pytest.mark.slow


def _committed() -> dict[str, Any]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {"results": {}}


@pytest.fixture(scope="module")
def found() -> Iterator[dict[str, dict[str, Any]]]:
    cells: dict[str, dict[str, Any]] = {}
    yield cells
    if UPDATE and cells:
        old = _committed()["results"]
        for engine, row in cells.items():
            old.setdefault(engine, {}).update(row)
        out = {"features": [[f.name, f.label] for f in FEATURES], "engines": [*LIVE, *CONTRACT],
               "contract": list(CONTRACT), "results": old}
        RESULTS.write_text(json.dumps(out, indent=2, sort_keys=False) + "\n")
        subprocess.run([sys.executable, str(RENDER)], check=True)


def _outcome(run: Callable[[], None]) -> dict[str, Any]:
    try:
        run()
    except openai.APIStatusError as exc:
        return {"ok": False, "detail": f"HTTP {exc.status_code}: {_short(str((exc.body or {}).get('message', exc)))}"}
    except (AssertionError, ValueError, KeyError, TypeError, AttributeError, StopIteration) as exc:
        return {"ok": False, "detail": _short(f"{type(exc).__name__}: {exc}")}
    return {"ok": True, "detail": ""}


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 90 else text[:87] + "..."


def _record(found: dict[str, dict[str, Any]], engine: str, feature: Feature, cell: dict[str, Any]) -> None:
    found.setdefault(engine, {})[feature.name] = cell
    if UPDATE:
        return
    want = _committed()["results"].get(engine, {}).get(feature.name)
    assert want is not None, f"{engine}/{feature.name} is not in {RESULTS.name}; refresh it (see module doc)"
    assert cell["ok"] == want["ok"], (
        f"{engine}/{feature.name} now {'works' if cell['ok'] else 'fails'} ({cell['detail']}), "
        f"{RESULTS.name} says otherwise: refresh it (see this module's doc)")


@pytest.mark.parametrize("feature", FEATURES, ids=[f.name for f in FEATURES])
@pytest.mark.parametrize("engine", LIVE)
def test_live(engine: str, feature: Feature, target: Callable[[str], Target],
              found: dict[str, dict[str, Any]]) -> None:
    t = target(engine)
    _record(found, engine, feature, _outcome(lambda: feature.check(t)))


def _contract(shim: Any, feature: Feature) -> None:
    client = shim.openai()
    body = {k: v for k, v in feature.forwarded.items()}
    if feature.path == "responses":
        result = client.responses.create(model=SERVED, **body)
    else:
        body.setdefault("messages", USER)
        result = client.chat.completions.create(model=SERVED, **body)
    if body.get("stream"):
        events = list(result)
        assert events, "no events"
    got = shim.engine_stats()["last_body"]
    for key, value in body.items():
        if key == "stream_options":
            assert got[key]["include_usage"] is True
            continue
        assert got.get(key) == value, f"{key}: {got.get(key)!r} != {value!r}"


@pytest.mark.parametrize("feature", FEATURES, ids=[f.name for f in FEATURES])
@pytest.mark.parametrize("engine", CONTRACT)
def test_contract(engine: str, feature: Feature, shims: Callable[..., Any],
                  found: dict[str, dict[str, Any]]) -> None:
    shim = shims(engine)
    cell = _outcome(lambda: _contract(shim, feature))
    if cell["ok"]:
        cell["detail"] = "passed through"
    _record(found, engine, feature, cell)
