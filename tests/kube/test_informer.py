"""The shared list → watch → list-again-on-410 loop against the API emulator (real HTTP, real client)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kubeconfigs import credentials_for
from turnout.kube import KubeClient
from turnout.kube.informer import Informer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "controller"))  # fakekube, the API emulator
from fakekube import FakeKube

SECRETS = ("", "v1", "secrets")
NS = "ns"
PATH = f"/api/v1/namespaces/{NS}/secrets"


def secret(name: str, value: str = "v") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS}, "data": {"k": value}}


async def change(fake: FakeKube, name: str, value: str) -> None:
    await fake.modify(SECRETS, (NS, name), lambda obj: {**obj, "data": {"k": value}})


class Mirror:
    """What a caller knows: a list replaces it, an event changes it; both recorded."""

    def __init__(self) -> None:
        self.objects: dict[str, str] = {}
        self.lists = 0
        self.events: list[tuple[str, str]] = []

    def on_list(self, items: list[dict[str, Any]]) -> None:
        self.lists += 1
        self.objects = {o["metadata"]["name"]: o["data"]["k"] for o in items}

    def on_event(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        self.events.append((kind, name))
        if kind == "DELETED":
            self.objects.pop(name, None)
        else:
            self.objects[name] = obj["data"]["k"]


@pytest.fixture
async def fake() -> AsyncIterator[FakeKube]:
    import kmock
    from aiohttp.test_utils import RawTestServer

    server_cls = functools.partial(RawTestServer, keepalive_timeout=0.2)
    async with FakeKube() as api, kmock.Server(api, server_cls=server_cls):
        await api.put_object(("", "v1", "namespaces"), {"metadata": {"name": NS}})
        yield api
        api.close_watches()


@pytest.fixture
async def client(fake: FakeKube) -> AsyncIterator[KubeClient]:
    kube = KubeClient(await credentials_for(str(fake.url).rstrip("/")), user_agent="informer-test")
    yield kube
    await kube.close()


@contextlib.asynccontextmanager
async def running(informer: Informer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(informer.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def watches(fake: FakeKube) -> int:
    return len([r for r in fake.requests if r.resource is not None and r.resource.plural == "secrets"
                and r.params.get("watch") == "true"])


async def test_lists_then_follows_every_change(fake: FakeKube, client: KubeClient) -> None:
    await fake.put_object(SECRETS, secret("a"))
    await fake.put_object(SECRETS, secret("b"))
    mirror = Mirror()
    informer = Informer(client, PATH, on_list=mirror.on_list, on_event=mirror.on_event, timeout_seconds=1)
    await informer.list()
    assert mirror.objects == {"a": "v", "b": "v"} and informer.rv == str(fake.last_rv)
    async with running(informer):
        await fake.wait_for(lambda: fake.watchers.get(SECRETS), timeout=10, what="the watch")
        await fake.put_object(SECRETS, secret("c"))
        await change(fake, "a", "w")
        await fake.remove(SECRETS, (NS, "b"))
        await fake.wait_for(lambda: mirror.objects == {"a": "w", "c": "v"}, timeout=10, what="the changes")
        # The server ends the watch after timeoutSeconds: it is opened again from the last version, not listed.
        await fake.wait_for(lambda: watches(fake) >= 2, timeout=10, what="a second watch")
        await fake.put_object(SECRETS, secret("d"))
        await fake.wait_for(lambda: "d" in mirror.objects, timeout=10, what="a change on the second watch")
    assert mirror.lists == 1
    assert mirror.events == [("ADDED", "c"), ("MODIFIED", "a"), ("DELETED", "b"), ("ADDED", "d")]


async def test_a_410_lists_again_and_misses_no_change(fake: FakeKube, client: KubeClient) -> None:
    await fake.put_object(SECRETS, secret("a"))
    await fake.put_object(SECRETS, secret("b"))
    mirror = Mirror()
    informer = Informer(client, PATH, on_list=mirror.on_list, on_event=mirror.on_event, timeout_seconds=1)
    async with running(informer):
        await fake.wait_for(lambda: fake.watchers.get(SECRETS), timeout=10, what="the watch")
        assert mirror.lists == 1
        # Hold the next watch while things change, then answer it 410 Gone (the version was compacted away).
        gate = fake.hold("GET", "secrets")
        await fake.wait_for(lambda: fake.held, timeout=10, what="the next watch, held")
        fake.gates.clear()  # the list after the 410 goes through
        await fake.put_object(SECRETS, secret("c"))
        await fake.remove(SECRETS, (NS, "a"))
        await change(fake, "b", "w")
        fake.fail("GET", "secrets", 410)
        gate.set()
        await fake.wait_for(lambda: mirror.lists == 2, timeout=10, what="the list after the 410")
        assert mirror.objects == {"b": "w", "c": "v"}, "what changed while nobody watched"
        await fake.put_object(SECRETS, secret("e"))
        await fake.wait_for(lambda: "e" in mirror.objects, timeout=10, what="a change after listing again")
    assert ("ADDED", "c") not in mirror.events, "the missed changes came from the list, not replayed events"


async def test_a_410_error_event_in_the_stream_lists_again(fake: FakeKube, client: KubeClient) -> None:
    mirror = Mirror()
    informer = Informer(client, PATH, on_list=mirror.on_list, on_event=mirror.on_event)
    async with running(informer):
        await fake.wait_for(lambda: fake.watchers.get(SECRETS), timeout=10, what="the watch")
        fake.send_on_watches(SECRETS, json.dumps({"type": "ERROR", "object": {  # as the API server sends it
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
            "message": "too old resource version"}}).encode() + b"\n")
        await fake.wait_for(lambda: mirror.lists == 2, timeout=10, what="the list after the ERROR event")


async def test_other_api_errors_back_off_and_resume(fake: FakeKube, client: KubeClient) -> None:
    mirror = Mirror()
    informer = Informer(client, PATH, on_list=mirror.on_list, on_event=mirror.on_event, backoff=0.05)
    fake.fail("GET", "secrets", 500, times=2)  # the first list, then its retry
    async with running(informer):
        await fake.wait_for(lambda: fake.watchers.get(SECRETS), timeout=10, what="the watch after two failures")
        await fake.put_object(SECRETS, secret("a"))
        await fake.wait_for(lambda: mirror.objects == {"a": "v"}, timeout=10, what="the change")
    assert mirror.lists == 1
