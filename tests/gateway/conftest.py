"""Fixtures: the API emulator, in-loop HTTP servers (gateway, stand-in engines, a recording upstream)."""

from __future__ import annotations

import functools
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
if str(TESTS / "controller") not in sys.path:
    sys.path.insert(0, str(TESTS / "controller"))  # fakekube, the API emulator
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.append(str(ROOT / "benchmarks"))  # standin_engine, the stand-in OpenAI engine
if str(TESTS / "shim") not in sys.path:
    sys.path.append(str(TESTS / "shim"))  # scripted: a shim with a scripted backend, behind the fuzzed gateway

from fakekube import FakeKube  # noqa: E402
from gwkit import MDS, NS, serve  # noqa: E402


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
async def start_server(free_port_factory: Callable[[], int]) -> AsyncIterator[Callable[..., Any]]:
    """``port = await start(app)``: serve an ASGI app until the test ends."""
    stack: list[Any] = []

    async def start(app: Any, port: int | None = None) -> int:
        port = port or free_port_factory()
        cm = serve(app, port)
        await cm.__aenter__()
        stack.append(cm)
        return port

    yield start
    for cm in reversed(stack):
        await cm.__aexit__(None, None, None)


@pytest.fixture
async def gateway(fake: FakeKube, free_port_factory: Callable[[], int]) -> AsyncIterator[Callable[..., Any]]:
    """``url, app = await gateway(**GatewayApp options)``: a gateway following ``fake``'s namespace NS."""
    from kubeconfigs import credentials_for
    from turnout.gateway.app import GatewayApp
    from turnout.gateway.kubesource import KubeSource
    from turnout.kube import KubeClient

    clients: list[KubeClient] = []
    servers: list[Any] = []

    async def start(*, watch_timeout: int = 300, namespaces: list[str] | None = None, **kw: Any) -> Any:
        client = KubeClient(await credentials_for(str(fake.url).rstrip("/")), user_agent="turnout-gateway")
        clients.append(client)
        app = GatewayApp(KubeSource(client, namespaces or [NS], watch_timeout=watch_timeout), **kw)
        port = free_port_factory()
        cm = serve(app, port)
        await cm.__aenter__()
        servers.append(cm)
        return f"http://127.0.0.1:{port}", app

    yield start
    for cm in reversed(servers):
        await cm.__aexit__(None, None, None)
    for client in clients:
        await client.close()
