"""The e2e results file: ``TURNOUT_E2E_RESULTS=<file>`` collects the figures the measuring tests record.

docs/reliability-e2e.json is a copy of one run's file; scripts/render-reliability.py and
benchmarks/bench_realnode.py read it. Each test merges its own keys into what the others wrote.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def record_results(figures: dict[str, Any]) -> None:
    """Merge ``figures`` into the results file when ``TURNOUT_E2E_RESULTS`` names one (else do nothing).

    A dict under a key the file already holds is merged into it (the agent and the fault tiers both record
    ``watch_410``); any other value replaces what was there.
    """
    out = os.environ.get("TURNOUT_E2E_RESULTS")
    if not out:
        return
    path = Path(out)
    known = json.loads(path.read_text()) if path.exists() and path.stat().st_size else {}
    merged = {k: {**known[k], **v} if isinstance(v, dict) and isinstance(known.get(k), dict) else v
              for k, v in figures.items()}
    path.write_text(json.dumps({**known, **merged}, indent=2) + "\n")
