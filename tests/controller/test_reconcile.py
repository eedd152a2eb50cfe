"""The operator against an in-memory API over HTTP: children, status, Events, following the world."""

from __future__ import annotations

from ctlharness import (
    DEPLOYMENTS,
    MDS,
    NODES,
    NS,
    SERVICES,
    cond,
    cpu_node,
    events_of,
    gguf_md,
    mark_rollout,
)


async def test_create_applies_children_with_owner_references_and_reports_status(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    await operator_run.start()
    md = await fake.put_object(MDS, gguf_md())
    uid = md["metadata"]["uid"]

    dep = await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "qwen-gguf"), what="the Deployment")
    svc = await fake.wait_for(lambda: fake.get(SERVICES, NS, "qwen-gguf"), what="the Service")
    for child in (dep, svc):
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref == {"apiVersion": "modelplane.io/v1alpha1", "kind": "ModelDeployment", "name": "qwen-gguf",
                       "uid": uid, "controller": True, "blockOwnerDeletion": True}
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "modelplane"
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert "llamacpp" in container["image"]
    assert dep["spec"]["replicas"] == 1

    status = (await fake.wait_for(lambda: (fake.get(MDS, NS, "qwen-gguf") or {}).get("status", {}).get("phase")
                                  == "Deploying" and fake.get(MDS, NS, "qwen-gguf")))["status"]
    assert status["engine"] == "llama.cpp"
    assert status["accelerator"] == "cpu"
    assert status["endpoint"] == "http://qwen-gguf.models.svc:8000/v1"
    assert status["observedGeneration"] == 1
    assert cond(fake.get(MDS, NS, "qwen-gguf"), "Resolved")["status"] == "True"
    assert cond(fake.get(MDS, NS, "qwen-gguf"), "Progressing")["reason"] == "RolloutInProgress"

    await mark_rollout(fake, "qwen-gguf", ready=1)
    ready = await fake.wait_for(lambda: (o := fake.get(MDS, NS, "qwen-gguf"))["status"]["phase"] == "Ready" and o)
    assert ready["status"]["readyReplicas"] == 1
    assert cond(ready, "Available")["status"] == "True"
    reasons = [e["reason"] for e in events_of(fake, "qwen-gguf")]
    assert "EngineSelected" in reasons and "RolloutStarted" in reasons
    await operator_run.stop()
