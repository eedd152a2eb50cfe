"""Bad input at admission: what the CRD refuses (schema and CEL) and the message `kubectl apply` prints.

The API server validates with the CRD's structural schema (enums, ranges, unknown
fields) and its CEL rules; here the schema is checked with jsonschema (converted as
in ``tests/api/openapi.py``) and the rules are evaluated with cel-python, the same
way ``tests/api/test_crd.py`` checks that they agree with the pydantic validators.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import celpy
import jsonschema
import pytest
from openapi import cel_rules, crd_json_schema

from turnout.api import ModelDeploymentSpec
from turnout.api import crd as crd_module

GOOD: dict[str, Any] = {
    "apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment",
    "metadata": {"name": "m", "namespace": "default"},
    "spec": {"model": {"name": "qwen2.5-instruct", "size": 0.5, "format": "gguf"}, "replicas": 1},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    node = doc
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return doc


SCHEMA_CASES = [
    ("spec.replicas", -1, "-1 is less than the minimum of 0"),
    ("spec.accelerator", {"type": "auto", "count": 0}, "0 is less than the minimum of 1"),
    ("spec.engine", "tensorrt", "'tensorrt' is not one of"),
    ("spec.accelerator", {"type": "tpu"}, "'tpu' is not one of"),
    ("spec.model.type", "image", "'image' is not one of"),
    ("spec.replicas", "two", "'two' is not of type 'integer'"),
    ("spec.enginee", "vllm", "'enginee' was unexpected"),
    ("spec.model", {"uri": "ftp://host/model.gguf"}, "does not match"),
]


@pytest.mark.parametrize(("path", "value", "message"), SCHEMA_CASES, ids=[f"{c[0]}={c[1]!r}" for c in SCHEMA_CASES])
def test_schema_rejects_bad_enums_ranges_types_and_typos(path: str, value: Any, message: str) -> None:
    schema = crd_json_schema()
    jsonschema.validate(GOOD, schema)
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(_with(path, value)))
    assert errors, f"{path}={value!r} was admitted"
    # nullable fields are anyOf(type, null): the readable message is in the error's context
    messages = [m.message for e in errors for m in (e, *e.context)]
    assert any(message in m for m in messages), messages


def _failing_rules(spec: dict[str, Any]) -> list[str]:
    """Messages of the spec's CEL rules that ``spec`` breaks, as the API server would print them."""
    schema = crd_module.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    env = celpy.Environment()
    failed = []
    for where, rule, message in cel_rules(schema["properties"]["spec"], "spec"):
        node: Any = {"spec": spec}
        for part in where.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and not env.program(env.compile(rule)).evaluate({"self": celpy.json_to_cel(node)}):
            failed.append(message)
    return failed


CEL_CASES = [
    ({"model": {"name": "x", "format": "gguf"}, "engine": "vllm"}, "gguf models are served by llama.cpp"),
    ({"model": {"name": "x", "format": "ggufv2"}, "engine": "sglang"}, "gguf models are served by llama.cpp"),
    ({"model": {"name": "x", "format": "mlx"}, "engine": "vllm"}, "mlx models are served by the mlx engine"),
    ({"model": {"name": "x"}, "engine": "vllm", "accelerator": {"type": "cpu"}},
     "vllm and sglang need an NVIDIA or Ascend"),
    ({"model": {"format": "gguf"}}, "model.name or model.uri is required"),
    ({"model": {"uri": "pvc://weights/../other-claim/m.gguf"}}, "model.uri: '..' is not allowed"),
    ({"model": {"uri": "hf://org/repo/../../x"}}, "model.uri: '..' is not allowed"),
    ({"model": {"uri": "s3://bucket/.."}}, "model.uri: '..' is not allowed"),
]


@pytest.mark.parametrize(("spec", "message"), CEL_CASES, ids=[m for _, m in CEL_CASES])
def test_cross_field_rules_reject_with_a_readable_message(spec: dict[str, Any], message: str) -> None:
    """The CEL rule fails with a message that says what to change; the CLI (pydantic) says the same."""
    failed = _failing_rules(spec)
    assert len(failed) == 1 and failed[0].startswith(message), failed
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelDeploymentSpec.model_validate(spec)
    # the same spec passes the structural schema: only the rule stops it
    doc = {**GOOD, "spec": spec}
    jsonschema.validate(doc, crd_json_schema())


@pytest.mark.parametrize("spec", [
    {"model": {"name": "x", "format": "gguf"}, "engine": "auto"},
    {"model": {"name": "x", "format": "gguf"}, "engine": "llama.cpp"},
    {"model": {"uri": "pvc://weights/a..b/m.gguf"}},
    {"model": {"uri": "hf://org/repo/model..Q4.gguf"}},
    {"model": {"uri": "file:///srv/models/../m.gguf"}},  # local mode: the user's own files
])
def test_what_should_pass_is_admitted(spec: dict[str, Any]) -> None:
    assert _failing_rules(spec) == []
    ModelDeploymentSpec.model_validate(spec)
