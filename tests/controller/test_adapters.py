"""LoRA adapters: placement and status (pure), and the operator loading them into running pods' shims."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from ctlharness import DEPLOYMENTS, MDS, NODES, NS, PODS, OperatorRun, add_pod, cpu_node, mark_rollout
from shimlora import LoraShim

from turnout.api import ModelDeploymentSpec
from turnout.config import OperatorConfig
from turnout.controller import adapters as ad
from turnout.controller.world import ADAPTERS_ANNOTATION, Container, ObjectCondition, Pod
from turnout.freeport import free_port

READY = (ObjectCondition("Ready", "True"),)


def _spec(adapters: list[tuple[str, str]], max_loaded: int = 4) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({
        "model": {"uri": "builtin://tiny-llama"}, "lora": {"maxLoaded": max_loaded},
        "adapters": [{"name": n, "uri": u} for n, u in adapters]})


def _pod(name: str, held: ad.Held | None = None, *, ready: bool = True, restarts: int = 0) -> Pod:
    return Pod(name=name, ip=f"10.0.0.{name[-1]}", conditions=READY if ready else (),
               containers=(Container("model-server", ready, restarts),),
               adapters=held.to_json() if held is not None else None)


def test_every_ready_pod_loads_every_adapter_and_keeps_what_it_holds() -> None:
    spec = _spec([("sql", "hf://o/sql"), ("poems", "hf://o/poems")])
    pods = [_pod("p1", ad.Held(0, {"sql": "hf://o/sql", "old": "hf://o/old"})), _pod("p2"), _pod("p3", ready=False)]
    work = {w.pod: w for w in ad.work(spec, pods)}
    assert set(work) == {"p1", "p2"}  # p3 is not ready: nothing to load into yet
    assert (work["p1"].unload, work["p1"].load) == (("old",), (("poems", "hf://o/poems"),))
    assert work["p2"].load == (("sql", "hf://o/sql"), ("poems", "hf://o/poems"))
    assert work["p2"].ip == "10.0.0.2"
    worker = Pod(name="p4", ip="10.0.0.4", conditions=READY, worker=True)  # a multi-node group's non-leader
    assert "p4" not in {w.pod for w in ad.work(spec, [*pods, worker])}
    assert (ad.status(spec, [*pods, worker]) or [])[0].ready == "1/2"


def test_a_changed_uri_reloads_and_a_restarted_pod_holds_nothing() -> None:
    spec = _spec([("sql", "hf://o/sql-v2")])
    (w,) = ad.work(spec, [_pod("p1", ad.Held(0, {"sql": "hf://o/sql"}))])
    assert (w.unload, w.load) == (("sql",), (("sql", "hf://o/sql-v2"),))
    # The record was written before the shim restarted: its engine holds nothing now.
    (w,) = ad.work(spec, [_pod("p1", ad.Held(0, {"sql": "hf://o/sql-v2"}), restarts=1)])
    assert (w.unload, w.load, w.held.restarts) == ((), (("sql", "hf://o/sql-v2"),), 1)


def test_more_adapters_than_places_spread_over_the_pods() -> None:
    spec = _spec([("a", "hf://o/a"), ("b", "hf://o/b"), ("c", "hf://o/c"), ("d", "hf://o/d")], max_loaded=2)
    work = ad.work(spec, [_pod("p1"), _pod("p2")])
    loads = {w.pod: [n for n, _ in w.load] for w in work}
    assert loads == {"p1": ["a", "b"], "p2": ["c", "d"]}


def test_a_failed_load_is_not_retried_and_status_says_where_and_why() -> None:
    spec = _spec([("sql", "hf://o/sql"), ("bad", "hf://o/missing")])
    held = ad.Held(0, {"sql": "hf://o/sql"}, {"bad": ("hf://o/missing", "400: cannot fetch hf://o/missing")})
    pods = [_pod("p1", held), _pod("p2", ad.Held(0, {"sql": "hf://o/sql"}))]
    work = ad.work(spec, pods)
    assert [(w.pod, w.load) for w in work] == [("p2", (("bad", "hf://o/missing"),))]
    sql, bad = ad.status(spec, pods) or []
    assert (sql.name, sql.ready, sql.loaded, sql.pods, sql.message) == ("sql", "2/2", 2, ["p1", "p2"], None)
    assert (bad.ready, bad.pods) == ("0/2", None)
    assert bad.message == "pod p1: 400: cannot fetch hf://o/missing"
    # A new uri is tried again.
    fixed = _spec([("sql", "hf://o/sql"), ("bad", "hf://o/found")])
    assert {w.pod for w in ad.work(fixed, pods)} == {"p1", "p2"}


def test_no_adapters_no_status_and_unreadable_records_count_as_empty() -> None:
    assert ad.status(_spec([]), [_pod("p1")]) is None
    assert ad.work(ModelDeploymentSpec.model_validate({"model": {"uri": "builtin://tiny-llama"}}), [_pod("p1")]) == ()
    broken = Pod(name="p1", ip="10.0.0.1", conditions=READY, adapters="{not json")
    assert ad.Held.of(broken) == ad.Held(0)
    (only,) = ad.status(_spec([("sql", "hf://o/sql")]), []) or []
    assert only.ready == "0/0" and "no ready replica" in str(only.message)


# ----- the operator against the fake API, with shims on 127.0.0.1 and 127.0.0.2 -------------------------------


@asynccontextmanager
async def _shims(port: int, *shims: LoraShim) -> AsyncIterator[None]:
    runners = []
    for i, shim in enumerate(shims, start=1):
        runner = web.AppRunner(shim.app)
        await runner.setup()
        await web.TCPSite(runner, f"127.0.0.{i}", port).start()
        runners.append(runner)
    try:
        yield
    finally:
        for runner in runners:
            await runner.cleanup()


def _lora_md(adapters: list[dict[str, str]]) -> dict[str, Any]:
    return {"apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "chat", "namespace": NS},
            "spec": {"model": {"uri": "builtin://tiny-llama"}, "replicas": 2, "lora": {"maxLoaded": 4},
                     "adapters": adapters}}


def _ready(ip: str) -> dict[str, Any]:
    return {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "model-server", "ready": True, "restartCount": 0,
                                   "state": {"running": {}}}]}


def _adapters_status(fake: Any) -> list[dict[str, Any]]:
    return ((fake.get(MDS, NS, "chat") or {}).get("status") or {}).get("adapters") or []


async def test_adapters_load_into_running_pods_without_touching_the_deployment(fake) -> None:
    port = free_port()
    # Pod b's shim holds sql already (as --lora-modules starts it): the operator records it, loads nothing.
    one = LoraShim(bad=("hf://acme/missing",))
    two = LoraShim(bad=("hf://acme/missing",), loaded={"sql": "hf://acme/sql-lora"})
    run = OperatorRun(fake, OperatorConfig(port=port))
    async with _shims(port, one, two):
        await fake.put_object(NODES, cpu_node())
        await run.start()
        try:
            await fake.put_object(MDS, _lora_md([]))
            dep = await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "chat"), what="the Deployment")
            template = json.dumps(dep["spec"]["template"], sort_keys=True)
            await add_pod(fake, dep, "chat-a", _ready("127.0.0.1"))
            await add_pod(fake, dep, "chat-b", _ready("127.0.0.2"))
            await mark_rollout(fake, "chat", ready=2)

            def edit(adapters: list[dict[str, str]]) -> Any:
                def fn(md: dict[str, Any]) -> dict[str, Any]:
                    md["spec"]["adapters"] = adapters
                    return md
                return fake.modify(MDS, (NS, "chat"), fn)

            await edit([{"name": "sql", "uri": "hf://acme/sql-lora"}, {"name": "bad", "uri": "hf://acme/missing"}])
            await fake.wait_for(lambda: [(a["name"], a["ready"]) for a in _adapters_status(fake)]
                                == [("sql", "2/2"), ("bad", "0/2")], what="status.adapters")
            assert one.loaded == two.loaded == {"sql": "hf://acme/sql-lora"}
            assert ("load", {"lora_name": "sql", "lora_path": "hf://acme/sql-lora"}) not in two.calls
            sql, bad = _adapters_status(fake)
            assert sql["pods"] == ["chat-a", "chat-b"]
            assert "pod chat-a: 400: cannot fetch hf://acme/missing" in bad["message"]
            record = json.loads(fake.get(PODS, NS, "chat-a")["metadata"]["annotations"][ADAPTERS_ANNOTATION])
            assert record["loaded"] == {"sql": "hf://acme/sql-lora"}
            # The failed load is not repeated on every reconcile.
            assert [c for c in one.calls if c[1].get("lora_name") == "bad"] == [
                ("load", {"lora_name": "bad", "lora_path": "hf://acme/missing"})]

            await edit([])
            await fake.wait_for(lambda: not one.loaded and not two.loaded, what="the unloads")
            await fake.wait_for(lambda: _adapters_status(fake) == [], what="status.adapters removed")
            after = fake.get(DEPLOYMENTS, NS, "chat")
            assert json.dumps(after["spec"]["template"], sort_keys=True) == template
            assert after["metadata"]["generation"] == dep["metadata"]["generation"]
        finally:
            await run.stop()


async def test_keyed_deployments_send_their_key_and_an_unreachable_or_busy_shim_is_retried(fake) -> None:
    port = free_port()
    shim = LoraShim(key="s3cret")
    shim.busy = 1  # once reachable, its first answer is 503: tried again, never recorded as failed
    run = OperatorRun(fake, OperatorConfig(port=port))
    await fake.put_object(NODES, cpu_node())
    await fake.put_object(("", "v1", "secrets"), {"metadata": {"name": "keys", "namespace": NS},
                                                   "data": {"api-key": "czNjcmV0"}})
    await run.start()
    try:
        md = _lora_md([{"name": "sql", "uri": "hf://acme/sql-lora"}])
        md["spec"]["replicas"] = 1
        md["spec"]["apiKeySecretRef"] = {"name": "keys"}
        await fake.put_object(MDS, md)
        dep = await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "chat"), what="the Deployment")
        await add_pod(fake, dep, "chat-a", _ready("127.0.0.1"))  # its shim is not listening yet
        await fake.wait_for(lambda: [a["ready"] for a in _adapters_status(fake)] == ["0/1"])
        async with _shims(port, shim):
            await fake.wait_for(lambda: [a["ready"] for a in _adapters_status(fake)] == ["1/1"], timeout=30,
                                what="the retry")
        assert shim.loaded == {"sql": "hf://acme/sql-lora"}
        assert [c[0] for c in shim.calls if c[0] == "load"] == ["load", "load"]
        assert "failed" not in json.loads(fake.get(PODS, NS, "chat-a")["metadata"]["annotations"][ADAPTERS_ANNOTATION])
    finally:
        await run.stop()
