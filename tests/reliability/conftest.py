"""Fixtures for the reliability tests: they reuse the shim and operator test helpers.

``tests/shim`` (``shimproc``, ``scripted``) and ``tests/controller`` (``fakekube``,
``ctlharness``) and ``tests/api`` (``openapi``) are put on ``sys.path``; the fixtures below mirror theirs, since
pytest does not share fixtures between sibling folders.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
for helper_dir in (TESTS / "shim", TESTS / "controller", TESTS / "api"):
    if str(helper_dir) not in sys.path:
        sys.path.insert(0, str(helper_dir))

from ctlharness import MDS, NS, OperatorRun  # noqa: E402
from fakekube import FakeKube  # noqa: E402
from shimproc import RunningShim, start_shim_process  # noqa: E402


@pytest.fixture(scope="session")
def start_shim(tmp_path_factory: pytest.TempPathFactory,
               free_port_factory: Callable[[], int]) -> Iterator[Callable[..., RunningShim]]:
    """``start(**kw)``: a real ``turnout-shim`` process (``shimproc.start_shim_process``), healthy."""
    started: list[RunningShim] = []

    def start(*, wait: bool = True, **kw: Any) -> RunningShim:
        shim = start_shim_process(tmp_path_factory.mktemp("shim"), free_port_factory(), **kw)
        started.append(shim)
        if wait:
            shim.wait_health(200)
        return shim

    yield start
    for shim in started:
        shim.stop()


@pytest.fixture
async def fake() -> AsyncIterator[FakeKube]:
    """The in-memory API server, validating ModelDeployments against the generated CRD."""
    import kmock
    from aiohttp.test_utils import RawTestServer

    server_cls = functools.partial(RawTestServer, keepalive_timeout=0.2)
    async with FakeKube() as api, kmock.Server(api, server_cls=server_cls):
        crd = yaml.safe_load((ROOT / "crds" / "turnout.dev_modeldeployments.yaml").read_text())
        api.schemas[MDS] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        await api.put_object(("", "v1", "namespaces"), {"metadata": {"name": NS}})
        yield api
        api.close_watches()


@pytest.fixture
async def operator_run(fake: FakeKube) -> AsyncIterator[OperatorRun]:
    """An in-process operator against ``fake``; start and stop it in the test."""
    run = OperatorRun(fake)
    yield run
    await run.stop()
