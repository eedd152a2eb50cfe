"""Figures tests measure for docs/reliability.md (rendered by scripts/render-reliability.py).

A test calls :func:`record` with what it measured. The figures are written to
``docs/reliability-figures.json`` only when ``TURNOUT_RECORD_FIGURES=1`` (a recording run); otherwise
they are kept in memory, so an ordinary test run never changes the committed file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FILE = Path(__file__).resolve().parents[1] / "docs" / "reliability-figures.json"
_seen: dict[str, Any] = {}


def record(key: str, value: dict[str, Any]) -> None:
    """Keep ``value`` under ``key``; written to the figures file in a recording run."""
    _seen[key] = value
    if os.environ.get("TURNOUT_RECORD_FIGURES") != "1":
        return
    data = json.loads(FILE.read_text()) if FILE.exists() else {}
    data[key] = value
    FILE.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
