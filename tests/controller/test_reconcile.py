"""The operator against an in-memory API over HTTP: children, status, Events, following the world."""

from __future__ import annotations

import pytest
from ctlharness import (
    CLAIMS,
    DEPLOYMENTS,
    MDS,
    NODES,
    NS,
    PODS,
    SERVICES,
    add_pod,
    awq_md,
    cond,
    cpu_node,
    events_of,
    gguf_md,
    gpu_node,
    mark_rollout,
    writes,
)
from fakekube import KubeApiError

from turnout.controller.handled import LEGACY_DIFFBASE
from turnout.controller.reconcile import IDX_MDS


async def test_create_applies_children_with_owner_references_and_reports_status(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    await operator_run.start()
    md = await fake.put_object(MDS, gguf_md())
    uid = md["metadata"]["uid"]

    dep = await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "qwen-gguf"), what="the Deployment")
    svc = await fake.wait_for(lambda: fake.get(SERVICES, NS, "qwen-gguf"), what="the Service")
    for child in (dep, svc):
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref == {"apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment", "name": "qwen-gguf",
                       "uid": uid, "controller": True, "blockOwnerDeletion": True}
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "turnout"
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
    # A new deployment's steady path: two applies and one status write; no Event (the choice is in the status),
    # and no annotation of kopf's (kopf only watches; what was reconciled is kept in memory).
    await fake.wait_for(lambda: cond(_md(fake, "qwen-gguf"), "Available")["status"] == "True")
    assert [e["reason"] for e in events_of(fake, "qwen-gguf")] == []
    assert cond(ready, "Resolved")["reason"] == "EngineSelected"
    assert cond(ready, "Resolved")["message"]
    assert LEGACY_DIFFBASE not in (_md(fake, "qwen-gguf")["metadata"].get("annotations") or {})
    # Every write the operator sent: the two applies, the status at Deploying and at Ready.
    own = sorted((str(r.method.value).upper(), r.resource.plural, r.subresource or "") for r in writes(fake)
                 if r.resource is not None)
    assert own == [("PATCH", "deployments", ""), ("PATCH", "modeldeployments", "status"),
                   ("PATCH", "modeldeployments", "status"), ("PATCH", "services", "")]
    await fake.wait_for(lambda: operator_run.controller._values(IDX_MDS, (NS, "qwen-gguf")))
    copy = operator_run.controller._values(IDX_MDS, (NS, "qwen-gguf"))[0]
    assert LEGACY_DIFFBASE not in (copy["metadata"].get("annotations") or {})
    assert copy["spec"] == fake.get(MDS, NS, "qwen-gguf")["spec"]
    await operator_run.stop()


def _md(fake, name):
    return fake.get(MDS, NS, name) or {}


def _phase(fake, name):
    return (_md(fake, name).get("status") or {}).get("phase")


async def test_rejection_names_every_engine_then_a_gpu_node_resolves_it(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    await operator_run.start()
    await fake.put_object(MDS, awq_md())

    failed = await fake.wait_for(lambda: _phase(fake, "qwen-awq") == "Failed" and _md(fake, "qwen-awq"))
    resolved = cond(failed, "Resolved")
    assert (resolved["status"], resolved["reason"]) == ("False", "Rejected")
    engines = {r["engine"] for r in failed["status"]["rejected"]}
    assert engines == {"vllm", "sglang", "llama.cpp", "transformers", "mlx"}
    assert all(r["reason"] for r in failed["status"]["rejected"])
    assert fake.get(DEPLOYMENTS, NS, "qwen-awq") is None
    await fake.wait_for(lambda: [e["type"] for e in events_of(fake, "qwen-awq") if e["reason"] == "Rejected"]
                        == ["Warning"], what="one Rejected warning")

    await fake.put_object(NODES, gpu_node())
    dep = await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "qwen-awq"), what="a Deployment after the GPU joined")
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")
    status = (await fake.wait_for(lambda: _phase(fake, "qwen-awq") == "Deploying" and _md(fake, "qwen-awq")))["status"]
    assert (status["engine"], status["accelerator"]) == ("vllm", "nvidia")
    assert cond(_md(fake, "qwen-awq"), "Resolved")["status"] == "True"
    assert fake.get(CLAIMS, NS, "qwen-awq-cache") is not None  # spec.cache.size asks for a claim
    await operator_run.stop()


async def test_losing_the_gpu_node_re_resolves_and_a_cpu_model_stays_put(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    await fake.put_object(NODES, gpu_node())
    await operator_run.start()
    await fake.put_object(MDS, awq_md())
    await fake.put_object(MDS, gguf_md(accelerator="cpu"))
    await fake.wait_for(lambda: _phase(fake, "qwen-awq") == "Deploying" and _phase(fake, "qwen-gguf") == "Deploying")
    gguf_before = fake.get(DEPLOYMENTS, NS, "qwen-gguf")

    await fake.remove(NODES, (None, "gpu-1"))
    failed = await fake.wait_for(lambda: _phase(fake, "qwen-awq") == "Failed" and _md(fake, "qwen-awq"))
    assert "qwen2.5-instruct" in cond(failed, "Resolved")["message"]
    assert "engine" not in failed["status"] and failed["status"]["rejected"]
    assert fake.get(DEPLOYMENTS, NS, "qwen-gguf")["metadata"]["resourceVersion"] == \
        gguf_before["metadata"]["resourceVersion"]
    await operator_run.stop()


async def test_a_new_gpu_does_not_move_a_placed_deployment_and_scaling_keeps_the_engine(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    await operator_run.start()
    await fake.put_object(MDS, gguf_md())  # accelerator auto: CPU is all there is
    await fake.wait_for(lambda: _phase(fake, "qwen-gguf") == "Deploying")
    before = fake.get(DEPLOYMENTS, NS, "qwen-gguf")
    assert _md(fake, "qwen-gguf")["status"]["accelerator"] == "cpu"

    await fake.put_object(NODES, gpu_node())  # auto would now prefer NVIDIA for a new deployment
    await fake.wait_for(lambda: operator_run.controller.hardware().accelerators() == {"cpu", "nvidia"})
    await fake.modify(MDS, (NS, "qwen-gguf"), lambda o: {**o, "spec": {**o["spec"], "replicas": 3}})
    scaled = await fake.wait_for(lambda: (d := fake.get(DEPLOYMENTS, NS, "qwen-gguf"))["spec"]["replicas"] == 3 and d)
    hash_label = "turnout.dev/spec-hash"
    assert scaled["metadata"]["labels"][hash_label] == before["metadata"]["labels"][hash_label]
    assert scaled["spec"]["template"] == before["spec"]["template"]
    status = (await fake.wait_for(lambda: _md(fake, "qwen-gguf")["status"].get("observedGeneration") == 2
                                  and _md(fake, "qwen-gguf")))["status"]
    assert status["accelerator"] == "cpu"
    assert [e["reason"] for e in events_of(fake, "qwen-gguf")].count("Scaled") == 1
    await operator_run.stop()


async def test_spec_update_rolls_out_a_new_template(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    await operator_run.start()
    await fake.put_object(MDS, gguf_md())
    await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "qwen-gguf"))
    old = fake.get(DEPLOYMENTS, NS, "qwen-gguf")
    await mark_rollout(fake, "qwen-gguf", ready=1)
    await fake.wait_for(lambda: _phase(fake, "qwen-gguf") == "Ready")

    await fake.modify(MDS, (NS, "qwen-gguf"),
                      lambda o: {**o, "spec": {**o["spec"], "servedModelName": "qwen-renamed"}})
    new = await fake.wait_for(
        lambda: (d := fake.get(DEPLOYMENTS, NS, "qwen-gguf"))["metadata"]["generation"] == 2 and d)
    assert new["metadata"]["labels"]["turnout.dev/spec-hash"] != old["metadata"]["labels"]["turnout.dev/spec-hash"]
    assert "qwen-renamed" in " ".join(new["spec"]["template"]["spec"]["containers"][0]["command"])
    deploying = await fake.wait_for(lambda: _phase(fake, "qwen-gguf") == "Deploying" and _md(fake, "qwen-gguf"))
    assert cond(deploying, "Progressing")["status"] == "True"
    assert cond(deploying, "Available")["status"] == "True"  # the old pod still serves
    # The first rollout is in the status; a new template of the same engine is a RolloutStarted.
    reasons = [e["reason"] for e in events_of(fake, "qwen-gguf")]
    assert reasons == ["RolloutStarted"]
    await mark_rollout(fake, "qwen-gguf", ready=1)
    await fake.wait_for(lambda: _phase(fake, "qwen-gguf") == "Ready")
    await operator_run.stop()


@pytest.mark.parametrize(
    ("container_status", "pod_conditions", "reason", "in_message"),
    [
        ({"state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}},
          "lastState": {"terminated": {"reason": "Error", "exitCode": 3}}, "restartCount": 4},
         [], "CrashLoopBackOff", "last exit code 3"),
        ({"state": {"waiting": {"reason": "CrashLoopBackOff"}},
          "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}, "restartCount": 2},
         [], "OOMKilled", "more memory than its limit"),
        ({"state": {"waiting": {"reason": "ImagePullBackOff", "message": "pull access denied"}}},
         [], "ImagePullBackOff", "pull access denied"),
        (None, [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/3 nodes are available: 3 Insufficient memory."}],
         "Unschedulable", "3 Insufficient memory"),
        # What a real kubelet says for imagePullPolicy Never/IfNotPresent and an image the node lacks.
        ({"state": {"waiting": {"reason": "ErrImageNeverPull", "message": 'Container image '
                                '"turnout/llamacpp-cpu:dev" is not present with pull policy of Never'}}},
         [], "ErrImageNeverPull", '"turnout/llamacpp-cpu:dev" is not present'),
        # The shim's engine failed to load: it exited 1 with the engine's error as its termination message;
        # the kubelet restarted it and the next try is loading (running, not ready).
        ({"state": {"running": {"startedAt": "2026-01-01T00:00:10Z"}}, "restartCount": 1,
          "lastState": {"terminated": {"reason": "Error", "exitCode": 1,
                                       "message": "llama.cpp failed to start: No module named 'tokenizers'"}}},
         [], "CrashLoopBackOff", "llama.cpp failed to start: No module named 'tokenizers'"),
        # Killed by the kernel on its first run, before any back-off.
        ({"state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}, "restartCount": 0},
         [], "OOMKilled", "more memory than its limit"),
    ],
    ids=["crashloop", "oomkilled", "imagepull", "unschedulable", "errimageneverpull", "engine-failed-to-load",
         "oomkilled-first-run"],
)
async def test_pod_failure_degrades_and_recovery_returns_to_ready(
    fake, operator_run, container_status, pod_conditions, reason, in_message
):
    await fake.put_object(NODES, cpu_node())
    await operator_run.start()
    await fake.put_object(MDS, gguf_md())
    dep = await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "qwen-gguf"))
    statuses = [{"name": "model-server", "ready": False, **container_status}] if container_status else []
    await add_pod(fake, dep, "qwen-gguf-abc12", {"phase": "Pending" if pod_conditions else "Running",
                                                  "conditions": pod_conditions, "containerStatuses": statuses})

    degraded = await fake.wait_for(lambda: _phase(fake, "qwen-gguf") == "Degraded" and _md(fake, "qwen-gguf"))
    deg = cond(degraded, "Degraded")
    assert (deg["status"], deg["reason"]) == ("True", reason)
    assert in_message in deg["message"]
    await fake.wait_for(lambda: any(e["reason"] == "Degraded" and e["type"] == "Warning" and reason in e["message"]
                                    for e in events_of(fake, "qwen-gguf")), what="a Degraded warning")

    healthy = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
               "containerStatuses": [{"name": "model-server", "ready": True, "restartCount": 0,
                                      "state": {"running": {}}}]}
    await fake.modify(PODS, (NS, "qwen-gguf-abc12"), lambda o: {**o, "status": healthy}, status_only=True)
    await mark_rollout(fake, "qwen-gguf", ready=1)
    ready = await fake.wait_for(lambda: _phase(fake, "qwen-gguf") == "Ready" and _md(fake, "qwen-gguf"))
    assert cond(ready, "Degraded")["status"] == "False"
    assert cond(ready, "Degraded")["lastTransitionTime"] >= deg["lastTransitionTime"]
    await fake.wait_for(lambda: "Recovered" in [e["reason"] for e in events_of(fake, "qwen-gguf")],
                        what="a Recovered event")
    await operator_run.stop()


async def test_restarted_operator_writes_nothing(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    await operator_run.start()
    await fake.put_object(MDS, gguf_md("one"))
    await fake.put_object(MDS, gguf_md("two", replicas=2))
    await fake.put_object(MDS, awq_md())  # rejected: no GPU
    for name in ("one", "two"):
        await fake.wait_for(lambda name=name: fake.get(DEPLOYMENTS, NS, name))
        await mark_rollout(fake, name, ready=1)
    await fake.wait_for(lambda: _phase(fake, "one") == "Ready" and _phase(fake, "two") == "Deploying"
                        and _phase(fake, "qwen-awq") == "Failed")
    # Each object's status says which generation was handled (kopf writes no annotation).
    await fake.wait_for(lambda: all((_md(fake, n).get("status") or {}).get("observedGeneration") == 1
                                    for n in ("one", "two", "qwen-awq")))
    await operator_run.stop()

    since = len(fake.requests)
    run2 = await operator_run.start()
    # Every deployment was looked at again: kopf's resume handler ran for each.
    await fake.wait_for(lambda: sum(s.get() for s in _samples(run2, "turnout_operator_reconciles_total")) >= 3,
                        what="three resumed reconciles")
    await fake.wait_for(lambda: len(run2.queue) == 0, what="an idle work queue")
    assert writes(fake, since) == []
    await operator_run.stop()


def _samples(controller, name):
    class _S:
        def __init__(self, v):
            self.v = v

        def get(self):
            return self.v

    return [_S(s.value) for m in controller.metrics.registry.collect() for s in m.samples if s.name == name]


async def test_delete_garbage_collects_children_through_owner_references(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    await operator_run.start()
    md = await fake.put_object(MDS, {**gguf_md(), "spec": {**gguf_md()["spec"], "cache": {"size": "10Gi"}}})
    await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "qwen-gguf") and fake.get(SERVICES, NS, "qwen-gguf")
                        and fake.get(CLAIMS, NS, "qwen-gguf-cache"))
    for res, name in ((DEPLOYMENTS, "qwen-gguf"), (SERVICES, "qwen-gguf"), (CLAIMS, "qwen-gguf-cache")):
        refs = fake.get(res, NS, name)["metadata"]["ownerReferences"]
        assert [r["uid"] for r in refs if r.get("controller")] == [md["metadata"]["uid"]]
    assert not (_md(fake, "qwen-gguf")["metadata"].get("finalizers"))

    await fake.remove(MDS, (NS, "qwen-gguf"))
    assert fake.objects(DEPLOYMENTS, NS) == fake.objects(SERVICES, NS) == fake.objects(CLAIMS, NS) == []
    await fake.wait_for(lambda: ("models", "qwen-gguf") not in operator_run.controller.md_keys())
    await operator_run.stop()


async def test_invalid_object_fails_with_the_reason_and_others_still_deploy(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    await operator_run.start()
    schema_invalid = gguf_md("negative")
    schema_invalid["spec"]["replicas"] = -1
    with pytest.raises(KubeApiError, match="replicas"):  # the fake validates against the CRD, as the API server
        await fake.put_object(MDS, schema_invalid)
    bad = gguf_md("bad")
    bad["spec"]["model"] = {"format": "gguf"}  # neither name nor uri (the CRD's CEL would refuse it too)
    await fake.put_object(MDS, bad)
    await fake.put_object(MDS, gguf_md("good"))
    failed = await fake.wait_for(lambda: _phase(fake, "bad") == "Failed" and _md(fake, "bad"))
    assert cond(failed, "Resolved")["reason"] == "InvalidSpec"
    assert "name or model.uri" in cond(failed, "Resolved")["message"]
    await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "good"))
    assert fake.get(DEPLOYMENTS, NS, "bad") is None
    await operator_run.stop()


async def test_transient_api_errors_are_retried_with_backoff(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    await operator_run.start()
    fake.fail("PATCH", "deployments", 503, times=2)
    fake.fail("PATCH", "modeldeployments", 409, times=1, subresource="status")
    await fake.put_object(MDS, gguf_md())
    await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "qwen-gguf"), what="the Deployment after retries")
    await fake.wait_for(lambda: _phase(fake, "qwen-gguf") == "Deploying")
    errors = {(s.labels["method"], s.labels["code"]): s.value
              for m in operator_run.controller.metrics.registry.collect() for s in m.samples
              if s.name == "turnout_operator_api_errors_total"}
    assert errors[("PATCH", "503")] == 2 and errors[("PATCH", "409")] == 1
    await operator_run.stop()


async def test_killed_mid_reconcile_converges_after_restart_without_duplicates_or_orphans(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    names = [f"model-{i}" for i in range(6)] + ["qwen2.5-dotted"]
    gate = fake.hold("PATCH", "deployments")  # every Deployment apply hangs: the operator is mid-reconcile
    await operator_run.start()
    for name in names:
        await fake.put_object(MDS, gguf_md(name))
    await fake.wait_for(lambda: fake.held >= 1, what="a Deployment apply in flight")
    await operator_run.kill()
    del fake.gates[("PATCH", "deployments")]
    gate.set()

    await operator_run.start()
    await fake.wait_for(lambda: all(_phase(fake, n) == "Deploying" for n in names), what="every deployment placed")
    deployments, services = fake.objects(DEPLOYMENTS, NS), fake.objects(SERVICES, NS)
    assert sorted(d["metadata"]["name"] for d in deployments) == sorted(["qwen2-5-dotted", *names[:-1]])
    assert len(services) == len(names)
    uids = {_md(fake, n)["metadata"]["uid"] for n in names}
    assert all(c["metadata"]["ownerReferences"][0]["uid"] in uids for c in deployments + services)
    await operator_run.stop()


async def test_without_nodes_it_waits_then_deploys_when_one_joins(fake, operator_run):
    await operator_run.start()
    await fake.put_object(MDS, gguf_md())
    waiting = await fake.wait_for(lambda: _phase(fake, "qwen-gguf") == "Resolving" and _md(fake, "qwen-gguf"))
    assert (cond(waiting, "Resolved")["status"], cond(waiting, "Resolved")["reason"]) == ("Unknown", "WaitingForNodes")
    # A node that has just registered: the API server taints it not-ready until the node-lifecycle controller
    # has seen it Ready. Still waiting (not rejected: it is no node that cannot serve the model).
    joining = cpu_node()
    joining["spec"] = {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]}
    await fake.put_object(NODES, joining)
    await fake.wait_for(lambda: operator_run.controller._index("turnout_nodes"), what="the node indexed")
    await fake.wait_for(lambda: len(operator_run.controller.queue) == 0, what="an idle work queue")
    assert _phase(fake, "qwen-gguf") == "Resolving"
    assert not [e for e in events_of(fake, "qwen-gguf") if e["reason"] == "Rejected"]
    await fake.modify(NODES, (None, "cpu-1"), lambda o: {**o, "spec": {}})
    await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "qwen-gguf"))
    await fake.wait_for(lambda: _phase(fake, "qwen-gguf") == "Deploying")
    await operator_run.stop()


async def test_a_child_the_api_refuses_fails_the_object_with_the_servers_message(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    await operator_run.start()
    fake.fail("PATCH", "deployments", 422, times=1)
    await fake.put_object(MDS, gguf_md())
    failed = await fake.wait_for(lambda: _phase(fake, "qwen-gguf") == "Failed" and _md(fake, "qwen-gguf"))
    assert cond(failed, "Resolved")["status"] == "True"
    degraded = cond(failed, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ApplyFailed")
    assert "injected 422" in degraded["message"]
    assert fake.get(DEPLOYMENTS, NS, "qwen-gguf") is None
    # The next change is tried again.
    await fake.modify(MDS, (NS, "qwen-gguf"), lambda o: {**o, "spec": {**o["spec"], "replicas": 2}})
    await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "qwen-gguf"))
    await fake.wait_for(lambda: _phase(fake, "qwen-gguf") == "Deploying")
    await operator_run.stop()


async def test_a_spec_changed_while_the_operator_was_down_rolls_out_on_start(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    await operator_run.start()
    await fake.put_object(MDS, gguf_md())
    await fake.wait_for(lambda: _phase(fake, "qwen-gguf") == "Deploying")
    await fake.wait_for(lambda: _md(fake, "qwen-gguf")["status"].get("observedGeneration") == 1)
    old = fake.get(DEPLOYMENTS, NS, "qwen-gguf")["metadata"]["labels"]["turnout.dev/spec-hash"]
    await operator_run.stop()

    await fake.modify(MDS, (NS, "qwen-gguf"), lambda o: {**o, "spec": {**o["spec"], "servedModelName": "later"}})
    await operator_run.start()
    await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "qwen-gguf")["metadata"]["labels"]
                        ["turnout.dev/spec-hash"] != old, what="the new template applied")
    await fake.wait_for(lambda: _md(fake, "qwen-gguf")["status"]["observedGeneration"] == 2)
    await operator_run.stop()


async def test_children_changed_or_deleted_behind_its_back_are_restored(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    await operator_run.start()
    await fake.put_object(MDS, gguf_md())
    await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "qwen-gguf") and fake.get(SERVICES, NS, "qwen-gguf"))
    first = fake.get(SERVICES, NS, "qwen-gguf")["metadata"]["uid"]

    await fake.remove(SERVICES, (NS, "qwen-gguf"))
    restored = await fake.wait_for(lambda: fake.get(SERVICES, NS, "qwen-gguf"), what="the Service re-created")
    assert restored["metadata"]["uid"] != first

    await fake.modify(DEPLOYMENTS, (NS, "qwen-gguf"), lambda o: {**o, "spec": {**o["spec"], "replicas": 5}})
    await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "qwen-gguf")["spec"]["replicas"] == 1,
                        what="the Deployment's replicas put back")
    await operator_run.stop()
