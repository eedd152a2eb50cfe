"""The InferencePool (Gateway API Inference Extension) of a ModelDeployment, checked against the upstream CRD."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from turnout.api import ModelDeployment, ModelDeploymentSpec
from turnout.config import OperatorConfig, parse_config
from turnout.hardware import ClusterFeatures, parse_nodes
from turnout.render import INFERENCE_POOL_API_VERSION, ROLE_LABEL, child_name, render, render_inference_pool
from turnout.resolver import Plan, resolve

ROOT = Path(__file__).resolve().parents[2]
POOL_CRD = ROOT.parent / "shared" / "crds" / "inference.networking.k8s.io_inferencepools.yaml"
TWO_NODES = ROOT / "examples" / "nodes" / "h100-2x8.yaml"
CPU_NODE = {"metadata": {"name": "cpu-1", "labels": {"kubernetes.io/arch": "amd64"}}, "spec": {},
            "status": {"allocatable": {"cpu": "16", "memory": "64Gi"}}}
GGUF = {"model": {"name": "qwen2.5-instruct", "size": 1.5, "format": "gguf", "quantization": "Q4_K_M"}}


@pytest.fixture(scope="module")
def pool_schema() -> dict[str, Any]:
    if not POOL_CRD.exists():
        pytest.skip(f"{POOL_CRD} is absent: the upstream InferencePool CRD comes from ../shared/crds")
    crd = yaml.safe_load(POOL_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def _plan(spec: dict[str, Any], nodes: list[dict[str, Any]], lws: bool = False) -> Plan:
    plan = resolve(ModelDeploymentSpec.model_validate(spec), parse_nodes(nodes, ClusterFeatures(leader_worker_set=lws)))
    assert isinstance(plan, Plan), plan.to_dict()
    return plan


def _md(name: str, spec: dict[str, Any]) -> ModelDeployment:
    return ModelDeployment.model_validate({"metadata": {"name": name, "namespace": "models"}, "spec": spec})


def test_the_pool_selects_the_model_pods_on_the_shim_port(pool_schema: dict) -> None:
    config = OperatorConfig(port=8001)
    children = render(_plan(GGUF, [CPU_NODE]), _md("Qwen.Small", GGUF), config, inference_pool=True)
    pool = next(c for c in children if c["kind"] == "InferencePool")
    jsonschema.validate(pool, pool_schema)
    deployment = next(c for c in children if c["kind"] == "Deployment")
    assert pool["apiVersion"] == INFERENCE_POOL_API_VERSION
    assert pool["metadata"]["name"] == child_name("Qwen.Small")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pool["spec"]["targetPorts"] == [{"number": 8001}]
    assert "endpointPickerRef" not in pool["spec"]  # none configured
    assert "InferencePool" not in {c["kind"] for c in render(_plan(GGUF, [CPU_NODE]), _md("q", GGUF), config)}


def test_the_endpoint_picker_reference_from_the_operator_config(pool_schema: dict) -> None:
    config = parse_config({"inferencePool": {"endpointPicker": {"name": "{name}-epp", "port": 9002,
                                                                "failureMode": "FailOpen"}}})
    pool = render_inference_pool(_md("qwen", GGUF), config, _plan(GGUF, [CPU_NODE]))
    jsonschema.validate(pool, pool_schema)
    assert pool["spec"]["endpointPickerRef"] == {"name": "qwen-epp", "port": {"number": 9002},
                                                 "failureMode": "FailOpen"}
    # A picker of another kind (no port needed by the CRD's rule, but one is kept when given).
    other = parse_config({"inferencePool": {"endpointPicker": {"name": "picker", "kind": "Gateway",
                                                               "group": "example.com"}}})
    ref = render_inference_pool(_md("qwen", GGUF), other)["spec"]["endpointPickerRef"]
    assert (ref["kind"], ref["group"]) == ("Gateway", "example.com")
    jsonschema.validate(render_inference_pool(_md("qwen", GGUF), other), pool_schema)


def test_a_multi_node_pool_selects_the_leaders(pool_schema: dict) -> None:
    nodes = yaml.safe_load(TWO_NODES.read_text())["items"]
    spec = {"model": {"name": "llama-3.1-instruct", "size": 405, "format": "pytorch"}}
    pool = next(c for c in render(_plan(spec, nodes, lws=True), _md("llama", spec), inference_pool=True)
                if c["kind"] == "InferencePool")
    jsonschema.validate(pool, pool_schema)
    assert pool["spec"]["selector"]["matchLabels"][ROLE_LABEL] == "leader"


def test_a_bad_picker_config_is_refused() -> None:
    from turnout.config import ConfigError

    with pytest.raises(ConfigError, match="failureMode"):
        parse_config({"inferencePool": {"endpointPicker": {"name": "x", "failureMode": "Sometimes"}}})
