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
