"""Multi-node plans as LeaderWorkerSets, against the API emulator (fakekube serves leaderworkersets)."""

from __future__ import annotations

from ctlharness import (
    DEPLOYMENTS,
    LWS,
    MDS,
    NODES,
    NS,
    SERVICES,
    cond,
    h100_node,
    llama405_md,
    mark_lws_rollout,
    mark_rollout,
)


def _status(fake, name="llama-405b"):
    return (fake.get(MDS, NS, name) or {}).get("status") or {}


async def test_multi_node_plan_renders_a_leader_worker_set_ready_from_its_status(fake, operator_run):
    for name in ("hgx-h100-1", "hgx-h100-2"):
        await fake.put_object(NODES, h100_node(name))
    await operator_run.start()
    assert operator_run.controller.features.leader_worker_set
    md = await fake.put_object(MDS, llama405_md())
    lws = await fake.wait_for(lambda: fake.get(LWS, NS, "llama-405b"), what="the LeaderWorkerSet")
    assert fake.get(DEPLOYMENTS, NS, "llama-405b") is None
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert [r["uid"] for r in lws["metadata"]["ownerReferences"]] == [md["metadata"]["uid"]]
    service = await fake.wait_for(lambda: fake.get(SERVICES, NS, "llama-405b"))
    leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["metadata"]["labels"]
    worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["metadata"]["labels"]
    selected = service["spec"]["selector"].items()
    assert selected <= leader.items() and not selected <= worker.items()  # the leaders serve the API
    await fake.wait_for(lambda: _status(fake).get("phase") == "Deploying")
    status = _status(fake)
    assert (status["tensorParallelSize"], status["pipelineParallelSize"], status["nodesPerReplica"],
            status["devicesPerNode"]) == (8, 2, 2, 8)

    await mark_lws_rollout(fake, "llama-405b", ready=0)
    await fake.wait_for(lambda: cond(fake.get(MDS, NS, "llama-405b"), "Progressing").get("status") == "True")
    assert _status(fake)["phase"] == "Deploying"
    await mark_lws_rollout(fake, "llama-405b", ready=1)
    await fake.wait_for(lambda: _status(fake).get("phase") == "Ready", what="Ready from the LWS status")
    assert cond(fake.get(MDS, NS, "llama-405b"), "Available")["status"] == "True"

    # Scaling changes the LeaderWorkerSet's replicas (a group per replica), and its status decides again.
    await fake.modify(MDS, (NS, "llama-405b"), lambda o: {**o, "spec": {**o["spec"], "replicas": 2}})
    await fake.wait_for(lambda: fake.get(LWS, NS, "llama-405b")["spec"]["replicas"] == 2)
    await fake.wait_for(lambda: _status(fake).get("phase") == "Deploying")


async def test_switching_to_a_model_of_one_node_prunes_the_lws_and_applies_a_deployment(fake, operator_run):
    for name in ("hgx-h100-1", "hgx-h100-2"):
        await fake.put_object(NODES, h100_node(name))
    await operator_run.start()
    await fake.put_object(MDS, llama405_md())
    await fake.wait_for(lambda: fake.get(LWS, NS, "llama-405b"))
    small = {"name": "qwen2.5-instruct", "size": 7, "format": "awq", "quantization": "Int4"}
    await fake.modify(MDS, (NS, "llama-405b"), lambda o: {**o, "spec": {**o["spec"], "model": small}})
    await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "llama-405b") and fake.get(LWS, NS, "llama-405b") is None,
                        what="the Deployment applied and the LWS pruned")
    await mark_rollout(fake, "llama-405b", ready=1)
    await fake.wait_for(lambda: _status(fake).get("phase") == "Ready")
    status = _status(fake)
    assert status["nodesPerReplica"] == 1
    # And back: the Deployment goes, a LeaderWorkerSet comes.
    big = llama405_md()["spec"]["model"]
    await fake.modify(MDS, (NS, "llama-405b"), lambda o: {**o, "spec": {**o["spec"], "model": big}})
    await fake.wait_for(lambda: fake.get(LWS, NS, "llama-405b") and fake.get(DEPLOYMENTS, NS, "llama-405b") is None)
    await fake.wait_for(lambda: _status(fake).get("nodesPerReplica") == 2)


async def test_lws_removed_since_discovery_rejects_the_plan_instead_of_failing_on_the_404(fake, operator_run):
    # Discovery runs once a minute: the LeaderWorkerSet CRD deleted after it is still believed served, and the
    # apply answers 404. The operator asks discovery again and plans for the cluster as it is now.
    for name in ("hgx-h100-1", "hgx-h100-2"):
        await fake.put_object(NODES, h100_node(name))
    await operator_run.start()
    assert operator_run.controller.features.leader_worker_set
    del fake.resources["leaderworkerset.x-k8s.io/v1/leaderworkersets"]  # gone from discovery
    fake.fail("PATCH", "leaderworkersets", 404, times=1)  # and its apply answers 404
    await fake.put_object(MDS, llama405_md())
    await fake.wait_for(lambda: _status(fake).get("phase") == "Failed", what="rejected")
    resolved = cond(fake.get(MDS, NS, "llama-405b"), "Resolved")
    assert resolved["reason"] == "Rejected"
    assert "install LeaderWorkerSet" in resolved["message"], resolved["message"]
    assert not operator_run.controller.features.leader_worker_set
    assert cond(fake.get(MDS, NS, "llama-405b"), "Degraded").get("reason") != "ApplyFailed"
