"""Fixtures: the in-memory API (FakeKube on kmock) and an in-process operator running against it."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path

import kmock
import pytest
import yaml
from aiohttp.test_utils import RawTestServer
from ctlharness import MDS, NS, OperatorRun
from fakekube import FakeKube

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def fake() -> AsyncIterator[FakeKube]:
    # Short keep-alive: kopf waits on exit for every task of its loop, idle server connections included.
    server_cls = functools.partial(RawTestServer, keepalive_timeout=0.2)
    async with FakeKube() as api, kmock.Server(api, server_cls=server_cls):
        # ModelDeployments are validated against the generated CRD's schema, as the API server would.
        crd = yaml.safe_load((ROOT / "crds" / "turnout.dev_modeldeployments.yaml").read_text())
        api.schemas[MDS] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        await api.put_object(("", "v1", "namespaces"), {"metadata": {"name": NS}})
        yield api
        api.close_watches()


@pytest.fixture
async def operator_run(fake: FakeKube) -> AsyncIterator[OperatorRun]:
    """An operator to start in the test. Stop it in the test too: kopf waits up to 5 s on exit for every
    task created after it started, and a fixture's teardown runs in such a task (a failed test pays that)."""
    run = OperatorRun(fake)
    yield run
    await run.stop()
