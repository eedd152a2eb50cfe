"""Load on a real shim process (proxy backend, SGLang stand-in): a bounded queue and bounded memory.

A smaller run of ``measure_streams.py`` (which records the 1,000-stream numbers in
docs/reliability.md): every admitted stream completes, requests past ``--max-queue``
get 429 with ``Retry-After`` and cost no memory, and the RSS per open stream stays small.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from measure_streams import load, start

pytestmark = pytest.mark.slow

STREAMS = 200


def test_full_queue_answers_429_and_memory_per_stream_is_bounded(tmp_path: Path) -> None:
    shim = start(tmp_path, max_queue=STREAMS, env={"TURNOUT_ACCESS_LOG": "0", "TURNOUT_LOG_LEVEL": "WARNING"})
    try:
        # streams last >= 10 s (40 tokens, 0.25 s each), far longer than opening them and the overflow take
        first = asyncio.run(load(shim, STREAMS, tokens=40, delay=0.25, overflow=20))
        second = asyncio.run(load(shim, STREAMS, tokens=40, delay=0.25, overflow=20))
    finally:
        shim.stop()
    for run in (first, second):
        assert run["results"] == {"complete": STREAMS}, run
        assert run["overflow_statuses"] == {"429": 20}, run
        assert run["overflow_retry_after"] and all(int(v) >= 1 for v in run["overflow_retry_after"])
        assert run["in_flight_after_overflow"] == STREAMS
    # an open stream costs tens of KiB (about 60 measured), never megabytes
    assert first["rss_per_open_stream_kib"] < 512, first
    # the same load again on the same process: memory plateaus instead of growing with every wave
    assert second["rss_max_sampled_kib"] - first["rss_max_sampled_kib"] < STREAMS * 64, (first, second)
