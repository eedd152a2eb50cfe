"""Pruning children the spec no longer asks for, and a rejected update that leaves the last good plan serving."""

from __future__ import annotations

from typing import Any

from ctlharness import (
    CLAIMS,
    DEPLOYMENTS,
    MDS,
    NODES,
    NS,
    SERVICES,
    awq_md,
    cond,
    cpu_node,
    events_of,
    gguf_md,
    gpu_node,
    mark_rollout,
    writes,
)

from kubeconfigs import credentials_for
from turnout.kube import KubeClient

LABELS = {"app.kubernetes.io/managed-by": "turnout", "app.kubernetes.io/component": "model-server",
          "app.kubernetes.io/name": "turnout"}


def _md(fake, name: str) -> dict[str, Any]:
    return fake.get(MDS, NS, name) or {}


def _phase(fake, name: str) -> str | None:
    return (_md(fake, name).get("status") or {}).get("phase")


def _writes(controller, kind: str) -> float:
    return next((s.value for m in controller.metrics.registry.collect() for s in m.samples
                 if s.name == "turnout_operator_writes_total" and s.labels["kind"] == kind), 0.0)


def _reconciles(controller) -> float:
    return sum(s.value for m in controller.metrics.registry.collect() for s in m.samples
               if s.name == "turnout_operator_reconciles_total")


def _owner(md: dict[str, Any], uid: str | None = None) -> list[dict[str, Any]]:
    return [{"apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment", "name": md["metadata"]["name"],
             "uid": uid or md["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]


def _service(name: str, instance: str, owners: list[dict[str, Any]] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "labels": {**LABELS, "turnout.dev/deployment": instance}}
    if owners is not None:
        meta["ownerReferences"] = owners
    return {"metadata": meta, "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 8000}]}}


def _deployment(name: str, instance: str, owners: list[dict[str, Any]]) -> dict[str, Any]:
    labels = {**LABELS, "turnout.dev/deployment": instance}
    return {"metadata": {"name": name, "namespace": NS, "labels": labels, "ownerReferences": owners},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"turnout.dev/deployment": instance}},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": []}}}}


async def test_removing_the_cache_deletes_the_claim_after_the_deployment_stops_mounting_it(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    controller = await operator_run.start()
    md = gguf_md()
    md["spec"]["cache"] = {"size": "10Gi"}
    await fake.put_object(MDS, md)
    claim = await fake.wait_for(lambda: fake.get(CLAIMS, NS, "qwen-gguf-cache"), what="the cache claim")
    await fake.wait_for(lambda: _phase(fake, "qwen-gguf") == "Deploying")
    service_uid = fake.get(SERVICES, NS, "qwen-gguf")["metadata"]["uid"]
    deployment_uid = fake.get(DEPLOYMENTS, NS, "qwen-gguf")["metadata"]["uid"]

    await fake.modify(MDS, (NS, "qwen-gguf"), lambda o: {**o, "spec": {k: v for k, v in o["spec"].items()
                                                                       if k != "cache"}})
    await fake.wait_for(lambda: fake.get(CLAIMS, NS, "qwen-gguf-cache") is None, what="the claim pruned")
    dep = fake.get(DEPLOYMENTS, NS, "qwen-gguf")
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model-cache"] == {"name": "model-cache", "emptyDir": {}}
    # The Deployment was updated in place, the Service left alone: only the claim went.
    assert dep["metadata"]["uid"] == deployment_uid
    assert fake.get(SERVICES, NS, "qwen-gguf")["metadata"]["uid"] == service_uid
    (delete,) = fake.deletes
    assert delete["resource"] == CLAIMS and delete["key"] == (NS, "qwen-gguf-cache")
    assert delete["options"]["preconditions"] == {"uid": claim["metadata"]["uid"]}
    assert delete["options"]["propagationPolicy"] == "Background"
    pruned = await fake.wait_for(lambda: [e for e in events_of(fake, "qwen-gguf") if e["reason"] == "Pruned"],
                                 what="a Pruned event")
    assert "PersistentVolumeClaim qwen-gguf-cache" in pruned[0]["message"]
    assert _writes(controller, "delete") == 1
    await fake.wait_for(lambda: _md(fake, "qwen-gguf")["status"].get("observedGeneration") == 2)
    await operator_run.stop()


async def test_only_children_it_owns_are_pruned(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    await operator_run.start()
    md = await fake.put_object(MDS, gguf_md())
    other = await fake.put_object(MDS, gguf_md("other"))
    await fake.wait_for(lambda: _phase(fake, "qwen-gguf") == "Deploying" and _phase(fake, "other") == "Deploying")
    strangers = [
        # Labelled as ours, but nobody owns it (made by hand, or orphaned on purpose).
        (SERVICES, _service("qwen-gguf-by-hand", "qwen-gguf", None)),
        # Owned by an earlier ModelDeployment of the same name (another uid).
        (SERVICES, _service("qwen-gguf-earlier", "qwen-gguf", _owner(md, uid="0f0e0d0c-old-uid"))),
        # Owned by another ModelDeployment but carrying this one's instance label.
        (DEPLOYMENTS, _deployment("qwen-gguf-other", "qwen-gguf", _owner(other))),
        # Owned by this one but another instance's label: not this deployment's child by its label.
        (SERVICES, _service("other-label", "other", _owner(md))),
    ]
    for res, obj in strangers:
        await fake.put_object(res, obj)
    # One that is this deployment's own: it goes, which shows the pruning ran past the others.
    await fake.put_object(SERVICES, _service("qwen-gguf-stale", "qwen-gguf", _owner(md)))
    await fake.wait_for(lambda: fake.get(SERVICES, NS, "qwen-gguf-stale") is None, what="the stale Service pruned")
    await fake.wait_for(lambda: fake.get(SERVICES, NS, "qwen-gguf") and fake.get(DEPLOYMENTS, NS, "other"))
    for res, obj in strangers:
        assert fake.get(res, NS, obj["metadata"]["name"]) is not None, obj["metadata"]["name"]
    assert [(d["resource"], d["key"][1]) for d in fake.deletes] == [(SERVICES, "qwen-gguf-stale")]
    await operator_run.stop()


async def test_an_engine_change_updates_in_place_and_prunes_what_the_new_plan_does_not_use(fake, operator_run):
    await fake.put_object(NODES, gpu_node())
    await operator_run.start()
    md = await fake.put_object(MDS, awq_md())  # vLLM on the GPU, with a cache claim
    await fake.wait_for(lambda: _phase(fake, "qwen-awq") == "Deploying" and fake.get(CLAIMS, NS, "qwen-awq-cache"))
    before = fake.get(DEPLOYMENTS, NS, "qwen-awq")
    assert "vllm" in before["spec"]["template"]["spec"]["containers"][0]["image"]
    # A Deployment under a name this plan does not render (as an earlier plan or operator version left it).
    await fake.put_object(DEPLOYMENTS, _deployment("qwen-awq-vllm", "qwen-awq", _owner(md)))
    await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "qwen-awq-vllm") is None, what="the old Deployment pruned")

    def to_sglang(o: dict[str, Any]) -> dict[str, Any]:
        spec = {k: v for k, v in o["spec"].items() if k != "cache"}
        return {**o, "spec": {**spec, "engine": "sglang"}}

    await fake.modify(MDS, (NS, "qwen-awq"), to_sglang)
    status = (await fake.wait_for(lambda: _md(fake, "qwen-awq").get("status", {}).get("engine") == "sglang"
                                  and _md(fake, "qwen-awq")))["status"]
    assert status["observedGeneration"] == 2
    await fake.wait_for(lambda: fake.get(CLAIMS, NS, "qwen-awq-cache") is None, what="the claim pruned")
    after = fake.get(DEPLOYMENTS, NS, "qwen-awq")
    assert "sglang" in after["spec"]["template"]["spec"]["containers"][0]["image"]
    assert after["metadata"]["uid"] == before["metadata"]["uid"]  # rolled, not deleted and re-created
    assert sorted((d["resource"][2], d["key"][1]) for d in fake.deletes) == [
        ("deployments", "qwen-awq-vllm"), ("persistentvolumeclaims", "qwen-awq-cache")]
    await operator_run.stop()


async def test_a_rejected_update_keeps_the_previous_plan_serving_and_says_so_then_a_fix_recovers(
    fake, operator_run
):
    await fake.put_object(NODES, cpu_node())
    controller = await operator_run.start()
    await fake.put_object(MDS, gguf_md())
    await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "qwen-gguf"))
    await mark_rollout(fake, "qwen-gguf", ready=1)
    ready = await fake.wait_for(lambda: _phase(fake, "qwen-gguf") == "Ready" and _md(fake, "qwen-gguf"))
    children = {res: fake.get(res, NS, "qwen-gguf")["metadata"]["resourceVersion"] for res in (DEPLOYMENTS, SERVICES)}

    # No NVIDIA node: no engine can serve the new spec.
    await fake.modify(MDS, (NS, "qwen-gguf"),
                      lambda o: {**o, "spec": {**o["spec"], "accelerator": {"type": "nvidia"}}})
    held = await fake.wait_for(lambda: (m := _md(fake, "qwen-gguf"))["status"].get("observedGeneration") == 2
                               and m, what="generation 2 reconciled")
    status = held["status"]
    assert status["phase"] == "Degraded"
    resolved = cond(held, "Resolved")
    assert (resolved["status"], resolved["reason"]) == ("False", "Rejected")
    assert "nvidia" in resolved["message"]
    assert {r["engine"] for r in status["rejected"]} == {"vllm", "sglang", "llama.cpp", "transformers", "mlx"}
    assert all(r["reason"] for r in status["rejected"])
    # What serves is still reported: the previous engine, image and endpoint.
    for key in ("engine", "accelerator", "image", "endpoint", "modelUri", "selector"):
        assert status[key] == ready["status"][key], key
    assert (cond(held, "Available")["status"], cond(held, "Available")["reason"]) == ("True", "ReplicasReady")
    assert cond(held, "Progressing")["reason"] == "ServingPreviousPlan"
    degraded = cond(held, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ServingPreviousPlan")
    assert "generation 2" in degraded["message"] and "llama.cpp on cpu" in degraded["message"]
    # The children were not touched.
    assert {res: fake.get(res, NS, "qwen-gguf")["metadata"]["resourceVersion"]
            for res in (DEPLOYMENTS, SERVICES)} == children
    assert fake.deletes == []
    await fake.wait_for(lambda: {("Warning", "Rejected"), ("Warning", "ServingPreviousPlan")}
                        <= {(e["type"], e["reason"]) for e in events_of(fake, "qwen-gguf")},
                        what="Rejected and ServingPreviousPlan warnings")

    # A restarted operator tells the same story: it writes nothing.
    await operator_run.stop()
    since = len(fake.requests)
    controller = await operator_run.start()
    await fake.wait_for(lambda: _reconciles(controller) >= 1 and len(controller.queue) == 0,
                        what="the resumed reconcile")
    assert writes(fake, since) == []

    # The world moving (a pod of the old plan going unready) keeps the same story, with the new count.
    await mark_rollout(fake, "qwen-gguf", ready=0)
    unready = await fake.wait_for(lambda: cond(m := _md(fake, "qwen-gguf"), "Available")["status"] == "False" and m,
                                  what="Available False")
    assert cond(unready, "Degraded")["reason"] == "ServingPreviousPlan"
    assert unready["status"]["engine"] == "llama.cpp"
    serving_events = [e for e in events_of(fake, "qwen-gguf") if e["reason"] == "ServingPreviousPlan"]
    assert len(serving_events) == 1
    await mark_rollout(fake, "qwen-gguf", ready=1)

    # Fixing the spec recovers: the same plan again, nothing to roll out.
    await fake.modify(MDS, (NS, "qwen-gguf"),
                      lambda o: {**o, "spec": {k: v for k, v in o["spec"].items() if k != "accelerator"}})
    fixed = await fake.wait_for(lambda: (m := _md(fake, "qwen-gguf"))["status"].get("observedGeneration") == 3
                                and m["status"]["phase"] == "Ready" and m, what="Ready at generation 3")
    assert cond(fixed, "Resolved")["status"] == "True"
    assert cond(fixed, "Degraded")["status"] == "False"
    assert all(r["engine"] != "llama.cpp" for r in fixed["status"].get("rejected") or [])
    await fake.wait_for(lambda: "Recovered" in [e["reason"] for e in events_of(fake, "qwen-gguf")],
                        what="a Recovered event")
    assert fake.get(DEPLOYMENTS, NS, "qwen-gguf")["metadata"]["generation"] == 1  # no new template
    assert _writes(controller, "delete") == 0
    assert fake.deletes == []
    await operator_run.stop()


async def test_a_rejected_first_spec_without_children_is_a_plain_failure(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    await operator_run.start()
    await fake.put_object(MDS, gguf_md(accelerator="nvidia"))
    failed = await fake.wait_for(lambda: _phase(fake, "qwen-gguf") == "Failed" and _md(fake, "qwen-gguf"))
    assert "engine" not in failed["status"] and "endpoint" not in failed["status"]
    assert cond(failed, "Degraded")["reason"] == "NotResolved"
    await operator_run.stop()


async def test_client_delete_is_guarded_by_the_uid_and_treats_gone_as_done(fake):
    svc = await fake.put_object(SERVICES, _service("guarded", "guarded", None))
    client = KubeClient(await credentials_for(str(fake.url).rstrip("/")))
    target = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "guarded", "namespace": NS}}
    try:
        assert await client.delete(target, uid="not-its-uid") is False  # 409: another object of that name
        assert fake.get(SERVICES, NS, "guarded") is not None
        assert await client.delete(target, uid=svc["metadata"]["uid"]) is True
        assert fake.get(SERVICES, NS, "guarded") is None
        assert await client.delete(target, uid=svc["metadata"]["uid"]) is False  # already gone
    finally:
        await client.close()


async def test_hardware_that_can_serve_a_rejected_update_rolls_it_out(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    await operator_run.start()
    await fake.put_object(MDS, gguf_md())
    await fake.wait_for(lambda: _phase(fake, "qwen-gguf") == "Deploying")
    await fake.modify(MDS, (NS, "qwen-gguf"),
                      lambda o: {**o, "spec": {**o["spec"], "accelerator": {"type": "nvidia"}}})
    await fake.wait_for(lambda: cond(_md(fake, "qwen-gguf"), "Degraded").get("reason") == "ServingPreviousPlan")

    await fake.put_object(NODES, gpu_node())
    placed = await fake.wait_for(lambda: (m := _md(fake, "qwen-gguf"))["status"].get("accelerator") == "nvidia"
                                 and m, what="the update placed on the new GPU node")
    assert placed["status"]["observedGeneration"] == 2
    assert cond(placed, "Resolved")["status"] == "True"
    dep = fake.get(DEPLOYMENTS, NS, "qwen-gguf")
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")
    await fake.wait_for(lambda: cond(_md(fake, "qwen-gguf"), "Degraded").get("status") == "False")
    await operator_run.stop()


async def test_a_refused_delete_is_reported_and_tried_again_on_the_next_change(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    controller = await operator_run.start()
    md = gguf_md()
    md["spec"]["cache"] = {"size": "10Gi"}
    await fake.put_object(MDS, md)
    await fake.wait_for(lambda: fake.get(CLAIMS, NS, "qwen-gguf-cache") and _phase(fake, "qwen-gguf") == "Deploying")
    fake.fail("DELETE", "persistentvolumeclaims", 403, times=2)  # a chart older than the delete verb

    await fake.modify(MDS, (NS, "qwen-gguf"), lambda o: {**o, "spec": {k: v for k, v in o["spec"].items()
                                                                       if k != "cache"}})
    failed = await fake.wait_for(lambda: [e for e in events_of(fake, "qwen-gguf") if e["reason"] == "PruneFailed"],
                                 what="a PruneFailed warning")
    assert failed[0]["type"] == "Warning" and "injected 403" in failed[0]["message"]
    assert "qwen-gguf-cache" in failed[0]["message"]
    await fake.wait_for(lambda: _md(fake, "qwen-gguf")["status"].get("observedGeneration") == 2)
    assert fake.get(CLAIMS, NS, "qwen-gguf-cache") is not None
    assert _phase(fake, "qwen-gguf") == "Deploying"  # the serving plan itself is fine
    assert _writes(controller, "delete") == 0

    # Any later reconcile tries again: refused once more (said once), then allowed.
    await mark_rollout(fake, "qwen-gguf", ready=0)
    await fake.wait_for(lambda: fake.faults[-1].times == 0, what="the second refusal")
    await mark_rollout(fake, "qwen-gguf", ready=1)
    await fake.wait_for(lambda: fake.get(CLAIMS, NS, "qwen-gguf-cache") is None, what="the claim pruned")
    assert _writes(controller, "delete") == 1
    assert [e["reason"] for e in events_of(fake, "qwen-gguf")].count("PruneFailed") == 1
    await operator_run.stop()
