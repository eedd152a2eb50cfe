"""LoRA adapters through the gateway: listed with their parent, routed to the pods that hold them, 404 when gone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from gwkit import MDS, NS, SLICES, Upstream, model_deployment

from turnout.gateway.kubesource import model_from, slice_pods
from turnout.gateway.registry import Model, Registry


async def test_adapters_are_models_on_the_pods_that_hold_them() -> None:
    reg = Registry()
    base = reg.put_model(Model(NS, "chat", "chat", service="chat", adapters={
        "sql": ("hf://o/sql", ("chat-b",)), "poems": ("hf://o/poems", ()), "chat2": ("hf://o/x", ("chat-a",))}))
    reg.put_model(Model(NS, "other", "chat2", service="other"))  # a base model's name wins over an adapter's
    reg.set_pods(NS, "chat-x", {"chat-a": "10.0.0.1", "chat-b": "10.0.0.2"})
    reg.set_endpoints(NS, "chat", "chat-x", [("10.0.0.1", 8000), ("10.0.0.2", 8000)])
    sql, poems = reg.get("sql"), reg.get("poems")
    assert sql is not None and poems is not None
    assert (sql.parent, sql.root, sql.name, sql.namespace) == ("chat", "hf://o/sql", "chat", NS)
    assert sql.endpoints == [base.endpoints[1]] and sql.endpoints[0] is base.endpoints[1]  # shared in-flight counts
    assert poems.endpoints == []
    assert reg.get("chat2") is not None and reg.get("chat2").name == "other"
    # The operator loaded sql on the other pod too.
    reg.put_model(Model(NS, "chat", "chat", service="chat", adapters={"sql": ("hf://o/sql", ("chat-a", "chat-b"))}))
    assert reg.get("sql") is sql and len(sql.endpoints) == 2
    assert reg.get("poems") is None
    reg.set_pods(NS, "chat-x", None)
    assert sql.endpoints == []
    reg.drop_model(NS, "chat")
    assert reg.get("sql") is None


def test_model_from_reads_spec_adapters_and_the_pods_in_status() -> None:
    md = model_deployment("chat")
    md["spec"].update(lora={}, adapters=[{"name": "sql", "uri": "hf://o/sql"}, {"name": "new", "uri": "s3://b/n"}])
    md["status"] = {"adapters": [{"name": "sql", "ready": "1/2", "loaded": 1, "pods": ["chat-a"]},
                                 {"name": "removed", "ready": "2/2", "loaded": 2, "pods": ["chat-a", "chat-b"]}]}
    assert model_from(md).adapters == {"sql": ("hf://o/sql", ("chat-a",)), "new": ("s3://b/n", ())}
    es = {"endpoints": [{"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "chat-a"}},
                        {"addresses": ["10.0.0.2"]}]}
    assert slice_pods(es) == {"chat-a": "10.0.0.1"}


@asynccontextmanager
async def _upstreams(port: int, *apps: Upstream) -> AsyncIterator[None]:
    """Each app on its own loopback address (127.0.0.1, .2, ...) at ``port``: one per pod, as pods have IPs."""
    servers, tasks = [], []
    for i, app in enumerate(apps, start=1):
        server = uvicorn.Server(uvicorn.Config(app, host=f"127.0.0.{i}", port=port, log_level="warning",
                                               lifespan="on", http="httptools", access_log=False))
        servers.append(server)
        tasks.append(asyncio.create_task(server.serve()))
    while not all(s.started for s in servers):
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks)


def _slice(port: int) -> dict[str, Any]:
    return {"metadata": {"name": "chat-x", "namespace": NS, "labels": {"kubernetes.io/service-name": "chat"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [f"127.0.0.{i}"], "conditions": {"ready": True},
                           "targetRef": {"kind": "Pod", "name": f"chat-{c}", "namespace": NS}}
                          for i, c in ((1, "a"), (2, "b"))]}


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await predicate():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.05)


async def test_adapter_requests_go_to_the_pods_that_hold_it(fake, gateway, free_port_factory) -> None:
    a, b = Upstream("a"), Upstream("b")
    port = free_port_factory()
    md = model_deployment("chat")
    md["spec"].update(lora={}, adapters=[{"name": "sql", "uri": "hf://acme/sql-lora"},
                                         {"name": "poems", "uri": "hf://acme/poems"}])
    md["status"] = {"adapters": [{"name": "sql", "ready": "1/2", "loaded": 1, "pods": ["chat-b"]},
                                 {"name": "poems", "ready": "0/2", "loaded": 0}]}
    await fake.put_object(MDS, md)
    await fake.put_object(SLICES, _slice(port))
    async with _upstreams(port, a, b):
        url, _ = await gateway(hold_timeout=0.5)
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            listed = {m["id"]: m for m in (await http.get("/v1/models")).json()["data"]}
            assert set(listed) == {"chat", "sql", "poems"}
            assert (listed["sql"]["parent"], listed["sql"]["root"]) == ("chat", "hf://acme/sql-lora")
            assert "parent" not in listed["chat"]
            for _ in range(4):
                r = await http.post("/v1/completions", json={"model": "sql", "prompt": "x"})
                assert r.status_code == 200 and r.json()["model"] == "b"
            assert [json.loads(body)["model"] for _, body in b.requests] == ["sql"] * 4 and a.requests == []
            # No ready pod holds poems (yet): held, then 503 saying where to look.
            r = await http.post("/v1/completions", json={"model": "poems", "prompt": "x"})
            assert r.status_code == 503 and "holds the adapter 'poems'" in r.json()["error"]["message"]
            metrics = (await http.get("/metrics")).text
            assert 'turnout_gateway_requests_total{code="200",deployment="chat",model="sql",namespace="models"} 4.0' \
                in metrics

            # The operator moved sql to pod a.
            def moved(obj: dict[str, Any]) -> dict[str, Any]:
                obj["status"]["adapters"][0]["pods"] = ["chat-a"]
                return obj
            await fake.modify(MDS, (NS, "chat"), moved, status_only=True)

            async def on_a() -> bool:
                r = await http.post("/v1/completions", json={"model": "sql", "prompt": "x"})
                return r.json()["model"] == "a"
            await _until(on_a)

            # Removed from the spec: gone from the list, and a 404 that names what is served.
            def removed(obj: dict[str, Any]) -> dict[str, Any]:
                obj["spec"]["adapters"] = [{"name": "poems", "uri": "hf://acme/poems"}]
                return obj
            await fake.modify(MDS, (NS, "chat"), removed)

            async def gone() -> bool:
                return "sql" not in {m["id"] for m in (await http.get("/v1/models")).json()["data"]}
            await _until(gone)
            r = await http.post("/v1/completions", json={"model": "sql", "prompt": "x"})
            assert r.status_code == 404
            assert r.json()["error"]["code"] == "model_not_found"
            assert "'chat'" in r.json()["error"]["message"] and "'poems'" in r.json()["error"]["message"]
