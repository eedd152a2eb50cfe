"""Multi-node plans on a real API server: LeaderWorkerSet discovered at run time, applied, and read back.

No LeaderWorkerSet controller runs: the CRD (kubernetes-sigs/lws v0.10.0, from ``../shared/crds``) makes the
API server store and validate the object, and the test plays the controller's part by writing its status
subresource. The test removes the LWS CRD first (every LeaderWorkerSet of the cluster goes with it: point
KUBECONFIG at a cluster of your own), so that it sees the operator reject a 405B model without it and place
the same, untouched spec once the CRD is installed.

Run with ``KUBECONFIG=... pytest e2e/test_lws_e2e.py -v``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubectl import apply, condition, get_json, kubectl, model_deployment, phase, poll, settled
from procs import OperatorProcess

from conftest import RUN

ROOT = Path(__file__).resolve().parent.parent
CRD_DIR = ROOT.parent / "shared" / "crds"
CRD_FILE = CRD_DIR / "leaderworkerset.x-k8s.io_leaderworkersets.yaml"
LWS_CRD = "leaderworkersets.leaderworkerset.x-k8s.io"
LWS = LWS_CRD  # kubectl's fully qualified resource name (no stale discovery cache between install and use)
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.memory": "81559",
        "nvidia.com/gpu.compute.major": "9", "nvidia.com/gpu.compute.minor": "0"}


def _crd_file() -> Path | None:
    """The upstream CRD from ``../shared/crds`` (next to the checkout), or None."""
    return CRD_FILE if CRD_FILE.is_file() else None


@pytest.fixture
def lws_namespace() -> Iterator[str]:
    name = f"turnout-e2e-lws-{RUN}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def lws_operator(crds: None, lws_namespace: str, tmp_path: Path,
                 operator_paused: OperatorProcess) -> Iterator[OperatorProcess]:
    """An operator of its own for this namespace, asking API discovery every 2 s (not 60). The session operator
    waits meanwhile: it would restart its watches as this one does (kopf stops on the deleted CRD's watch 404), which
    is not what the tests after this one are about."""
    proc = OperatorProcess(["--namespace", lws_namespace, "--discovery-interval", "2"], tmp_path / "operator.log")
    proc.start()
    yield proc
    proc.stop()


def _remove_lws_crd() -> None:
    kubectl("delete", "crd", LWS_CRD, "--ignore-not-found", "--wait=true", timeout=120)
    poll(lambda: "leaderworkerset.x-k8s.io/v1" not in kubectl("api-versions").split(), timeout=60,
         what="leaderworkerset.x-k8s.io/v1 no longer served")


def _llama_405b(selector: dict[str, str]) -> dict[str, Any]:
    example = yaml.safe_load((ROOT / "examples" / "llama-405b-lws.yaml").read_text())
    spec = {k: v for k, v in example["spec"].items() if k != "cache"}  # no RWX storage class on the test cluster
    return {**spec, "nodeSelector": selector}


def _play_lws_ready(namespace: str, name: str) -> None:
    """What the LWS controller writes once every group is up (status subresource)."""
    lws = get_json(LWS, name, "-n", namespace)
    assert lws is not None
    replicas = lws["spec"].get("replicas", 1)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {"observedGeneration": lws["metadata"]["generation"], "replicas": replicas, "readyReplicas": replicas,
              "updatedReplicas": replicas, "hpaPodSelector": f"leaderworkerset.sigs.k8s.io/name={name}",
              "conditions": [
                  {"type": "Available", "status": "True", "reason": "AllGroupsReady",
                   "message": "All replicas are ready",
                   "lastTransitionTime": now},
                  {"type": "Progressing", "status": "False", "reason": "Ready", "message": "Replicas are ready",
                   "lastTransitionTime": now}]}
    kubectl("patch", LWS, name, "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": status}))


def test_405b_is_rejected_without_lws_then_runs_as_a_leader_worker_set(lws_namespace, lws_operator, own_nodes):
    crd = _crd_file()
    if crd is None:
        pytest.skip(f"the upstream LeaderWorkerSet CRD {CRD_FILE} is absent (it comes from ../shared/crds)")
    _remove_lws_crd()
    ns = lws_namespace
    for _ in range(2):
        own_nodes.add("gpu", gpus=8, cpu="220", memory="2Ti", labels=H100)
    apply(model_deployment("llama-405b", _llama_405b(own_nodes.selector)), ns, manager="e2e")

    # An apply racing the CRD's removal answers 404: the operator asks discovery again and rejects the plan.
    def rejected() -> dict[str, Any] | None:
        md = phase(ns, "llama-405b", "Failed")
        return md if md and condition(md, "Resolved").get("reason") == "Rejected" else None

    failed = poll(rejected, timeout=90, what="rejected without LWS")
    resolved = condition(failed, "Resolved")
    assert "install LeaderWorkerSet" in resolved["message"], resolved["message"]
    generation = failed["metadata"]["generation"]

    kubectl("apply", "--server-side", "-f", str(crd))
    poll(lambda: "leaderworkerset.x-k8s.io/v1" in kubectl("api-versions").split(), timeout=60,
         what="leaderworkerset.x-k8s.io/v1 served")
    # The operator's discovery sees it, restarts its watches and places the very same spec (same generation).
    lws = poll(lambda: get_json(LWS, "llama-405b", "-n", ns), timeout=90,
               what="the LeaderWorkerSet applied once LWS is installed")
    assert lws["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    # Server-side applied: the API server accepted the rendered object against the upstream schema.
    shown = get_json(LWS, "llama-405b", "-n", ns, "--show-managed-fields") or {}
    assert any(m.get("operation") == "Apply" for m in shown["metadata"].get("managedFields") or [])
    assert get_json("deployment", "llama-405b", "-n", ns) is None
    service = poll(lambda: get_json("service", "llama-405b", "-n", ns), timeout=30, what="the Service")
    leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["metadata"]["labels"]
    worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= leader.items()
    assert not service["spec"]["selector"].items() <= worker.items()
    deploying = poll(lambda: phase(ns, "llama-405b", "Deploying"), timeout=60, what="Deploying")
    assert deploying["metadata"]["generation"] == generation

    _play_lws_ready(ns, "llama-405b")
    ready = poll(lambda: phase(ns, "llama-405b", "Ready"), timeout=60, what="Ready from the LWS status")
    status = ready["status"]
    assert (status["tensorParallelSize"], status["pipelineParallelSize"], status["nodesPerReplica"],
            status["devicesPerNode"]) == (8, 2, 2, 8), status
    assert condition(ready, "Available")["status"] == "True"
    assert settled(ns, "llama-405b", generation) is not None

    # Garbage collection: deleting the ModelDeployment takes the LeaderWorkerSet with it.
    kubectl("delete", "modeldeployment", "llama-405b", "-n", ns)
    poll(lambda: get_json(LWS, "llama-405b", "-n", ns) is None or None, timeout=60,
         what="the LeaderWorkerSet garbage-collected")
