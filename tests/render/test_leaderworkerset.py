"""A replica over several nodes: the LeaderWorkerSet it renders, checked against the upstream CRD."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from turnout.api import ModelDeployment, ModelDeploymentSpec
from turnout.config import OperatorConfig
from turnout.hardware import ClusterFeatures, parse_nodes
from turnout.render import LWS_API_VERSION, ROLE_LABEL, render, shim_args
from turnout.resolver import Plan, resolve
from turnout.shimargs import ShimArgs, expand_env

ROOT = Path(__file__).resolve().parents[2]
LWS_CRD = ROOT.parent / "shared" / "crds" / "leaderworkerset.x-k8s.io_leaderworkersets.yaml"
TWO_NODES = ROOT / "examples" / "nodes" / "h100-2x8.yaml"
LLAMA405 = {"model": {"name": "llama-3.1-instruct", "size": 405, "format": "pytorch"}}
# What LeaderWorkerSet sets in a worker's containers (and the kubelet expands in its command).
WORKER_ENV = {"LWS_LEADER_ADDRESS": "llama-405b-0.llama-405b.ns", "LWS_WORKER_INDEX": "1", "LWS_GROUP_SIZE": "2"}


def _plan(spec: dict[str, Any]) -> Plan:
    hw = parse_nodes(yaml.safe_load(TWO_NODES.read_text())["items"], ClusterFeatures(leader_worker_set=True))
    plan = resolve(ModelDeploymentSpec.model_validate(spec), hw)
    assert isinstance(plan, Plan), plan.to_dict()
    return plan


def _md(spec: dict[str, Any]) -> ModelDeployment:
    return ModelDeployment.model_validate({"metadata": {"name": "llama-405b", "namespace": "ns"}, "spec": spec})


def _children(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["kind"]: c for c in render(_plan(spec), _md(spec))}


@pytest.fixture(scope="module")
def lws_schema() -> dict[str, Any]:
    if not LWS_CRD.exists():
        pytest.skip(f"{LWS_CRD} is absent: the upstream LeaderWorkerSet CRD comes from ../shared/crds")
    crd = yaml.safe_load(LWS_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_the_leaderworkerset_is_valid_against_the_upstream_schema(lws_schema: dict, engine: str) -> None:
    spec = {**LLAMA405, "engine": engine, "replicas": 2, "apiKeySecretRef": {"name": "key"}}
    lws = _children(spec)["LeaderWorkerSet"]
    jsonschema.validate(lws, lws_schema)
    assert lws["apiVersion"] == LWS_API_VERSION
    template = lws["spec"]["leaderWorkerTemplate"]
    assert template["size"] == 2 and lws["spec"]["replicas"] == 2
    assert template["restartPolicy"] == "RecreateGroupOnPodRestart"
    for role in ("leaderTemplate", "workerTemplate"):
        pod = template[role]["spec"]
        (container,) = pod["containers"]
        assert container["resources"]["limits"] == {"nvidia.com/gpu": "8"}
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        assert any(v["name"] == "dshm" for v in pod["volumes"])


def test_a_schema_violation_is_caught(lws_schema: dict) -> None:
    lws = _children(LLAMA405)["LeaderWorkerSet"]
    lws["spec"]["leaderWorkerTemplate"]["restartPolicy"] = "Sometimes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(lws, lws_schema)


def test_the_service_selects_only_the_leaders() -> None:
    children = _children(LLAMA405)
    assert set(children) == {"LeaderWorkerSet", "Service"}  # no Deployment
    selector = children["Service"]["spec"]["selector"]
    assert selector[ROLE_LABEL] == "leader"
    template = children["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]
    assert template["leaderTemplate"]["metadata"]["labels"][ROLE_LABEL] == "leader"
    assert template["workerTemplate"]["metadata"]["labels"][ROLE_LABEL] == "worker"
    leader_labels = template["leaderTemplate"]["metadata"]["labels"]
    assert all(leader_labels[k] == v for k, v in selector.items())


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_leader_and_worker_commands_are_what_the_shim_parses(engine: str) -> None:
    """Rendered by the operator, expanded by the kubelet from LeaderWorkerSet's env, parsed by the shim."""
    spec = {**LLAMA405, "engine": engine}
    plan = _plan(spec)
    template = _children(spec)["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]
    parsed_spec = ModelDeploymentSpec.model_validate(spec)
    for role, env, rank in (("leader", {**WORKER_ENV, "LWS_WORKER_INDEX": "0"}, 0), ("worker", WORKER_ENV, 1)):
        argv = template[f"{role}Template"]["spec"]["containers"][0]["command"]
        parsed = ShimArgs.parse(expand_env(argv, env)[1:])
        expected = shim_args(plan, parsed_spec, "llama-405b", OperatorConfig(), role).with_env(env)
        assert parsed == expected
        assert (parsed.nnodes, parsed.node_rank, parsed.is_worker) == (2, rank, rank > 0)
        assert parsed.leader_address == WORKER_ENV["LWS_LEADER_ADDRESS"]
        assert (parsed.tensor_parallel_size, parsed.pipeline_parallel_size) == (
            (8, 2) if engine == "vllm" else (16, 1))
    worker_argv = template["workerTemplate"]["spec"]["containers"][0]["command"]
    assert "$(LWS_WORKER_INDEX)" in worker_argv and "$(LWS_LEADER_ADDRESS)" in worker_argv


def test_an_unexpanded_rank_is_refused_with_a_reason(capsys: pytest.CaptureFixture[str]) -> None:
    template = _children(LLAMA405)["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]
    argv = template["workerTemplate"]["spec"]["containers"][0]["command"]
    with pytest.raises(SystemExit):
        ShimArgs.parse(argv[1:])
    assert "$(LWS_WORKER_INDEX) was not expanded" in capsys.readouterr().err


def test_expand_env_follows_the_kubelet() -> None:
    assert expand_env(["$(A)", "x$(A)y", "$$(A)", "$(MISSING)"], {"A": "1"}) == ["1", "x1y", "$(A)", "$(MISSING)"]


def test_a_readwriteonce_cache_is_not_shared_across_nodes() -> None:
    spec = {**LLAMA405, "cache": {"size": "1Ti"}}
    plan = _plan(spec)
    assert any("ReadWriteOnce claim cannot be mounted on 2 nodes" in n for n in plan.notes)
    children = _children(spec)
    assert "PersistentVolumeClaim" not in children
    pod = children["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]
    assert {"name": "model-cache", "emptyDir": {}} in pod["volumes"]
    shared = _children({**LLAMA405, "cache": {"size": "1Ti", "accessModes": ["ReadWriteMany"]}})
    claim = shared["PersistentVolumeClaim"]
    pod = shared["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}} in pod["volumes"]
