"""Fixtures for the shim tests; helpers live in ``shimproc.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from shimproc import RunningShim, start_shim_process

from turnout.tinymodel.lora import build_tiny_lora


@pytest.fixture(scope="session")
def start_shim_factory(tmp_path_factory: pytest.TempPathFactory,
                       free_port_factory: Callable[[], int]) -> Iterator[Callable[..., RunningShim]]:
    """``start(**kw)``: a running shim (see ``shimproc.start_shim_process``); ``wait=False`` returns
    before ``/health`` is 200. Every shim started is stopped at the end of the session."""
    started: list[RunningShim] = []

    def start(*, wait: bool = True, wait_s: float = 120.0, **kw: Any) -> RunningShim:
        shim = start_shim_process(tmp_path_factory.mktemp("shim"), free_port_factory(), **kw)
        started.append(shim)
        if wait:
            shim.wait_health(200, deadline_s=wait_s)
        return shim

    yield start
    for shim in started:
        shim.stop()


@pytest.fixture(scope="session")
def adapters() -> list[Path]:
    """Two LoRA adapters of the tiny model (seeds 1 and 2), for the LoRA tests of each engine."""
    return [build_tiny_lora(seed) for seed in (1, 2)]
