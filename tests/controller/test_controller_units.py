"""Pure parts of the controller: pod diagnosis, conditions, status patches, the work queue, the entry point."""

from __future__ import annotations

import asyncio

import pytest

from turnout.api import ModelDeploymentStatus
from turnout.controller import main as operator_main
from turnout.controller.handled import LEGACY_DIFFBASE, classify, essence
from turnout.controller.status import Cond, Rollout, merge_conditions, observe_rollout, read_status, status_patch
from turnout.controller.workqueue import RetryLater, WorkQueue
from turnout.controller.world import Child, compact_child, compact_node, compact_pod, diagnose
from turnout.kube import Credentials


def _credentials() -> Credentials:
    """Credentials for a controller whose client these tests never use (nothing listens there)."""
    from kubernetes_asyncio.client import Configuration

    return Credentials(Configuration(host="https://127.0.0.1:1"), "test credentials")


def _pod(name, waiting=None, last=None, scheduled=None, deleting=False):
    body = {"metadata": {"name": name, **({"deletionTimestamp": "x"} if deleting else {})},
            "status": {"conditions": [scheduled] if scheduled else [],
                       "containerStatuses": [{"name": "model-server", "restartCount": 1,
                                              "state": {"waiting": waiting} if waiting else {"running": {}},
                                              "lastState": {"terminated": last} if last else {}}]}}
    return compact_pod(body)


def test_diagnose_reports_the_worst_problem_with_its_message():
    crash = _pod("a", waiting={"reason": "CrashLoopBackOff"}, last={"reason": "Error", "exitCode": 1})
    pull = _pod("b", waiting={"reason": "ErrImagePull", "message": "not found"})
    assert diagnose([crash, pull]).reason == "ErrImagePull"
    assert diagnose([crash]).reason == "CrashLoopBackOff"
    oom = _pod("c", waiting={"reason": "CrashLoopBackOff"}, last={"reason": "OOMKilled"})
    assert diagnose([crash, oom]).reason == "OOMKilled"
    unsched = _pod("d", scheduled={"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                   "message": "0/2 nodes: 2 Insufficient nvidia.com/gpu."})
    problem = diagnose([unsched])
    assert problem.reason == "Unschedulable" and "Insufficient nvidia.com/gpu" in problem.message
    assert diagnose([_pod("e"), _pod("f", waiting={"reason": "CrashLoopBackOff"}, deleting=True)]) is None


def test_a_pod_the_node_controller_marked_not_ready_is_node_not_ready():
    # What the node lifecycle controller writes when a kubelet stops reporting (MarkPodsNotReady): the pod's
    # Ready condition turns False; ContainersReady and the container statuses the kubelet last wrote stay.
    def pod(ready_condition, container_ready=True):
        ready = "True" if container_ready else "False"
        return compact_pod({"metadata": {"name": "m-1"}, "spec": {"nodeName": "node-a"},
                            "status": {"conditions": [{"type": "Ready", "status": ready_condition},
                                                      {"type": "ContainersReady", "status": ready}],
                                       "initContainerStatuses": [{"name": "fetch", "ready": False, "restartCount": 0,
                                                                  "state": {"terminated": {"exitCode": 0}}}],
                                       "containerStatuses": [{"name": "model-server", "ready": container_ready,
                                                              "restartCount": 0, "state": {"running": {}}}]}})

    problem = diagnose([pod("False")])
    assert problem.reason == "NodeNotReady" and "node-a" in problem.message and "m-1" in problem.message
    assert diagnose([pod("True")]) is None
    # A container that is simply not ready yet (loading) is the kubelet's own report, not a lost node.
    assert diagnose([pod("False", container_ready=False)]) is None
    crash = _pod("z", waiting={"reason": "CrashLoopBackOff"}, last={"reason": "Error", "exitCode": 1})
    assert diagnose([pod("False"), crash]).reason == "CrashLoopBackOff"


def test_an_engine_that_cannot_load_is_one_crash_loop_with_its_error_through_every_phase():
    # What a kubelet reports while a shim whose engine fails keeps restarting: terminated (the first exit),
    # CrashLoopBackOff (back-off), running and not ready (the next try). Each says the engine's error, the
    # termination message the shim wrote, under one reason, so Degraded does not flap between tries.
    error = "llama.cpp failed to start: No module named 'tokenizers'"
    failed = {"reason": "Error", "exitCode": 1, "message": error}

    def status(state, restarts, last=None, ready=False):
        return compact_pod({"metadata": {"name": "m-1"}, "status": {"containerStatuses": [
            {"name": "model-server", "ready": ready, "restartCount": restarts, "state": state,
             "lastState": {"terminated": last} if last else {}}]}})

    phases = [status({"terminated": failed}, 0), status({"waiting": {"reason": "CrashLoopBackOff"}}, 1, failed),
              status({"running": {}}, 1, failed), status({"waiting": {"reason": "CrashLoopBackOff"}}, 2, failed)]
    problems = [diagnose([p]) for p in phases]
    assert {p.reason for p in problems} == {"CrashLoopBackOff"}
    assert all(p.message.endswith(f"(last exit code 1): {error}") or error in p.message for p in problems)
    assert problems[0].message == f"pod m-1 container model-server exited (restarts: 0, last exit code 1): {error}"
    assert problems[3].message.startswith("pod m-1 container model-server keeps crashing (restarts: 2")
    # OOM killed on its first run already says so.
    assert diagnose([status({"terminated": {"reason": "OOMKilled", "exitCode": 137}}, 0)]).reason == "OOMKilled"
    # Fixed: ready again, or a restart whose last run ended well, or a container that was never restarted.
    assert diagnose([status({"running": {}}, 2, failed, ready=True)]) is None
    assert diagnose([status({"running": {}}, 1, {"reason": "Completed", "exitCode": 0})]) is None
    assert diagnose([status({"running": {}}, 0)]) is None


def test_condition_transition_time_moves_only_when_status_changes():
    first = merge_conditions(None, [Cond("Degraded", "False", "AsExpected")], 1, "T1")
    same = merge_conditions(first, [Cond("Degraded", "False", "AsExpected", "other words")], 2, "T2")
    assert same[0].last_transition_time == "T1" and same[0].observed_generation == 2
    flipped = merge_conditions(same, [Cond("Degraded", "True", "OOMKilled")], 2, "T3")
    assert flipped[0].last_transition_time == "T3"


def test_status_patch_is_none_when_equal_and_removes_fields_no_longer_set():
    current = read_status({"phase": "Ready", "engine": "vllm", "kopf": {"x": 1}})  # kopf's field: not ours
    assert status_patch(current, ModelDeploymentStatus(phase="Ready", engine="vllm")) is None
    assert status_patch(current, ModelDeploymentStatus(phase="Failed")) == {"phase": "Failed", "engine": None}


def test_the_status_read_back_keeps_the_operators_fields_and_drops_what_does_not_parse():
    raw = {"phase": "Ready", "readyReplicas": 2, "kopf": {"progress": {}}, "tensorParallelSize": "many",
           "conditions": [{"type": "Available", "status": "True", "reason": "ReplicasReady",
                           "lastTransitionTime": "T1", "observedGeneration": 3}]}
    status = read_status(raw)
    assert status is not None and (status.phase, status.ready_replicas, status.tensor_parallel_size) == (
        "Ready", 2, None)
    assert status.conditions is not None and status.conditions[0].last_transition_time == "T1"
    assert read_status(None) is None and read_status({}) == ModelDeploymentStatus()
    # what does not parse is written again: the patch sets it (the field is the operator's), kopf's is untouched
    assert status_patch(status, status.model_copy(update={"tensor_parallel_size": 2})) == {"tensorParallelSize": 2}


def test_rollout_is_complete_only_for_the_current_hash_and_replica_count():
    body = {"kind": "Deployment", "metadata": {"name": "m", "generation": 2, "labels": {"turnout.dev/spec-hash": "h2"}},
            "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}}
    dep = compact_child(body)
    assert observe_rollout(dep, [], desired_replicas=2, desired_hash="h2") == Rollout(2, 2, 2, True, None)
    assert not observe_rollout(dep, [], desired_replicas=2, desired_hash="h3").complete
    assert not observe_rollout(dep, [], desired_replicas=3, desired_hash="h2").complete
    stalled = compact_child({**body, "status": {**body["status"], "conditions": [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}]}})
    assert observe_rollout(stalled, [], desired_replicas=2, desired_hash="h2").problem.reason == \
        "ProgressDeadlineExceeded"


def test_node_compaction_ignores_heartbeats():
    node = {"metadata": {"name": "n", "labels": {"a": "b"}, "resourceVersion": "1"},
            "status": {"allocatable": {"cpu": "4"}, "conditions": [
                {"type": "Ready", "status": "True", "lastHeartbeatTime": "t1"},
                {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": "t1"}]}}
    later = {**node, "metadata": {**node["metadata"], "resourceVersion": "2"},
             "status": {**node["status"], "conditions": [
                 {"type": "Ready", "status": "True", "lastHeartbeatTime": "t2"}]}}
    assert compact_node(node) == compact_node(later)


def _md(generation=1, observed=None, replicas=1, engine="auto", labels=None, annotations=None):
    meta = {"name": "a", "uid": "u", "generation": generation, "labels": labels or {},
            "annotations": annotations or {}}
    return {"metadata": meta, "spec": {"model": {"name": "m"}, "engine": engine, "replicas": replicas},
            **({"status": {"observedGeneration": observed}} if observed is not None else {})}


@pytest.mark.parametrize(("last", "now", "trigger"), [
    (None, _md(), "create"),                                          # new: resolve afresh
    (None, _md(generation=2, observed=1), "create"),                  # changed while no operator ran
    (None, _md(generation=2, observed=2), "resume"),                  # handled before a restart
    (_md(), _md(generation=2, replicas=3), "scale"),
    (_md(), _md(generation=2, replicas=3, engine="vllm"), "spec"),
    (_md(), _md(generation=2, engine="vllm"), "spec"),
    (_md(), _md(labels={"team": "x"}), "meta"),
    (_md(), _md(observed=1), "world"),                                # a child, a pod or a node changed
    (_md(), _md(generation=2, observed=1), "meta"),                   # never skipped
])
def test_the_kind_of_change_comes_from_the_essence_last_reconciled(last, now, trigger):
    assert classify(now, essence(now), essence(last) if last else None) == trigger


def test_the_essence_leaves_out_status_and_an_older_operators_diff_base():
    base = _md(observed=1)
    assert essence(base) == essence({**_md(annotations={LEGACY_DIFFBASE: "{}"}), "status": {"phase": "Ready"}})
    assert essence(base) != essence(_md(annotations={"note": "x"}))


async def test_a_key_whose_work_was_cancelled_by_a_stop_runs_when_the_queue_starts_again():
    started, calls = asyncio.Event(), []

    async def work(key):
        calls.append(key)
        if len(calls) == 1:
            started.set()
            await asyncio.sleep(3600)  # cut short by stop()

    queue = WorkQueue(work, workers=1)
    queue.add("md")
    queue.start()
    await asyncio.wait_for(started.wait(), 10)
    await queue.stop()
    assert len(queue) == 1  # waiting, not lost
    queue.start()
    for _ in range(100):
        if len(calls) == 2:
            break
        await asyncio.sleep(0.01)
    await queue.stop()
    assert calls == ["md", "md"]


def test_what_was_reconciled_is_forgotten_when_the_watches_start_again():
    from turnout.config import OperatorConfig
    from turnout.controller.reconcile import Controller

    controller = Controller(OperatorConfig(), _credentials())
    body = _md()
    controller._handled["u"] = essence(body)
    controller.md_event("MODIFIED", body)  # the echo of our own status write: nothing to do
    assert len(controller.queue) == 0
    controller.watches_started()
    controller.md_event(None, body)  # the new watch's listing: reconciled once more
    assert len(controller.queue) == 1


async def test_work_queue_deduplicates_and_retries_with_backoff():
    calls: list[str] = []
    done = asyncio.Event()

    async def work(key):
        calls.append(key)
        if key == "flaky" and calls.count("flaky") < 3:
            raise RetryLater("not yet", delay=0.01)
        if calls.count("flaky") == 3:
            done.set()

    queue = WorkQueue(work, workers=2)
    for key in ("a", "a", "a", "flaky"):
        queue.add(key)
    queue.start()
    await asyncio.wait_for(done.wait(), 30)
    await queue.stop()
    assert calls.count("a") == 1
    assert calls.count("flaky") == 3


def test_bad_config_exits_with_one_line(tmp_path, capsys):
    bad = tmp_path / "config.yaml"
    bad.write_text("images:\n  vllm:\n    quantum: example/vllm:1\n")
    assert operator_main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "quantum" in err and err.startswith("turnout operator:")
    assert operator_main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


async def test_credentials_come_from_the_kubeconfig_with_its_namespace(tmp_path, monkeypatch):
    from kubeconfigs import write_kubeconfig
    from turnout.kube import CredentialsError, load_credentials

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(CredentialsError):
        await load_credentials()
    config = write_kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:6443", user={"token": "secret-token"},
                              namespace="models")
    monkeypatch.setenv("KUBECONFIG", str(config))
    creds = await load_credentials()
    assert creds.server == "https://127.0.0.1:6443"
    assert await creds.authorization() == "Bearer secret-token"


async def test_client_classifies_failures(fake, free_port):
    from kubeconfigs import credentials_for
    from turnout.kube import KubeClient, PermanentApiError, TransientApiError

    errors: list[tuple[str, int]] = []
    client = KubeClient(await credentials_for(str(fake.url).rstrip("/")), on_error=lambda m, c: errors.append((m, c)))
    regarding = {"apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment", "name": "x", "namespace": "models"}
    event = {"type_": "Normal", "reason": "R", "note": "n", "action": "Test", "controller": "turnout.dev/test",
             "instance": "t"}
    try:
        with pytest.raises(PermanentApiError) as missing:
            await client.patch_status("turnout.dev/v1alpha1", "modeldeployments", "models", "nope",
                                      {"phase": "Ready"})
        assert missing.value.status == 404
        fake.fail("POST", "events", 503)
        with pytest.raises(TransientApiError) as unavailable:
            await client.create_event(regarding, **event)
        assert unavailable.value.status == 503
        created = await client.create_event(regarding, **event)
        assert created["metadata"]["name"].startswith("x.") and created["apiVersion"] == "events.k8s.io/v1"
    finally:
        await client.close()
    down = KubeClient(await credentials_for(f"http://127.0.0.1:{free_port}"))
    with pytest.raises(TransientApiError) as refused:
        await down.create_event(regarding, **event)
    await down.close()
    assert refused.value.status == 0
    assert errors == [("PATCH", 404), ("POST", 503)]


def test_event_names_are_dns_subdomains_as_client_go_makes_them():
    import re

    from turnout.kube.client import event_name

    subdomain = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
    assert event_name("qwen2.5-gguf", 0x17D4F) == "qwen2.5-gguf.17d4f"
    long = event_name("a" * 250 + "-b", 0x123456789ABCDEF0)
    assert len(long) <= 253 and subdomain.fullmatch(long)
    # The prefix the client once sent as generateName ("<name>."), which the API server refuses with 422.
    assert not subdomain.fullmatch("qwen2.5-gguf.")


def test_the_echo_of_our_own_apply_queues_no_reconcile_but_any_other_child_change_does():
    from turnout.config import OperatorConfig
    from turnout.controller import Controller

    controller = Controller(OperatorConfig(), _credentials())
    controller.indices = {"turnout_mds": {("models", "m"): [{"metadata": {"name": "m"}}]}}
    owner = [{"kind": "ModelDeployment", "name": "m", "uid": "u-md", "controller": True}]
    applied = Child("Deployment", "m", namespace="models", uid="u1", resource_version="7")
    controller._applied[("Deployment", "models", "m")] = {"m": applied}

    def body(rv):
        return {"metadata": {"name": "m", "namespace": "models", "uid": "u1", "resourceVersion": rv,
                             "ownerReferences": owner}}

    controller.child_event("Deployment", body("7"), "ADDED", "m")  # the very version our apply returned
    assert len(controller.queue) == 0 and controller._applied == {}
    controller.child_event("Deployment", body("8"), "MODIFIED", "m")  # e.g. the Deployment controller's status
    assert len(controller.queue) == 1


def test_previous_plan_status_keeps_the_plan_and_says_why_it_is_not_rolled_out():
    from turnout.api.types import EngineReason
    from turnout.controller import status as st

    resolved = st.Cond("Resolved", "False", "Rejected", "no engine can serve m on nvidia nodes")
    plan = {"engine": "llama.cpp", "accelerator": "cpu", "image": "img:1", "endpoint": "http://m.ns.svc:8000/v1"}
    status = st.wire(st.previous_plan_status(  # as written to the API
        generation=4, resolved=resolved, rejected=[EngineReason(engine="vllm", reason="x")],
        plan_fields=st.plan_status(**plan), desired_replicas=2, rollout=st.Rollout(2, 1, 2, False, None),
        previous=None, now="T"))
    assert status["phase"] == "Degraded" and status["observedGeneration"] == 4
    assert {k: status[k] for k in plan} == plan
    conds = {c["type"]: c for c in status["conditions"]}
    assert (conds["Resolved"]["status"], conds["Resolved"]["reason"]) == ("False", "Rejected")
    assert conds["Available"]["message"] == "1/2 replicas of the previous plan ready"
    assert conds["Progressing"]["reason"] == conds["Degraded"]["reason"] == st.SERVING_PREVIOUS_PLAN
    assert conds["Degraded"]["message"] == ("spec generation 4 cannot be served (Rejected: no engine can serve m "
                                            "on nvidia nodes); the previous plan keeps serving: llama.cpp on cpu "
                                            "(img:1)")
    zero = st.wire(st.previous_plan_status(generation=4, resolved=resolved, rejected=None,
                                           plan_fields=st.plan_status(**plan), desired_replicas=0,
                                           rollout=st.Rollout(0, 0, 0, True, None), previous=None, now="T"))
    assert {c["type"]: c for c in zero["conditions"]}["Available"]["reason"] == "ScaledToZero"


def test_hardware_is_parsed_once_per_node_set():
    """The resolver memoizes per Hardware object: one object while the nodes stay, a new one when one changes."""
    from turnout.config import OperatorConfig
    from turnout.controller import Controller

    def node(name, cpu):
        return compact_node({"metadata": {"name": name, "labels": {"kubernetes.io/arch": "amd64"}},
                             "status": {"allocatable": {"cpu": cpu, "memory": "64Gi"},
                                        "capacity": {"cpu": cpu, "memory": "64Gi"},
                                        "conditions": [{"type": "Ready", "status": "True"}]}})

    controller = Controller(OperatorConfig(), _credentials())
    a, b = node("a", "8"), node("b", "8")
    controller.indices = {"turnout_nodes": {"a": [a], "b": [b]}}
    first = controller.hardware()
    assert [n.name for n in first.nodes] == ["a", "b"]
    assert controller.hardware() is first  # the same node objects: not parsed again
    controller.indices = {"turnout_nodes": {"a": [a], "b": [node("b", "16")]}}  # kopf stores a new copy
    second = controller.hardware()
    assert second is not first and controller.hardware() is second
    controller.indices = {"turnout_nodes": {"a": [a]}}
    assert [n.name for n in controller.hardware().nodes] == ["a"]


async def test_reconciles_in_flight_are_bounded():
    """A burst of creates runs at most ``concurrency`` reconciles at once (their manifests are not all held)."""
    from turnout.config import OperatorConfig
    from turnout.controller import Controller

    controller = Controller(OperatorConfig(), _credentials(), concurrency=3)
    running, most = 0, 0
    release = asyncio.Event()

    async def slow(md, trigger):
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        from turnout.controller.reconcile import Outcome
        return Outcome("unchanged")

    controller._reconcile = slow  # type: ignore[method-assign]
    tasks = [asyncio.create_task(controller.reconcile({"metadata": {"namespace": "ns", "name": f"m{i}"}},
                                                      trigger="create")) for i in range(10)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert running == 3
    release.set()
    results = await asyncio.gather(*tasks)
    assert most == 3 and all(r.result == "unchanged" for r in results)


def test_kopf_settings_let_idle_workers_go_and_keep_nothing_on_the_objects():
    import kopf

    from turnout.controller.handlers import configure

    settings = kopf.OperatorSettings()
    configure(settings)
    # Per-object workers go soon after a burst (memory).
    assert settings.queueing.idle_timeout < kopf.OperatorSettings().queueing.idle_timeout
    assert settings.scanning.disabled
    # No diff-base (kopf would deep-copy every object of every watched kind for it): no handler reads one.
    body = kopf.Body({"metadata": {"name": "a", "managedFields": [{}]}, "spec": {"x": 1}})
    assert settings.persistence.diffbase_storage.build(body=body) is None
    assert settings.persistence.diffbase_storage.fetch(body=body) is None


