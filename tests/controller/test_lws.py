"""Multi-node plans as LeaderWorkerSets, against the API emulator (fakekube serves leaderworkersets)."""

from __future__ import annotations

import asyncio

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


async def _until(predicate, timeout: float, what: str) -> None:
    """Poll in this task: a task made while kopf runs is one of kopf's, cancelled when kopf stops."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_lws_watch_answering_404_restarts_the_watches_instead_of_ending_the_operator(fake, operator_run):
    # The LeaderWorkerSet CRD deleted while kopf watches it: its next watch request answers 404 and kopf stops on
    # it (and its teardown may wait on a stream that no cancellation reaches), while discovery may list the API a
    # moment longer. The operator starts kopf again without that watch instead of ending or hanging, and a
    # multi-node model is then rejected with why.
    for name in ("hgx-h100-1", "hgx-h100-2"):
        await fake.put_object(NODES, h100_node(name))
    await operator_run.start()
    assert operator_run.controller.features.leader_worker_set
    fake.fail("GET", "leaderworkersets", 404, times=1000)  # the list and watch of a deleted CRD
    fake.end_watches(LWS)
    await asyncio.sleep(1.0)
    del fake.resources["leaderworkerset.x-k8s.io/v1/leaderworkersets"]  # discovery follows a moment later
    await _until(lambda: not operator_run.controller.features.leader_worker_set, 60, "LWS no longer served")
    await fake.put_object(MDS, llama405_md())
    await _until(lambda: _status(fake).get("phase") == "Failed", 60, "rejected")
    assert "install LeaderWorkerSet" in cond(fake.get(MDS, NS, "llama-405b"), "Resolved")["message"]
    assert operator_run.running, "the operator ended on its LeaderWorkerSet watch's 404"
