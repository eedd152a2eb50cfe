"""The operator on a real cluster: CRD admission, server-side apply, status subresource, scale, GC.

Run with ``KUBECONFIG=... pytest e2e -v`` (see docs/operator.md). The expected engine is
computed with the same resolver from the cluster's own nodes, so the tests hold on any
cluster: a CPU-only kind cluster, or one with GPUs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kubectl import KubectlError, condition, get_json, kubectl, poll

from turnout.api import ModelDeploymentSpec
from turnout.config import OperatorConfig
from turnout.hardware import parse_nodes
from turnout.resolver import Plan, resolve

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
DEGRADED_REASONS = {"ImagePullBackOff", "ErrImagePull", "CrashLoopBackOff", "OOMKilled", "Unschedulable",
                    "CreateContainerConfigError", "ProgressDeadlineExceeded"}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "ModelDeployment"]


def _apply(obj: dict, namespace: str) -> None:
    kubectl("apply", "--server-side", "-n", namespace, "-f", "-", stdin=json.dumps(obj))


def _md(namespace: str, name: str) -> dict | None:
    return get_json("modeldeployment", name, "-n", namespace)


def _settled(namespace: str, name: str) -> dict | None:
    """The object once the operator has reconciled its current generation."""
    md = _md(namespace, name)
    if md and (md.get("status") or {}).get("observedGeneration") == md["metadata"]["generation"]:
        return md
    return None


def test_crd_rejects_impossible_specs_at_admission(namespace):
    bad = {"apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": "bad-gguf-vllm"},
           "spec": {"model": {"name": "qwen2.5-instruct", "format": "gguf"}, "engine": "vllm"}}
    with pytest.raises(KubectlError) as info:
        _apply(bad, namespace)
    assert "llama.cpp" in info.value.stderr  # the CEL rule's message
    nameless = {**bad, "spec": {"model": {"format": "gguf"}}}
    with pytest.raises(KubectlError) as info:
        _apply(nameless, namespace)
    assert "name or model.uri" in info.value.stderr


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_resolve_as_the_resolver_says_for_this_cluster(example, namespace, operator):
    nodes = json.loads(kubectl("get", "nodes", "-o", "json"))["items"]
    hardware = parse_nodes(nodes)
    for doc in _docs(example):
        name = doc["metadata"]["name"]
        expected = resolve(ModelDeploymentSpec.model_validate(doc["spec"]), hardware, OperatorConfig())
        _apply(doc, namespace)
        md = poll(lambda name=name: _settled(namespace, name), what=f"{name} reconciled")
        status = md["status"]
        if isinstance(expected, Plan):
            assert (status.get("engine"), status.get("accelerator")) == (expected.engine, expected.accelerator)
            assert condition(md, "Resolved")["status"] == "True"
            assert status["endpoint"].startswith("http://") and status["endpoint"].endswith(f".{namespace}.svc:8000/v1")
            assert status["phase"] in {"Deploying", "Ready", "Degraded"}
            if status["phase"] == "Degraded":
                assert condition(md, "Degraded")["reason"] in DEGRADED_REASONS
        else:
            assert status["phase"] == "Failed"
            assert condition(md, "Resolved")["reason"] == "Rejected"
            assert {r["engine"] for r in status["rejected"]} >= {"vllm", "llama.cpp", "transformers"}


@pytest.fixture
def cpu_model(namespace, operator):
    doc = _docs(ROOT / "examples" / "qwen-gguf-cpu.yaml")[0]
    doc["metadata"]["name"] = "e2e-gguf"
    nodes = json.loads(kubectl("get", "nodes", "-o", "json"))["items"]
    if not isinstance(resolve(ModelDeploymentSpec.model_validate(doc["spec"]), parse_nodes(nodes)), Plan):
        pytest.skip("no node of this cluster can run the CPU example")
    _apply(doc, namespace)
    poll(lambda: _settled(namespace, "e2e-gguf"), what="e2e-gguf reconciled")
    yield doc
    kubectl("delete", "modeldeployment", "e2e-gguf", "-n", namespace, "--ignore-not-found", "--wait=false")


def test_children_are_server_side_applied_and_owned(cpu_model, namespace):
    md = _md(namespace, "e2e-gguf")
    dep = poll(lambda: get_json("deployment", "e2e-gguf", "-n", namespace), what="the Deployment")
    svc = get_json("service", "e2e-gguf", "-n", namespace)
    for child in (dep, svc):
        (ref,) = child["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["uid"], ref["controller"]) == ("ModelDeployment", md["metadata"]["uid"], True)
        managers = {(m["manager"], m["operation"]) for m in child["metadata"]["managedFields"]}
        assert ("turnout", "Apply") in managers
    # The operator writes status only (and kopf its annotations): spec stays the user's.
    spec_managers = {m["manager"] for m in md["metadata"]["managedFields"]
                     if "f:spec" in json.dumps(m.get("fieldsV1", {}))}
    assert "turnout" not in spec_managers
    status_writers = {m["manager"] for m in md["metadata"]["managedFields"] if m.get("subresource") == "status"}
    assert status_writers, "status is written through the status subresource"


def test_scale_changes_replicas_without_a_rollout(cpu_model, namespace):
    before = poll(lambda: get_json("deployment", "e2e-gguf", "-n", namespace), what="the Deployment")
    kubectl("scale", "modeldeployment/e2e-gguf", "-n", namespace, "--replicas=2")
    after = poll(lambda: (d := get_json("deployment", "e2e-gguf", "-n", namespace))
                 and d["spec"]["replicas"] == 2 and d, what="the Deployment scaled to 2")
    label = "turnout.dev/spec-hash"
    assert after["metadata"]["labels"][label] == before["metadata"]["labels"][label]
    assert after["spec"]["template"] == before["spec"]["template"]
    md = poll(lambda: _settled(namespace, "e2e-gguf"), what="the scale reconciled")
    assert md["status"]["engine"] == "llama.cpp"


def test_delete_garbage_collects_the_children(cpu_model, namespace):
    poll(lambda: get_json("deployment", "e2e-gguf", "-n", namespace), what="the Deployment")
    kubectl("delete", "modeldeployment", "e2e-gguf", "-n", namespace, "--wait=true", "--timeout=60s")
    poll(lambda: get_json("deployment", "e2e-gguf", "-n", namespace) is None
         and get_json("service", "e2e-gguf", "-n", namespace) is None, what="the children garbage-collected")


def test_operator_metrics_count_reconciles(operator):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{operator['metrics']}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "turnout_operator_reconciles_total" in text
    assert "turnout_operator_reconcile_duration_seconds_bucket" in text
