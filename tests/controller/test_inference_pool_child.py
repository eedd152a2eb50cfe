"""--inference-pool against the API emulator (it serves inference.networking.k8s.io/v1 inferencepools)."""

from __future__ import annotations

from ctlharness import INFERENCE_POOLS, MDS, NODES, NS, SERVICES, OperatorRun, cpu_node, events_of, gguf_md

from turnout.controller import Options


async def test_a_pool_per_deployment_while_on_and_pruned_when_turned_off(fake):
    await fake.put_object(NODES, cpu_node())
    on = OperatorRun(fake, options=Options(all_namespaces=True, metrics_port=0, health_port=0, inference_pool=True))
    controller = await on.start()
    assert controller.pools_served
    md = await fake.put_object(MDS, gguf_md())
    pool = await fake.wait_for(lambda: fake.get(INFERENCE_POOLS, NS, "qwen-gguf"), what="the InferencePool")
    assert [r["uid"] for r in pool["metadata"]["ownerReferences"]] == [md["metadata"]["uid"]]
    service = fake.get(SERVICES, NS, "qwen-gguf")
    assert pool["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]
    await on.stop()

    off = OperatorRun(fake)  # the same cluster, the operator restarted without --inference-pool
    await off.start()
    await fake.wait_for(lambda: fake.get(INFERENCE_POOLS, NS, "qwen-gguf") is None, what="the pool pruned")
    assert fake.get(SERVICES, NS, "qwen-gguf") is not None
    await fake.wait_for(lambda: any(e["reason"] == "Pruned" and "InferencePool" in e["message"]
                                    for e in events_of(fake, "qwen-gguf")))
    await off.stop()


async def test_a_cluster_without_inference_pools_is_not_watched_warned_about_or_counted_as_errors(fake, caplog):
    # No Gateway API Inference Extension installed (nor LeaderWorkerSet): kopf must not be asked to watch them
    # (it would warn "Unresolved resources cannot be served"), and API discovery must not count an error.
    del fake.resources["inference.networking.k8s.io/v1/inferencepools"]
    del fake.resources["leaderworkerset.x-k8s.io/v1/leaderworkersets"]
    await fake.put_object(NODES, cpu_node())
    run = OperatorRun(fake)
    since = len(fake.requests)
    controller = await run.start()
    await fake.put_object(MDS, gguf_md())
    await fake.wait_for(lambda: fake.get(SERVICES, NS, "qwen-gguf"), what="the children")
    await fake.wait_for(lambda: len(controller.queue) == 0, what="an idle work queue")
    assert not controller.pools_served and not controller.features.leader_worker_set
    asked = {str(r.url.path) for r in list(fake.requests)[since:]}
    assert "/apis" in asked
    assert not {"/apis/inference.networking.k8s.io/v1", "/apis/leaderworkerset.x-k8s.io/v1"} & asked
    assert not [r for r in list(fake.requests)[since:]
                if r.resource is not None and r.resource.plural in ("inferencepools", "leaderworkersets")]
    errors = [s.value for m in controller.metrics.registry.collect() for s in m.samples
              if s.name == "turnout_operator_api_errors_total"]
    assert sum(errors) == 0
    assert "Unresolved resources" not in caplog.text
    await run.stop()


async def test_inference_pool_on_without_the_crd_says_so_once_and_renders_none(fake, caplog):
    del fake.resources["inference.networking.k8s.io/v1/inferencepools"]
    await fake.put_object(NODES, cpu_node())
    run = OperatorRun(fake, options=Options(all_namespaces=True, metrics_port=0, health_port=0, inference_pool=True))
    controller = await run.start()
    await fake.put_object(MDS, gguf_md())
    await fake.wait_for(lambda: fake.get(SERVICES, NS, "qwen-gguf"), what="the children")
    await fake.wait_for(lambda: len(controller.queue) == 0, what="an idle work queue")
    assert fake.objects(INFERENCE_POOLS) == []
    assert caplog.text.count("inferencepools are not served") == 1
    assert "Unresolved resources" not in caplog.text
    await run.stop()
