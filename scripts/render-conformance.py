#!/usr/bin/env python3
"""Render the conformance suite's results (tests/conformance/results.json) as the table in docs/shim.md.

    TURNOUT_CONFORMANCE_UPDATE=1 pytest tests/conformance   # run the suite, write results.json
    python scripts/render-conformance.py                    # write the table between the markers
    python scripts/render-conformance.py --check            # exit 1 when docs/shim.md is out of date

The table sits between ``<!-- conformance:begin -->`` and ``<!-- conformance:end -->``; nothing
in it is written by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "tests" / "conformance" / "results.json"
DOC = ROOT / "docs" / "shim.md"
BEGIN, END = "<!-- conformance:begin -->", "<!-- conformance:end -->"


def table(results: dict[str, Any]) -> str:
    """The Markdown table: a row per feature, a column per engine; a failing cell says what was found."""
    engines: list[str] = results["engines"]
    contract = set(results.get("contract", ()))
    head = ["feature", *(f"{e} (contract)" if e in contract else e for e in engines)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: list[str] = []
    for name, label in results["features"]:
        cells = [label]
        for engine in engines:
            cell = results["results"].get(engine, {}).get(name)
            if cell is None:
                cells.append("not run")
            elif cell["ok"]:
                cells.append("yes")
            else:
                notes.append(f"{engine}, {name}: {cell['detail'] or 'failed'}")
                cells.append(f"no [{len(notes)}]")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    out = "\n".join(lines) + "\n"
    if notes:
        out += "\n" + "\n".join(f"{i}. {n.replace('|', '/')}" for i, n in enumerate(notes, 1)) + "\n"
    return out


def render(doc: str, results: dict[str, Any]) -> str:
    """``doc`` with the text between the markers replaced by the table."""
    start, end = doc.find(BEGIN), doc.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{DOC}: the markers {BEGIN} and {END} are missing")
    return doc[: start + len(BEGIN)] + "\n" + table(results) + doc[end:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that docs/shim.md is up to date")
    ns = ap.parse_args()
    results = json.loads(RESULTS.read_text())
    doc = DOC.read_text()
    new = render(doc, results)
    if ns.check:
        if new != doc:
            print(f"{DOC} does not match {RESULTS}: run scripts/render-conformance.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
