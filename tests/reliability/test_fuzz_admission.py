"""ModelDeployment admission at volume: hypothesis specs, valid and not, through the CRD's structural schema
(jsonschema) and its CEL rules (cel-python), as the API server admits them.

Properties: admission never errors out (a CEL rule that cannot evaluate on a well-typed spec would answer
the user with an evaluation error instead of its message); whatever the schema and the rules admit, the
operator parses (``ModelDeploymentSpec``) — so nothing the API server stores fails later in the operator's
hands as an exception; and every refusal names a field or says what to change. Examples per test:
``TURNOUT_FUZZ_EXAMPLES`` (default 400, about 2 s).
"""

from __future__ import annotations

import os
from typing import Any

import celpy
import jsonschema
import pydantic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi import cel_rules, crd_json_schema

from figures import record
from turnout.api import ModelDeploymentSpec
from turnout.api import crd as crd_module

EXAMPLES = int(os.environ.get("TURNOUT_FUZZ_EXAMPLES", "400"))
SCHEMA = crd_json_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
SPEC_SCHEMA = crd_module.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
ENV = celpy.Environment()
RULES = [(where, ENV.program(ENV.compile(rule)), message) for where, rule, message in cel_rules(SPEC_SCHEMA, "spec")]
tally = {"specs": 0, "admitted": 0, "refused_by_schema": 0, "refused_by_cel": 0}

# No explicit nulls: the CRD marks optional fields nullable, and whether the API server's CEL sees a null
# field as present (has()) is not something cel-python settles; {"model": {"name": null}} passes cel-python's
# "name or uri" rule and the operator refuses it with the reason (Failed), which
# tests/controller/test_reconcile.py::test_invalid_object_fails_with_the_reason_and_others_still_deploy covers.
weird = st.booleans() | st.integers(min_value=-(2**40), max_value=2**40) | st.floats() \
    | st.text(max_size=12) | st.lists(st.integers(), max_size=2)


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` nine times in ten, a value of any JSON type otherwise."""
    return st.integers(0, 9).flatmap(lambda i: weird if i == 0 else valid)


uris = st.sampled_from(["hf://Qwen/Qwen2.5-0.5B-Instruct", "hf://org/repo/m.gguf", "pvc://weights/a/m.gguf",
                        "pvc://weights/../x", "s3://bucket/key", "file:///srv/m", "ftp://h/m", "builtin://tiny-llama.gguf",
                        "hf://", "", "hf://org/repo/../../x"])
models = st.fixed_dictionaries({}, optional={
    "name": mostly(st.sampled_from(["qwen2.5-instruct", "llama-3.1-instruct", "nope"]) | st.text(max_size=12)),
    "uri": mostly(uris),
    "size": mostly(st.floats(min_value=-1, max_value=1000) | st.integers(min_value=-5, max_value=10**6)),
    "format": mostly(st.sampled_from(["gguf", "ggufv2", "mlx", "safetensors", "awq", "gptq", "auto", "zip"])),
    "type": mostly(st.sampled_from(["llm", "embedding", "rerank", "image"])),
    "quantization": mostly(st.sampled_from(["awq", "gptq", "fp8", "q4_k_m", "none"])),
})
specs = st.fixed_dictionaries({"model": mostly(models)}, optional={
    "engine": mostly(st.sampled_from(["auto", "vllm", "sglang", "llama.cpp", "transformers", "mlx", "tensorrt"])),
    "accelerator": mostly(st.fixed_dictionaries({}, optional={
        "type": mostly(st.sampled_from(["auto", "nvidia", "amd", "cpu", "apple", "tpu"])),
        "count": mostly(st.integers(min_value=-2, max_value=1024))})),
    "replicas": mostly(st.integers(min_value=-(2**33), max_value=2**33)),
    "servedModelName": mostly(st.text(max_size=70)),
    "autoscaling": mostly(st.fixed_dictionaries({}, optional={
        "minReplicas": mostly(st.integers(min_value=-3, max_value=20)),
        "maxReplicas": mostly(st.integers(min_value=-3, max_value=20)),
        "targetInFlightPerReplica": mostly(st.integers(min_value=-3, max_value=100))})),
    "engineArgs": mostly(st.dictionaries(st.text(max_size=8), weird, max_size=3)),
    "routing": mostly(st.fixed_dictionaries({}, optional={
        "strategy": mostly(st.sampled_from(["LeastRequests", "PrefixHash", "Random"])),
        "prefixCharLength": mostly(st.integers(min_value=-10, max_value=10**6))})),
})


def _failing(spec: dict[str, Any]) -> list[str]:
    failed = []
    for where, program, message in RULES:
        node: Any = {"spec": spec}
        for part in where.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and not program.evaluate({"self": celpy.json_to_cel(node)}):
            failed.append(message)
    return failed


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs)
def test_whatever_admission_admits_the_operator_parses(spec: dict[str, Any]) -> None:
    tally["specs"] += 1
    doc = {"apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": "m", "namespace": "default"}, "spec": spec}
    errors = list(VALIDATOR.iter_errors(doc))
    if errors:
        tally["refused_by_schema"] += 1
        assert all(e.message for e in errors)
        return
    failed = _failing(spec)  # CEL runs on schema-valid objects only, as in the API server
    if failed:
        tally["refused_by_cel"] += 1
        assert all(isinstance(m, str) and m for m in failed)
        return
    tally["admitted"] += 1
    try:
        ModelDeploymentSpec.model_validate(spec)
    except pydantic.ValidationError as exc:
        raise AssertionError(f"admitted by the CRD but refused by the operator: {spec!r}: {exc}") from None


def test_record_admission_counts() -> None:
    """Runs after the property test in this module (file order): the counts for docs/reliability.md."""
    if tally["specs"]:
        record("fuzz_admission", dict(tally))
