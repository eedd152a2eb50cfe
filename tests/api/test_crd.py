"""The CRD: generated from the typed models, structural, valid, in sync with the committed file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml
from openapi import cel_rules, crd_json_schema

from turnout.api import ModelDeploymentSpec, crd

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "crds" / crd.CRD_FILENAME
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml"))


def _schema() -> dict[str, Any]:
    return crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_matches_the_models() -> None:
    assert COMMITTED.read_text() == crd.render_yaml(), "run: python -m turnout.api.crd"


def test_check_mode_reports_drift(tmp_path: Path) -> None:
    assert crd.main(["--output-dir", str(tmp_path), "--check"]) == 1
    assert crd.main(["--output-dir", str(tmp_path)]) == 0
    assert crd.main(["--output-dir", str(tmp_path), "--check"]) == 0


def _walk(node: dict[str, Any], path: str, problems: list[str]) -> None:
    for key in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "const", "title", "default", "definitions"):
        if key in node and (key, path) != ("default", ".spec.replicas"):
            problems.append(f"{path}: has {key}")
    if node.get("additionalProperties") is False:
        problems.append(f"{path}: additionalProperties false")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties beside additionalProperties")
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{path}: no type")
    for name, sub in (node.get("properties") or {}).items():
        if (path.startswith(".spec") or path.startswith(".status")) and not sub.get("description"):
            problems.append(f"{path}.{name}: no description")
        _walk(sub, f"{path}.{name}", problems)
    if isinstance(node.get("items"), dict):
        _walk(node["items"], f"{path}[]", problems)
    if isinstance(node.get("additionalProperties"), dict):
        _walk(node["additionalProperties"], f"{path}{{}}", problems)


def test_schema_is_structural_and_described() -> None:
    problems: list[str] = []
    _walk(_schema(), "", problems)
    assert problems == []


def test_only_engine_args_is_free_form() -> None:
    free: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        if node.get("x-kubernetes-preserve-unknown-fields"):
            free.append(path)
        for name, sub in (node.get("properties") or {}).items():
            walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(_schema()["properties"]["spec"], ".spec")
    walk(_schema()["properties"]["status"], ".status")
    assert free == [".spec.engineArgs"]


@pytest.mark.parametrize("version", ["1.30.0", kubernetes_validate.latest_version()])
def test_crd_object_is_valid_kubernetes(version: str) -> None:
    kubernetes_validate.validate(crd.crd(), version, strict=True)


def test_printer_columns_and_subresources() -> None:
    version = crd.crd()["spec"]["versions"][0]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    for column in ("Engine", "Accelerator", "Ready", "Phase", "Age", "Endpoint"):
        assert column in names
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert "md" not in crd.crd()["spec"]["names"]["shortNames"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate_against_the_schema(path: Path) -> None:
    schema = crd_json_schema()
    for doc in yaml.safe_load_all(path.read_text()):
        jsonschema.validate(doc, schema)
        ModelDeploymentSpec.model_validate(doc["spec"])
        for where, rule, message in cel_rules(_schema()["properties"]["spec"], "spec"):
            assert _cel(rule, _at(doc, where)), f"{path.name}: {where}: {message}"


def _at(doc: dict[str, Any], path: str) -> Any:
    node: Any = doc
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _cel(rule: str, value: Any) -> bool:
    if value is None:
        return True  # the rule's object is absent: nothing to check
    env = celpy.Environment()
    return bool(env.program(env.compile(rule)).evaluate({"self": celpy.json_to_cel(value)}))


CEL_CASES = [
    {"model": {"name": "x"}},
    {"model": {"format": "gguf"}},
    {"model": {"name": "x", "format": "gguf"}, "engine": "vllm"},
    {"model": {"name": "x", "format": "ggufv2"}, "engine": "llama.cpp"},
    {"model": {"name": "x", "format": "gguf"}, "engine": "auto"},
    {"model": {"name": "x", "format": "mlx"}, "engine": "transformers"},
    {"model": {"name": "x", "format": "mlx"}},
    {"model": {"name": "x"}, "engine": "mlx", "accelerator": {"type": "nvidia"}},
    {"model": {"name": "x"}, "engine": "mlx", "accelerator": {"type": "metal"}},
    {"model": {"name": "x"}, "engine": "vllm", "accelerator": {"type": "cpu"}},
    {"model": {"name": "x"}, "engine": "sglang", "accelerator": {"type": "metal"}},
    {"model": {"name": "x"}, "engine": "vllm", "accelerator": {"type": "ascend"}},
    {"model": {"uri": "hf://a/b"}, "cache": {"size": "1Gi", "existingClaim": "c"}},
    {"model": {"uri": "hf://a/b"}, "cache": {"existingClaim": "c"}},
    {"model": {"name": "x"}, "autoscaling": {"maxReplicas": 3}},
    {"model": {"name": "x"}, "autoscaling": {"minReplicas": 0, "maxReplicas": 1}},
    {"model": {"name": "x"}, "autoscaling": {"minReplicas": 3, "maxReplicas": 3}},
    {"model": {"name": "x"}, "autoscaling": {"minReplicas": 4, "maxReplicas": 3}},
    {"model": {"name": "x"}, "lora": {}, "adapters": [{"name": "sql", "uri": "hf://o/sql-lora"}]},
    {"model": {"name": "x"}, "adapters": [{"name": "sql", "uri": "hf://o/sql-lora"}]},
    {"model": {"name": "x"}, "adapters": []},
    {"model": {"name": "x"}, "servedModelName": "sql", "lora": {},
     "adapters": [{"name": "sql", "uri": "hf://o/sql-lora"}]},
    {"model": {"name": "x"}, "servedModelName": "base", "lora": {"maxLoaded": 2},
     "adapters": [{"name": "sql", "uri": "hf://o/sql-lora"}]},
    {"model": {"name": "x"}, "lora": {}, "adapters": [{"name": "sql", "uri": "pvc://claim/../etc"}]},
    {"model": {"name": "x"}, "lora": {}, "adapters": [{"name": "sql", "uri": "file:///a/../b"}]},
]


@pytest.mark.parametrize("spec", CEL_CASES)
def test_cel_rules_agree_with_the_validators(spec: dict[str, Any]) -> None:
    """What the API server rejects at admission (CEL) is what the CLI rejects (pydantic)."""
    doc = {"spec": spec}
    cel_ok = all(_cel(rule, _at(doc, where)) for where, rule, _ in cel_rules(_schema()["properties"]["spec"], "spec"))
    try:
        ModelDeploymentSpec.model_validate(spec)
        pydantic_ok = True
    except ValueError:
        pydantic_ok = False
    assert cel_ok == pydantic_ok


def test_autoscaling_and_routing_fields_in_the_schema() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    auto = spec["autoscaling"]
    assert auto["required"] == ["maxReplicas"]
    assert auto["properties"]["minReplicas"]["minimum"] == 0
    assert auto["properties"]["targetInFlightPerReplica"]["exclusiveMinimum"] is True
    assert auto["x-kubernetes-validations"] == [
        {"rule": "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
         "message": "autoscaling: minReplicas must not be greater than maxReplicas"}]
    routing = spec["routing"]["properties"]
    assert routing["strategy"]["enum"] == ["LeastRequests", "PrefixHash"]
    assert (routing["loadFactor"]["minimum"], routing["loadFactor"]["exclusiveMinimum"]) == (1, True)
    assert (routing["prefixCharLength"]["minimum"], routing["prefixCharLength"]["maximum"]) == (1, 10000)
    assert all(p.get("description") for p in [*routing.values(), *auto["properties"].values()])


def test_min_above_max_says_so() -> None:
    with pytest.raises(ValueError, match="minReplicas must not be greater than maxReplicas"):
        ModelDeploymentSpec.model_validate({"model": {"name": "x"},
                                            "autoscaling": {"minReplicas": 2, "maxReplicas": 1}})
    spec = ModelDeploymentSpec.model_validate({"model": {"name": "x"}, "autoscaling": {"maxReplicas": 2}})
    assert spec.autoscaling is not None
    assert (spec.autoscaling.min_replicas, spec.autoscaling.target_in_flight_per_replica,
            spec.autoscaling.scale_down_delay_seconds) == (1, 4, 300)


def test_replicas_is_defaulted_by_the_api_server_for_the_scale_subresource() -> None:
    """GET .../scale fails while .spec.replicas holds nothing: the CRD defaults it, as the models do."""
    replicas = _schema()["properties"]["spec"]["properties"]["replicas"]
    assert replicas["default"] == ModelDeploymentSpec.model_fields["replicas"].default == 1


def test_adapters_in_the_schema() -> None:
    """Names are the list's map key (unique at admission), bounded in count and shape; status lists them by name."""
    schema = _schema()
    adapters = schema["properties"]["spec"]["properties"]["adapters"]
    assert adapters["x-kubernetes-list-type"] == "map"
    assert adapters["x-kubernetes-list-map-keys"] == ["name"]
    assert adapters["maxItems"] == 32
    assert adapters["items"]["required"] == ["name", "uri"]
    assert adapters["items"]["properties"]["name"]["pattern"].startswith("^[a-z0-9]")
    assert schema["properties"]["status"]["properties"]["adapters"]["x-kubernetes-list-map-keys"] == ["name"]
    with pytest.raises(ValueError, match="duplicate names"):
        ModelDeploymentSpec.model_validate({"model": {"name": "x"}, "lora": {}, "adapters": [
            {"name": "a", "uri": "hf://o/a"}, {"name": "a", "uri": "hf://o/b"}]})
    with pytest.raises(ValueError, match="pattern"):
        ModelDeploymentSpec.model_validate({"model": {"name": "x"}, "lora": {}, "adapters": [
            {"name": "Not A Name", "uri": "hf://o/a"}]})
