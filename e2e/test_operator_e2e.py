"""The operator on a real cluster: admission, server-side apply, status, Events, placement, following the world.

Run with ``KUBECONFIG=... pytest e2e -v`` (see docs/operator.md). Pods run on fake nodes
(:mod:`kwok`): the real scheduler places them, the real Deployment and ReplicaSet controllers make
them, the fake kubelet reports them running (or failing, when a test asks it to). A test that needs
to decide what hardware there is makes its own nodes (``own_nodes``) and selects them with a
``nodeSelector``, so the resolver sees only those. The expected engine of each example is computed
with the same resolver from the cluster's own nodes, so that test holds on any cluster.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import yaml
from admission import Refusal
from kubectl import (
    KubectlError,
    apply,
    awq,
    condition,
    events,
    get_json,
    gguf,
    kubectl,
    model_deployment,
    phase,
    poll,
    settled,
)
from results import record_results

from turnout.api import ModelDeploymentSpec
from turnout.config import OperatorConfig
from turnout.hardware import parse_nodes
from turnout.resolver import Plan, resolve

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
DEGRADED_REASONS = {"ImagePullBackOff", "ErrImagePull", "CrashLoopBackOff", "OOMKilled", "Unschedulable",
                    "CreateContainerConfigError", "ProgressDeadlineExceeded"}
HASH = "turnout.dev/spec-hash"
ANNOTATION = "turnout.dev/last-handled-configuration"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "ModelDeployment"]


def _pods(namespace: str, name: str) -> list[dict]:
    return json.loads(kubectl("get", "pods", "-n", namespace, "-l", f"turnout.dev/deployment={name}",
                              "-o", "json"))["items"]


def _live_pods(namespace: str, name: str) -> list[dict]:
    return [p for p in _pods(namespace, name) if not p["metadata"].get("deletionTimestamp")]


def _deployment(namespace: str, name: str) -> dict | None:
    return get_json("deployment", name, "-n", namespace)


def _delete(namespace: str, *names: str) -> None:
    for name in names:
        kubectl("delete", "modeldeployment", name, "-n", namespace, "--ignore-not-found", "--wait=false")


# ----- admission and examples ------------------------------------------------------------------------------


def test_crd_rejects_impossible_specs_at_admission(namespace):
    bad = model_deployment("bad-gguf-vllm", {"model": {"name": "qwen2.5-instruct", "format": "gguf"},
                                             "engine": "vllm"})
    with pytest.raises(KubectlError) as info:
        apply(bad, namespace)
    assert "llama.cpp" in info.value.stderr  # the CEL rule's message
    nameless = {**bad, "spec": {"model": {"format": "gguf"}}}
    with pytest.raises(KubectlError) as info:
        apply(nameless, namespace)
    assert "name or model.uri" in info.value.stderr
    negative = model_deployment("negative", gguf(replicas=-1))
    with pytest.raises(KubectlError) as info:
        apply(negative, namespace)
    assert "spec.replicas" in info.value.stderr  # the OpenAPI schema's minimum
    assert get_json("modeldeployment", "negative", "-n", namespace) is None


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_resolve_as_the_resolver_says_for_this_cluster(example, namespace, operator, fake_nodes):
    nodes = json.loads(kubectl("get", "nodes", "-o", "json"))["items"]
    hardware = parse_nodes(nodes)
    for doc in _docs(example):
        name = doc["metadata"]["name"]
        expected = resolve(ModelDeploymentSpec.model_validate(doc["spec"]), hardware, OperatorConfig())
        apply(doc, namespace)
        try:
            md = poll(lambda name=name: settled(namespace, name), what=f"{name} reconciled")
            status = md["status"]
            if not hardware.nodes:  # an empty cluster: nothing to resolve against yet
                assert (status["phase"], condition(md, "Resolved")["reason"]) == ("Resolving", "WaitingForNodes")
            elif isinstance(expected, Plan):
                assert (status.get("engine"), status.get("accelerator")) == (expected.engine, expected.accelerator)
                assert condition(md, "Resolved")["status"] == "True"
                assert status["endpoint"] == f"http://{name}.{namespace}.svc:8000/v1"
                assert status["phase"] in {"Deploying", "Ready", "Degraded"}
                if status["phase"] == "Degraded":
                    assert condition(md, "Degraded")["reason"] in DEGRADED_REASONS
            else:
                assert status["phase"] == "Failed"
                assert condition(md, "Resolved")["reason"] == "Rejected"
                assert {r["engine"] for r in status["rejected"]} >= {"vllm", "llama.cpp", "transformers"}
        finally:
            _delete(namespace, name)


@pytest.mark.empty_cluster
def test_an_empty_cluster_waits_for_nodes_then_deploys_when_one_joins(namespace, operator, kwok, cleanup):
    """No node at all: the operator cannot tell what hardware there will be, so it waits (Resolving /
    WaitingForNodes) rather than failing; the first node to join resolves it."""
    nodes = json.loads(kubectl("get", "nodes", "-o", "json"))["items"]
    if nodes:
        pytest.skip(f"the cluster has nodes ({', '.join(n['metadata']['name'] for n in nodes)}): "
                    "waiting for nodes is only seen on a cluster without any")
    cleanup("modeldeployment", "e2e-empty", namespace)
    apply(model_deployment("e2e-empty", gguf(replicas=1)), namespace)
    waiting = poll(lambda: phase(namespace, "e2e-empty", "Resolving"), what="e2e-empty Resolving")
    resolved = condition(waiting, "Resolved")
    assert (resolved["status"], resolved["reason"]) == ("Unknown", "WaitingForNodes")
    assert condition(waiting, "Progressing")["status"] == "True"
    assert _deployment(namespace, "e2e-empty") is None
    assert not events(namespace, "e2e-empty", "Rejected"), "waiting is no rejection"

    node = f"e2e-first-{uuid.uuid4().hex[:5]}"
    kwok.add_node(node)
    try:
        ready = poll(lambda: phase(namespace, "e2e-empty", "Ready"), timeout=120, what="e2e-empty Ready")
        assert ready["status"]["engine"] == "llama.cpp"
        assert [p["spec"]["nodeName"] for p in _live_pods(namespace, "e2e-empty")] == [node]
    finally:
        _delete(namespace, "e2e-empty")
        poll(lambda: not _pods(namespace, "e2e-empty"), what="the pods of e2e-empty gone")
        kwok.remove_node(node)


# ----- create, status, Events ------------------------------------------------------------------------------


def test_create_reports_status_events_and_becomes_ready(namespace, operator, own_nodes, cleanup):
    node = own_nodes.add("cpu")
    cleanup("modeldeployment", "e2e-create", namespace)
    apply(model_deployment("e2e-create", gguf(replicas=1, nodeSelector=own_nodes.selector)), namespace)
    md = poll(lambda: settled(namespace, "e2e-create"), what="e2e-create reconciled")
    assert md["status"]["phase"] in {"Deploying", "Ready"}
    assert (md["status"]["engine"], md["status"]["accelerator"]) == ("llama.cpp", "cpu")
    assert md["status"]["endpoint"] == f"http://e2e-create.{namespace}.svc:8000/v1"
    assert md["status"]["observedGeneration"] == 1

    # The Deployment controller, the scheduler and the (fake) kubelet run it: Ready once the pod is.
    ready = poll(lambda: phase(namespace, "e2e-create", "Ready"), timeout=120, what="e2e-create Ready")
    assert ready["status"]["readyReplicas"] == 1
    assert condition(ready, "Available")["status"] == "True"
    assert (condition(ready, "Progressing")["status"], condition(ready, "Progressing")["reason"]) == \
        ("False", "RolloutComplete")
    (pod,) = _live_pods(namespace, "e2e-create")
    assert pod["spec"]["nodeName"] == node
    assert condition(pod, "Ready")["status"] == "True"

    dep = _deployment(namespace, "e2e-create")
    # A new deployment's steady path posts no Event: the choice is in its status (kubectl describe shows it).
    resolved = condition(ready, "Resolved")
    assert (resolved["status"], resolved["reason"]) == ("True", "EngineSelected")
    assert resolved["message"].startswith("llama.cpp on cpu")
    assert not events(namespace, "e2e-create", "EngineSelected")
    assert not events(namespace, "e2e-create", "RolloutStarted")
    assert dep["metadata"]["labels"][HASH]
    assert "EngineSelected" in kubectl("describe", "modeldeployment", "e2e-create", "-n", namespace)


@pytest.fixture
def cpu_model(namespace, operator, own_nodes):
    own_nodes.add("cpu")
    doc = _docs(ROOT / "examples" / "qwen-gguf-cpu.yaml")[0]
    doc["metadata"]["name"] = "e2e-gguf"
    doc["spec"]["nodeSelector"] = own_nodes.selector
    apply(doc, namespace)
    poll(lambda: settled(namespace, "e2e-gguf"), what="e2e-gguf reconciled")
    yield doc
    _delete(namespace, "e2e-gguf")
    poll(lambda: not _pods(namespace, "e2e-gguf"), what="the pods of e2e-gguf gone")


def test_children_are_server_side_applied_and_owned(cpu_model, namespace):
    fields = "--show-managed-fields"  # kubectl leaves them out otherwise
    md = get_json("modeldeployment", "e2e-gguf", "-n", namespace, fields)
    dep = poll(lambda: get_json("deployment", "e2e-gguf", "-n", namespace, fields), what="the Deployment")
    svc = get_json("service", "e2e-gguf", "-n", namespace, fields)
    for child in (dep, svc):
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref == {"apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment", "name": "e2e-gguf",
                       "uid": md["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "turnout"
        managers = {(m["manager"], m["operation"]) for m in child["metadata"]["managedFields"]}
        assert ("turnout", "Apply") in managers
    # The operator writes status only (and kopf its annotations): spec stays the user's.
    spec_managers = {m["manager"] for m in md["metadata"]["managedFields"]
                     if "f:spec" in json.dumps(m.get("fieldsV1", {}))}
    assert "turnout" not in spec_managers
    status_writers = {m["manager"] for m in md["metadata"]["managedFields"] if m.get("subresource") == "status"}
    assert "turnout" in status_writers, "status is written through the status subresource"
    assert not md["metadata"].get("finalizers"), "no finalizer: deletion is the garbage collector's"


def test_scale_changes_replicas_without_a_rollout(cpu_model, namespace):
    before = poll(lambda: _deployment(namespace, "e2e-gguf"), what="the Deployment")
    kubectl("scale", "modeldeployment/e2e-gguf", "-n", namespace, "--replicas=2")
    after = poll(lambda: (d := _deployment(namespace, "e2e-gguf")) and d["spec"]["replicas"] == 2 and d,
                 what="the Deployment scaled to 2")
    assert after["metadata"]["labels"][HASH] == before["metadata"]["labels"][HASH]
    assert after["spec"]["template"] == before["spec"]["template"]
    md = poll(lambda: phase(namespace, "e2e-gguf", "Ready", readyReplicas=2), timeout=120,
              what="two replicas ready")
    assert md["status"]["engine"] == "llama.cpp"
    assert len(events(namespace, "e2e-gguf", "Scaled")) == 1


def test_delete_garbage_collects_the_children(namespace, operator, own_nodes):
    own_nodes.add("cpu")
    apply(model_deployment("e2e-gc", gguf(cache={"size": "1Gi"}, nodeSelector=own_nodes.selector)), namespace)
    poll(lambda: settled(namespace, "e2e-gc"), what="e2e-gc reconciled")
    children = [("deployment", "e2e-gc"), ("service", "e2e-gc"), ("pvc", "e2e-gc-cache")]
    poll(lambda: all(get_json(kind, name, "-n", namespace) for kind, name in children), what="the children")
    kubectl("delete", "modeldeployment", "e2e-gc", "-n", namespace, "--wait=true", "--timeout=60s")
    poll(lambda: all(get_json(kind, name, "-n", namespace) is None for kind, name in children), timeout=120,
         what="the children garbage-collected")


# ----- placement: the resolver's plan, the scheduler's choice ----------------------------------------------


def test_gpu_node_joining_resolves_a_rejected_plan_onto_it_and_leaving_fails_it(namespace, operator, own_nodes,
                                                                               cleanup):
    cpu = own_nodes.add("cpu")
    cleanup("modeldeployment", "e2e-awq", namespace)
    cleanup("modeldeployment", "e2e-cpu-stays", namespace)
    apply(model_deployment("e2e-awq", awq(nodeSelector=own_nodes.selector)), namespace)
    apply(model_deployment("e2e-cpu-stays", gguf(replicas=1, nodeSelector=own_nodes.selector)), namespace)
    failed = poll(lambda: phase(namespace, "e2e-awq", "Failed"), what="e2e-awq Failed")
    resolved = condition(failed, "Resolved")
    assert (resolved["status"], resolved["reason"]) == ("False", "Rejected")
    assert {r["engine"] for r in failed["status"]["rejected"]} == {"vllm", "sglang", "llama.cpp", "transformers",
                                                                     "mlx"}
    assert all(r["reason"] for r in failed["status"]["rejected"])
    assert _deployment(namespace, "e2e-awq") is None
    assert [e["type"] for e in poll(lambda: events(namespace, "e2e-awq", "Rejected"), what="a Rejected Event")] \
        == ["Warning"]
    poll(lambda: phase(namespace, "e2e-cpu-stays", "Ready"), timeout=120, what="the CPU model Ready")

    gpu = own_nodes.add("gpu")
    md = poll(lambda: phase(namespace, "e2e-awq", "Ready"), timeout=120, what="e2e-awq Ready on the GPU node")
    assert (md["status"]["engine"], md["status"]["accelerator"]) == ("vllm", "nvidia")
    dep = _deployment(namespace, "e2e-awq")
    pod_spec = dep["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec["tolerations"]
    # The real scheduler put the GPU plan on the GPU node (its taint tolerated, its nvidia.com/gpu counted)
    # and kept the CPU plan off it (the taint is not tolerated there).
    assert [p["spec"]["nodeName"] for p in _live_pods(namespace, "e2e-awq")] == [gpu]
    assert [p["spec"]["nodeName"] for p in _live_pods(namespace, "e2e-cpu-stays")] == [cpu]
    gguf_before = _deployment(namespace, "e2e-cpu-stays")

    own_nodes.remove(gpu)
    failed = poll(lambda: phase(namespace, "e2e-awq", "Failed"), timeout=120, what="e2e-awq Failed again")
    assert "qwen2.5-instruct" in condition(failed, "Resolved")["message"]
    assert "engine" not in failed["status"] and failed["status"]["rejected"]
    gguf_after = _deployment(namespace, "e2e-cpu-stays")
    assert (gguf_after["metadata"]["generation"], gguf_after["metadata"]["labels"][HASH]) == \
        (gguf_before["metadata"]["generation"], gguf_before["metadata"]["labels"][HASH])
    assert phase(namespace, "e2e-cpu-stays", "Ready")


def test_a_new_gpu_does_not_move_a_placed_deployment_and_scaling_keeps_the_engine(namespace, operator, own_nodes,
                                                                                 cleanup):
    cpu = own_nodes.add("cpu")
    cleanup("modeldeployment", "e2e-sticky", namespace)
    apply(model_deployment("e2e-sticky", gguf(replicas=1, nodeSelector=own_nodes.selector)), namespace)
    placed = poll(lambda: phase(namespace, "e2e-sticky", "Ready"), timeout=120, what="e2e-sticky Ready")
    assert placed["status"]["accelerator"] == "cpu"  # accelerator auto: CPU is all there is
    before = _deployment(namespace, "e2e-sticky")

    own_nodes.add("gpu")  # auto would now prefer NVIDIA for a new deployment
    time.sleep(2)  # the operator's node watch sees it (the scale below must come after it)
    kubectl("scale", "modeldeployment/e2e-sticky", "-n", namespace, "--replicas=3")
    scaled = poll(lambda: (d := _deployment(namespace, "e2e-sticky")) and d["spec"]["replicas"] == 3 and d,
                  what="the Deployment scaled to 3")
    assert scaled["metadata"]["labels"][HASH] == before["metadata"]["labels"][HASH]
    assert scaled["spec"]["template"] == before["spec"]["template"]
    md = poll(lambda: phase(namespace, "e2e-sticky", "Ready", readyReplicas=3), timeout=120,
              what="three replicas ready")
    assert md["status"]["accelerator"] == "cpu" and md["metadata"]["generation"] == 2
    assert {p["spec"]["nodeName"] for p in _live_pods(namespace, "e2e-sticky")} == {cpu}
    assert len(events(namespace, "e2e-sticky", "Scaled")) == 1


def test_spec_update_rolls_out_a_new_template(namespace, operator, own_nodes, cleanup):
    own_nodes.add("cpu")
    cleanup("modeldeployment", "e2e-update", namespace)
    spec = gguf(replicas=1, nodeSelector=own_nodes.selector)
    apply(model_deployment("e2e-update", spec), namespace, manager="e2e")
    poll(lambda: phase(namespace, "e2e-update", "Ready"), timeout=120, what="e2e-update Ready")
    old = _deployment(namespace, "e2e-update")
    (old_pod,) = _live_pods(namespace, "e2e-update")

    apply(model_deployment("e2e-update", {**spec, "servedModelName": "renamed"}), namespace, manager="e2e")
    new = poll(lambda: (d := _deployment(namespace, "e2e-update")) and d["metadata"]["generation"] == 2 and d,
               what="the new template")
    assert new["metadata"]["labels"][HASH] != old["metadata"]["labels"][HASH]
    assert "renamed" in " ".join(new["spec"]["template"]["spec"]["containers"][0]["command"])
    assert new["metadata"]["uid"] == old["metadata"]["uid"]
    md = poll(lambda: phase(namespace, "e2e-update", "Ready", observedGeneration=2), timeout=120,
              what="generation 2 Ready")
    (new_pod,) = poll(lambda: (p := _live_pods(namespace, "e2e-update")) and
                      p[0]["metadata"]["uid"] != old_pod["metadata"]["uid"] and p, what="the new pod")
    assert new_pod["metadata"]["labels"][HASH] == new["metadata"]["labels"][HASH]
    assert md["status"]["engine"] == "llama.cpp"
    # The first rollout is in the status; a new template of the same engine is a RolloutStarted.
    (started,) = poll(lambda: events(namespace, "e2e-update", "RolloutStarted"), what="RolloutStarted")
    assert started["type"] == "Normal" and started["reportingComponent"] == "turnout.dev/operator"
    assert not events(namespace, "e2e-update", "EngineSelected")
    # The same Event through the API it was posted with: events.k8s.io/v1 selects on regarding.*.
    posted = json.loads(kubectl("get", "events.v1.events.k8s.io", "-n", namespace, "-o", "json", "--field-selector",
                                "regarding.name=e2e-update,reason=RolloutStarted"))["items"]
    assert [e["regarding"]["uid"] for e in posted] == [md["metadata"]["uid"]]
    assert posted[0]["action"] == "Apply"


# ----- pods failing and recovering ---------------------------------------------------------------------------


@pytest.mark.parametrize(("state", "reason", "in_message"), [
    ("CrashLoopBackOff", "CrashLoopBackOff", "last exit code 3"),
    ("OOMKilled", "OOMKilled", "more memory than its limit"),
    ("ImagePullBackOff", "ImagePullBackOff", "Back-off pulling image"),
])
def test_pod_failure_degrades_and_recovery_returns_to_ready(state, reason, in_message, namespace, operator,
                                                            own_nodes, kwok, cleanup):
    node = own_nodes.add("cpu")
    kwok.set_pod_state(node, state)
    name = f"e2e-{state.lower()}"
    cleanup("modeldeployment", name, namespace)
    apply(model_deployment(name, gguf(replicas=1, nodeSelector=own_nodes.selector)), namespace)
    degraded = poll(lambda: phase(namespace, name, "Degraded"), timeout=120, what=f"{name} Degraded")
    deg = condition(degraded, "Degraded")
    assert (deg["status"], deg["reason"]) == ("True", reason)
    assert in_message in deg["message"]
    poll(lambda: [e for e in events(namespace, name, "Degraded") if e["type"] == "Warning" and
                  reason in e["message"]], what="a Degraded warning")

    kwok.set_pod_state(node, "Running")
    ready = poll(lambda: phase(namespace, name, "Ready"), timeout=120, what=f"{name} Ready")
    assert condition(ready, "Degraded")["status"] == "False"
    assert condition(ready, "Degraded")["lastTransitionTime"] >= deg["lastTransitionTime"]
    poll(lambda: events(namespace, name, "Recovered"), what="a Recovered Event")


def test_unschedulable_by_the_scheduler_then_recovers(namespace, operator, own_nodes, kwok, cleanup):
    # the resolver looks at memory; the scheduler also at cpu: less than a model pod's CPU floor (250m)
    node = own_nodes.add("cpu", cpu="100m")
    cleanup("modeldeployment", "e2e-unschedulable", namespace)
    apply(model_deployment("e2e-unschedulable", gguf(replicas=1, nodeSelector=own_nodes.selector)), namespace)
    degraded = poll(lambda: phase(namespace, "e2e-unschedulable", "Degraded"), timeout=120, what="Degraded")
    deg = condition(degraded, "Degraded")
    assert deg["reason"] == "Unschedulable" and "Insufficient cpu" in deg["message"], deg

    kwok.set_allocatable(node, cpu="16")
    poll(lambda: phase(namespace, "e2e-unschedulable", "Ready"), timeout=120, what="Ready once the node fits")
    poll(lambda: events(namespace, "e2e-unschedulable", "Recovered"), what="a Recovered Event")


# ----- children changed behind its back; admission refusing one -----------------------------------------------


def test_children_changed_or_deleted_behind_its_back_are_restored(namespace, operator, fake_nodes, cleanup):
    cleanup("modeldeployment", "e2e-restore", namespace)
    apply(model_deployment("e2e-restore", gguf()), namespace)
    poll(lambda: settled(namespace, "e2e-restore"), what="e2e-restore reconciled")
    svc = poll(lambda: get_json("service", "e2e-restore", "-n", namespace), what="the Service")

    kubectl("delete", "service", "e2e-restore", "-n", namespace)
    restored = poll(lambda: (s := get_json("service", "e2e-restore", "-n", namespace)) and
                    s["metadata"]["uid"] != svc["metadata"]["uid"] and s, what="the Service re-created")
    assert restored["spec"]["selector"] == svc["spec"]["selector"]

    kubectl("scale", "deployment/e2e-restore", "-n", namespace, "--replicas=5")
    poll(lambda: _deployment(namespace, "e2e-restore")["spec"]["replicas"] == 0, what="the replicas put back")
    poll(lambda: not _pods(namespace, "e2e-restore"), what="the extra pods gone")


def test_a_child_admission_refuses_fails_the_object_then_recovers(namespace, operator, fake_nodes, cleanup):
    cleanup("modeldeployment", "e2e-refused", namespace)
    refusal = Refusal(namespace, "refuse-deployment", group="apps", resource="deployments",
                      operations=["CREATE", "UPDATE"], expression="object.metadata.name != 'e2e-refused'",
                      message="e2e: Deployments named e2e-refused are not admitted here",
                      probe=["create", "deployment", "e2e-refused", "--image=x", "-n", namespace])
    with refusal:
        apply(model_deployment("e2e-refused", gguf()), namespace)
        failed = poll(lambda: phase(namespace, "e2e-refused", "Failed"), what="e2e-refused Failed")
        assert condition(failed, "Resolved")["status"] == "True"
        degraded = condition(failed, "Degraded")
        assert (degraded["status"], degraded["reason"]) == ("True", "ApplyFailed")
        assert refusal.message in degraded["message"]
        assert _deployment(namespace, "e2e-refused") is None
        refusal.lift()
    # The next change is tried again.
    kubectl("patch", "modeldeployment", "e2e-refused", "-n", namespace, "--type=merge", "-p",
            '{"spec": {"replicas": 2}}')
    poll(lambda: _deployment(namespace, "e2e-refused"), what="the Deployment once admitted")
    poll(lambda: settled(namespace, "e2e-refused", 2) and
         condition(settled(namespace, "e2e-refused"), "Degraded").get("reason") != "ApplyFailed",
         what="generation 2 placed")


# ----- operator restarts, kills, scope, metrics -----------------------------------------------------------------


def _handled(namespace: str, *names: str) -> bool:
    return all(((get_json("modeldeployment", n, "-n", namespace) or {}).get("status") or {})
               .get("observedGeneration") == 1 for n in names)


def _operator_events(namespace: str) -> int:
    items = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json"))["items"]
    return sum(1 for e in items if e.get("reportingComponent") == "turnout.dev/operator")


def test_restarted_operator_writes_nothing(namespace, operator, own_nodes, cleanup):
    own_nodes.add("cpu")
    names = ("e2e-one", "e2e-two", "e2e-gpu-less")
    for name in names:
        cleanup("modeldeployment", name, namespace)
    apply(model_deployment("e2e-one", gguf(replicas=1, nodeSelector=own_nodes.selector)), namespace, manager="e2e")
    apply(model_deployment("e2e-two", gguf(replicas=2, nodeSelector=own_nodes.selector)), namespace)
    apply(model_deployment("e2e-gpu-less", awq(nodeSelector=own_nodes.selector)), namespace)  # rejected: no GPU
    poll(lambda: phase(namespace, "e2e-one", "Ready") and phase(namespace, "e2e-two", "Ready", readyReplicas=2)
         and phase(namespace, "e2e-gpu-less", "Failed"), timeout=120, what="Ready, Ready and Failed")
    # Each status says its generation was handled (what was reconciled is kept in memory: no annotation).
    poll(lambda: _handled(namespace, *names), what="observedGeneration 1 on each")
    assert not any(ANNOTATION in (get_json("modeldeployment", n, "-n", namespace)["metadata"].get("annotations") or {})
                   for n in names)
    time.sleep(2)  # the last Events and status writes of the rollouts land
    before = {n: get_json("modeldeployment", n, "-n", namespace)["metadata"]["resourceVersion"] for n in names}
    deployments = {n: _deployment(namespace, n)["metadata"]["generation"] for n in names[:2]}
    count = _operator_events(namespace)

    operator.stop()
    operator.start()
    # Every deployment was looked at again (kopf's resume handler), and nothing was written.
    poll(lambda: operator.total("turnout_operator_reconciles_total") >= len(names), what="three resumed reconciles")
    time.sleep(3)  # anything it would write, it writes now
    assert operator.total("turnout_operator_writes_total") == 0, operator.metrics()
    assert operator.total("turnout_operator_api_errors_total") == 0
    assert {n: get_json("modeldeployment", n, "-n", namespace)["metadata"]["resourceVersion"] for n in names} == \
        before, "kopf wrote nothing either"
    assert {n: _deployment(namespace, n)["metadata"]["generation"] for n in names[:2]} == deployments
    assert _operator_events(namespace) == count

    # A spec changed while the operator is down rolls out when it starts.
    old = _deployment(namespace, "e2e-one")["metadata"]["labels"][HASH]
    operator.stop()
    apply(model_deployment("e2e-one", gguf(replicas=1, nodeSelector=own_nodes.selector, servedModelName="later")),
          namespace, manager="e2e")
    operator.start()
    poll(lambda: _deployment(namespace, "e2e-one")["metadata"]["labels"][HASH] != old, what="the new template")
    poll(lambda: phase(namespace, "e2e-one", "Ready", observedGeneration=2), timeout=120, what="generation 2 Ready")


def test_killed_operator_converges_after_restart_without_duplicates(namespace, operator, fake_nodes, cleanup):
    import signal

    names = [f"e2e-kill-{i}" for i in range(6)] + ["e2e-kill.dotted"]
    for name in names:
        cleanup("modeldeployment", name, namespace)
    kubectl("apply", "--server-side", "-n", namespace, "-f", "-", stdin=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": [model_deployment(n, gguf()) for n in names]}))
    time.sleep(0.3)  # mid-reconcile: some applied, some not, statuses half written
    operator.stop(signal.SIGKILL)
    operator.start()
    poll(lambda: all(settled(namespace, n) for n in names), timeout=120, what="every deployment reconciled")
    mds = {get_json("modeldeployment", n, "-n", namespace)["metadata"]["uid"] for n in names}
    selector = "turnout.dev/deployment in (" + ",".join(n.replace(".", "-") for n in names) + ")"
    deployments = json.loads(kubectl("get", "deployments", "-n", namespace, "-l", selector, "-o", "json"))["items"]
    services = json.loads(kubectl("get", "services", "-n", namespace, "-l", selector, "-o", "json"))["items"]
    assert sorted(d["metadata"]["name"] for d in deployments) == sorted(n.replace(".", "-") for n in names)
    assert len(services) == len(names)
    assert all(c["metadata"]["ownerReferences"][0]["uid"] in mds for c in deployments + services)
    for name in names:  # none twice (killed between a status write and its Event, there is none)
        assert len(events(namespace, name, "EngineSelected")) <= 1, name


def test_killed_during_a_100_deployment_burst_leaves_no_duplicate_or_orphan(namespace, operator, fake_nodes, cleanup):
    import signal

    names = [f"e2e-burst-{i:03d}" for i in range(100)]
    for name in names:
        cleanup("modeldeployment", name, namespace)
    selector = "app.kubernetes.io/managed-by=turnout,turnout.dev/deployment"
    start = time.monotonic()
    kubectl("apply", "--server-side", "-n", namespace, "-f", "-", stdin=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": [model_deployment(n, gguf()) for n in names]}))

    def made() -> int:
        items = json.loads(kubectl("get", "deployments", "-n", namespace, "-l", selector, "-o", "json"))["items"]
        return sum(d["metadata"]["name"].startswith("e2e-burst-") for d in items)

    at_kill = poll(lambda: (n := made()) >= 20 and n, timeout=120, interval=0.2, what="the burst under way")
    operator.stop(signal.SIGKILL)
    operator.start()
    poll(lambda: all(settled(namespace, n) for n in names), timeout=300, interval=2, what="all 100 reconciled")
    seconds = time.monotonic() - start
    uids = {get_json("modeldeployment", n, "-n", namespace)["metadata"]["uid"]: n for n in names}
    children = json.loads(kubectl("get", "deployments,services", "-n", namespace, "-l", selector, "-o",
                                  "json"))["items"]
    burst = [c for c in children if c["metadata"]["name"].startswith("e2e-burst-")]
    per_kind = {kind: sorted(c["metadata"]["name"] for c in burst if c["kind"] == kind)
                for kind in ("Deployment", "Service")}
    assert per_kind["Deployment"] == sorted(names) and per_kind["Service"] == sorted(names)
    for child in burst:  # each owned by the live deployment of its own name, and by nothing else
        (owner,) = child["metadata"]["ownerReferences"]
        assert uids.get(owner["uid"]) == child["metadata"]["name"], child["metadata"]
    figures = {"deployments": 100, "children_made_when_killed": at_kill, "all_reconciled_after_apply_s":
               round(seconds, 1), "deployments_made": 100, "services_made": 100, "duplicates": 0, "orphans": 0}
    print(f"\n100-deployment burst, operator SIGKILLed: {figures}")
    record_results({"operator_sigkill_burst": figures})


def test_a_namespaced_operator_leaves_other_namespaces_alone(namespace, operator, fake_nodes, cleanup):
    other = f"{namespace}-other"
    kubectl("create", "namespace", other)
    cleanup("namespace", other)
    apply(model_deployment("e2e-elsewhere", gguf()), other)
    apply(model_deployment("e2e-here", gguf()), namespace)
    cleanup("modeldeployment", "e2e-here", namespace)
    poll(lambda: settled(namespace, "e2e-here"), what="the one in its namespace reconciled")
    time.sleep(2)
    md = get_json("modeldeployment", "e2e-elsewhere", "-n", other)
    assert not md.get("status") and not (md["metadata"].get("annotations") or {}).get(ANNOTATION)
    assert get_json("deployment", "e2e-elsewhere", "-n", other) is None


def test_operator_metrics_count_reconciles(operator):
    text = operator.metrics_text()
    assert "turnout_operator_reconciles_total" in text
    assert "turnout_operator_reconcile_duration_seconds_bucket" in text
