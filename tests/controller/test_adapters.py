"""LoRA adapters: placement and status (pure), and the operator loading them into running pods' shims."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from ctlharness import DEPLOYMENTS, MDS, NODES, NS, PODS, MetricsServer, OperatorRun, add_pod, cpu_node, mark_rollout
from shimlora import LoraShim

from turnout.api import ModelDeploymentSpec
from turnout.config import OperatorConfig
from turnout.controller import Options
from turnout.controller import adapters as ad
from turnout.controller.adapterdemand import DemandBook, DemandLoop
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


# ----- placement under load (pure) --------------------------------------------------------------------------

ABC = [("a", "hf://o/a"), ("b", "hf://o/b"), ("c", "hf://o/c")]


def _held(*names: str, used: dict[str, float] | None = None) -> ad.Held:
    return ad.Held(0, {n: f"hf://o/{n}" for n in names}, used=used or {})


def _moves(work: tuple[ad.PodWork, ...]) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    return {w.pod: (w.unload, tuple(n for n, _ in w.load)) for w in work}


def test_without_demand_data_or_demand_the_static_placement_stays() -> None:
    spec = _spec(ABC, max_loaded=1)
    pods = [_pod("p1", _held("a")), _pod("p2", _held("b"))]
    assert ad.work(spec, pods) == ad.work(spec, pods, ad.Demand()) == ()
    # c has requests in flight (somewhere else?) but none waiting and no holder: not a reason to evict
    assert ad.work(spec, pods, ad.Demand({"c": ad.Load(in_flight=1)})) == ()


def test_a_waiting_adapter_with_full_pods_evicts_the_least_recently_used_idle_one() -> None:
    spec = _spec(ABC, max_loaded=1)
    pods = [_pod("p1", _held("a")), _pod("p2", _held("b"))]
    demand = ad.Demand({"c": ad.Load(waiting=2)}, last_used={"a": 200.0, "b": 100.0, "c": 300.0})
    (w,) = ad.work(spec, pods, demand)
    assert (w.pod, w.unload, w.load, w.evicted, w.demanded) == ("p2", ("b",), (("c", "hf://o/c"),), ("b",), ("c",))
    assert w.used == {"c": 300.0}  # recorded with what p2 holds afterwards
    # b is busy now: a (idle, used later than b was) goes instead; never one with requests for one with fewer
    busy_b = ad.Demand({"c": ad.Load(waiting=2), "b": ad.Load(in_flight=1)}, last_used=demand.last_used)
    assert _moves(ad.work(spec, pods, busy_b)) == {"p1": (("a",), ("c",))}
    # every place busy: c waits (the gateway answers 503 after its hold timeout)
    both = ad.Demand({"c": ad.Load(waiting=5), "a": ad.Load(in_flight=1), "b": ad.Load(in_flight=1)})
    assert ad.work(spec, pods, both) == ()


def test_a_new_leader_reads_last_used_from_the_pods_records() -> None:
    spec = _spec(ABC, max_loaded=1)
    pods = [_pod("p1", _held("a", used={"a": 100.0})), _pod("p2", _held("b", used={"b": 900.0}))]
    (w,) = ad.work(spec, pods, ad.Demand({"c": ad.Load(waiting=1)}))  # the loop's memory is empty
    assert (w.pod, w.evicted) == ("p1", ("a",))


def test_a_waiting_adapter_takes_a_free_place_first() -> None:
    spec = _spec(ABC, max_loaded=2)
    pods = [_pod("p1", _held("a", "b")), _pod("p2", _held("a", "b"))]
    # static placement fills no place (none is free); c waits, and p1/p2 are full: the LRU idle one goes
    (w,) = ad.work(spec, pods, ad.Demand({"c": ad.Load(waiting=1)}, last_used={"a": 5.0, "b": 1.0}))
    assert (w.pod, w.unload, w.demanded) == ("p1", ("b",), ("c",))
    roomy = [_pod("p1", _held("a", "b")), _pod("p2", _held("a"))]
    assert _moves(ad.work(spec, roomy, ad.Demand({"c": ad.Load(waiting=1)}))) == {"p2": ((), ("c",))}


def test_a_busy_adapter_spreads_to_one_more_replica_per_decision_and_stops_at_the_threshold() -> None:
    spec = ModelDeploymentSpec.model_validate({
        "model": {"uri": "builtin://tiny-llama"}, "lora": {"maxLoaded": 1, "spreadInFlightPerReplica": 4},
        "adapters": [{"name": n, "uri": u} for n, u in ABC]})
    pods = [_pod("p1", _held("a")), _pod("p2", _held("b")), _pod("p3", _held("c"))]
    hot = ad.Demand({"a": ad.Load(in_flight=9)}, last_used={"a": 50.0, "b": 10.0, "c": 20.0})
    (w,) = ad.work(spec, pods, hot)
    assert (w.pod, w.evicted, w.demanded) == ("p2", ("b",), ("a",))  # one more replica: b was used longest ago
    # once p2 holds it: 9 in flight over 2 holders is 4.5, still at/above 4: one more
    pods = [_pod("p1", _held("a")), _pod("p2", _held("a")), _pod("p3", _held("c"))]
    assert _moves(ad.work(spec, pods, hot)) == {"p3": (("c",), ("a",))}
    # 7 over 2 is below 4: it stays on two
    assert ad.work(spec, pods, ad.Demand({"a": ad.Load(in_flight=7)}, last_used=hot.last_used)) == ()


def test_bounded_one_demand_load_per_pod_and_no_thrash() -> None:
    four = [*ABC, ("d", "hf://o/d")]
    spec = _spec(four, max_loaded=2)
    pods = [_pod("p1", _held("a", "b"))]
    demand = ad.Demand({"c": ad.Load(waiting=3), "d": ad.Load(waiting=1)}, last_used={"a": 1.0, "b": 2.0})
    (w,) = ad.work(spec, pods, demand)
    assert (w.unload, w.demanded) == (("a",), ("c",))  # one per pod: d waits for the next decision
    # the next decision, c loaded and serving: b (idle) makes room for d, c (loaded for demand, busy) stays
    after = [_pod("p1", ad.Held(0, {"b": "hf://o/b", "c": "hf://o/c"}, used={"c": 10.0}))]
    demand = ad.Demand({"c": ad.Load(in_flight=3), "d": ad.Load(waiting=1)}, last_used={"a": 1.0, "b": 2.0})
    (w,) = ad.work(spec, after, demand)
    assert (w.unload, w.demanded) == (("b",), ("d",))
    # nothing waits and nothing is busy past the threshold: whatever is held stays (no churn back)
    settled = [_pod("p1", ad.Held(0, {"c": "hf://o/c", "d": "hf://o/d"}))]
    assert ad.work(spec, settled, ad.Demand({"a": ad.Load(in_flight=1)})) == ()
    # a pod never holds more than maxLoaded
    for w in ad.work(spec, [_pod("p1"), _pod("p2")], ad.Demand({n: ad.Load(waiting=1) for n in "abcd"})):
        assert len(w.load) <= 2


def test_the_used_times_round_trip_through_the_record() -> None:
    held = ad.Held(0, {"a": "hf://o/a"}, used={"a": 1765.25})
    assert ad.Held.of(_pod("p1", held)) == held
    assert '"used":{"a":1765.25}' in held.to_json()
    # exactly, as time.time() gives it: the loader tells its own record from an older one by equality
    now = ad.Held(0, {"a": "hf://o/a"}, used={"a": time.time() + 1e-7})
    assert ad.Held.of(_pod("p1", now)) == now


def test_the_demand_book_keeps_last_used_and_drops_a_missing_or_stale_sample() -> None:
    book = DemandBook()
    key = (NS, "chat")
    far = time.monotonic() + 60
    demand = book.record(key, {"a": ad.Load(in_flight=1), "b": ad.Load()}, now=100.0, until=far)
    assert demand == ad.Demand({"a": ad.Load(in_flight=1), "b": ad.Load()}, {"a": 100.0})
    assert book.record(key, {}, now=200.0, until=far) == ad.Demand({}, {"a": 100.0})  # idle: a stays used at 100
    assert book.record(key, None, now=300.0, until=far) is None  # no gateway answered: static placement
    book.record(key, {"b": ad.Load(waiting=1)}, now=400.0, until=time.monotonic() - 1)
    assert book.of(key) is None  # stale
    book.forget(key)
    assert book.record(key, {}, now=500.0, until=far) == ad.Demand({}, {})


async def test_the_demand_loop_asks_for_a_reconcile_only_when_the_load_moves_an_adapter() -> None:
    body = {"metadata": {"namespace": NS, "name": "chat"},
            "spec": {"model": {"uri": "builtin://tiny-llama"}, "lora": {"maxLoaded": 1},
                     "adapters": [{"name": n, "uri": f"hf://o/{n}"} for n in "abc"]}}
    plain = {"metadata": {"namespace": NS, "name": "plain"}, "spec": {"model": {"uri": "builtin://tiny-llama"}}}
    pods = [_pod("p1", _held("a")), _pod("p2", _held("b"))]
    models: dict[tuple[str, str, str], tuple[float, float]] | None = {(NS, "chat", "chat"): (3.0, 0.0)}
    queued: list[tuple[str, str]] = []

    async def scrape() -> dict[tuple[str, str, str], tuple[float, float]] | None:
        return models

    loop = DemandLoop(scrape, DemandBook(), interval=1.0, deployments=lambda: [body, plain],
                      pods=lambda ns, name: pods if name == "chat" else [], reconcile=queued.append)
    assert await loop.tick() == []  # only the base model has requests
    models = {(NS, "chat", "c"): (0.0, 2.0), (NS, "plain", "plain"): (5.0, 0.0)}
    assert await loop.tick() == [(NS, "chat")] == queued
    demand = loop.book.of((NS, "chat"))
    assert demand is not None and demand.of("c") == ad.Load(0.0, 2.0) and "c" in demand.last_used
    models = None  # no gateway answered
    assert await loop.tick() == [] and loop.book.of((NS, "chat")) is None


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


def _gateway_text(namespace: str, deployment: str, load: dict[str, tuple[float, float]]) -> str:
    """What the turnout gateway exports: per model (an adapter is one), in flight and held waiting."""
    lines = ["# TYPE turnout_gateway_in_flight gauge"]
    lines += [f'turnout_gateway_in_flight{{namespace="{namespace}",deployment="{deployment}",model="{m}"}} {f}'
              for m, (f, _) in load.items()]
    lines += ["# TYPE turnout_gateway_queue_length gauge"]
    lines += [f'turnout_gateway_queue_length{{namespace="{namespace}",deployment="{deployment}",model="{m}"}} {q}'
              for m, (_, q) in load.items()]
    return "\n".join(lines) + "\n"


async def test_requests_waiting_for_an_unheld_adapter_make_the_operator_unload_the_lru_one_and_load_it(fake) -> None:
    """3 adapters, maxLoaded 1, 2 pods: c is held nowhere; requests wait for it at the gateway while a is busy:
    the operator unloads b (idle) from its pod and loads c there, and moves nothing more once c serves."""
    port = free_port()
    one, two = LoraShim(), LoraShim()
    gateway = await MetricsServer().start()
    gateway.text = _gateway_text(NS, "chat", {"chat": (0, 0)})
    options = Options(all_namespaces=True, metrics_port=0, health_port=0, autoscale_interval=0.2,
                      scrape_timeout=1.0, gateway_metrics_urls=[gateway.url])
    run = OperatorRun(fake, OperatorConfig(port=port), options)
    async with _shims(port, one, two):
        await fake.put_object(NODES, cpu_node())
        controller = await run.start()
        try:
            md = _lora_md([{"name": n, "uri": f"hf://acme/{n}"} for n in "abc"])
            md["spec"]["lora"]["maxLoaded"] = 1
            await fake.put_object(MDS, md)
            dep = await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "chat"), what="the Deployment")
            await add_pod(fake, dep, "chat-a", _ready("127.0.0.1"))
            await add_pod(fake, dep, "chat-b", _ready("127.0.0.2"))
            await mark_rollout(fake, "chat", ready=2)
            # Static placement: a place each, the spec's order.
            await fake.wait_for(lambda: [(a["name"], a.get("pods")) for a in _adapters_status(fake)]
                                == [("a", ["chat-a"]), ("b", ["chat-b"]), ("c", None)], what="a and b placed")
            await asyncio.sleep(1.0)  # idle gateways for a few ticks: nothing moves
            assert one.loaded == {"a": "hf://acme/a"} and two.loaded == {"b": "hf://acme/b"}

            gateway.text = _gateway_text(NS, "chat", {"a": (2, 0), "c": (0, 3)})
            await fake.wait_for(lambda: [(a["name"], a.get("pods")) for a in _adapters_status(fake)]
                                == [("a", ["chat-a"]), ("b", None), ("c", ["chat-b"])], timeout=30,
                                what="c loaded in b's place")
            assert [c for c in two.calls if c[0] != "models"] == [
                ("load", {"lora_name": "b", "lora_path": "hf://acme/b"}), ("unload", {"lora_name": "b"}),
                ("load", {"lora_name": "c", "lora_path": "hf://acme/c"})]
            assert not [c for c in one.calls if c[0] == "unload"]  # a was busy: never unloaded
            record = json.loads(fake.get(PODS, NS, "chat-b")["metadata"]["annotations"][ADAPTERS_ANNOTATION])
            assert record["loaded"] == {"c": "hf://acme/c"} and record["used"]["c"] > 0  # "last used", kept
            assert controller.metrics.adapter_loads.labels(reason="demand")._value.get() == 1
            assert controller.metrics.adapter_unloads.labels(reason="demand")._value.get() == 1
            assert controller.metrics.adapter_loads.labels(reason="spec")._value.get() == 2

            # c is served now (in flight, none waiting), b has no request: no thrash back
            gateway.text = _gateway_text(NS, "chat", {"a": (1, 0), "c": (1, 0)})
            calls = (len(one.calls), len(two.calls))
            await asyncio.sleep(1.5)
            assert [c for c in one.calls[calls[0]:] + two.calls[calls[1]:] if c[0] != "models"] == []
            assert gateway.scrapes > 5

            # Now b is asked for and c went idle: c (used more recently than b, but idle) makes room on chat-b.
            gateway.text = _gateway_text(NS, "chat", {"a": (1, 0), "b": (0, 1)})
            await fake.wait_for(lambda: [(a["name"], a.get("pods")) for a in _adapters_status(fake)]
                                == [("a", ["chat-a"]), ("b", ["chat-b"]), ("c", None)], timeout=30,
                                what="b back in c's place")
            assert controller.metrics.adapter_loads.labels(reason="demand")._value.get() == 2
        finally:
            await run.stop()
            await gateway.stop()
