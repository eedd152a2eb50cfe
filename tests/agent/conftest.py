"""Fixtures: the API emulator (FakeKube from tests/controller plus agentfake) and agents running against it."""

from __future__ import annotations

import functools
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "controller"))

import kmock
from agentfake import AgentFake
from agentharness import NODE, AgentRun
from aiohttp.test_utils import RawTestServer
from clusterfake import ClusterFake, TLSTestServer


@pytest.fixture
async def fake() -> AsyncIterator[AgentFake]:
    server_cls = functools.partial(RawTestServer, keepalive_timeout=0.2)
    async with AgentFake() as api, kmock.Server(api, server_cls=server_cls):
        for ns in ("models", "kube-node-lease"):
            await api.put_object(("", "v1", "namespaces"), {"metadata": {"name": ns}})
        yield api
        api.close_watches()


@pytest.fixture
async def cluster() -> AsyncIterator[ClusterFake]:
    """The emulator over TLS with node identity, CSR approval and signing (clusterfake)."""
    api = ClusterFake()
    server_cls = functools.partial(TLSTestServer, ssl_context=api.ca.server_context(), keepalive_timeout=0.2)
    async with api, kmock.Server(api, server_cls=server_cls):
        for ns in ("models", "kube-node-lease", "kube-system"):
            await api.put_object(("", "v1", "namespaces"), {"metadata": {"name": ns}})
        yield api
        api.close_watches()


@pytest.fixture
async def node_agents(cluster: ClusterFake, tmp_path: Path) -> AsyncIterator[Callable[..., AgentRun]]:
    """Agents against ``cluster`` that join with a bootstrap kubeconfig (``bootstrap=PATH``)."""
    made: list[AgentRun] = []

    def make(bootstrap: Path, **overrides: object) -> AgentRun:
        node = overrides.get("node_name", NODE)
        run = AgentRun(cluster, state_dir=tmp_path / f"node-state-{node}", bootstrap=bootstrap, **overrides)
        made.append(run)
        return run

    yield make
    for run in made:
        await run.stop(stop_pods=True)


@pytest.fixture
async def agents(fake: AgentFake, tmp_path: Path) -> AsyncIterator[Callable[..., AgentRun]]:
    """A factory of agents on this event loop; all are stopped (their processes too) at the end.

    Each node name gets its own state folder (agents on one host never share one); the same node name
    started again reuses its folder, as a restarted agent does.
    """
    made: list[AgentRun] = []

    def make(**overrides: object) -> AgentRun:
        node = overrides.get("node_name", NODE)
        run = AgentRun(fake, state_dir=tmp_path / ("state" if node == NODE else f"state-{node}"), **overrides)
        made.append(run)
        return run

    yield make
    for run in made:
        await run.stop(stop_pods=True)
