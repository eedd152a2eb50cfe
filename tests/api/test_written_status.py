"""The status the controller writes has one source: the API's status model, which the CRD's status schema is.

Every kind of status decide writes (invalid, waiting for nodes, rejected, deploying, ready, scaled to zero,
degraded, serving the previous plan, failed to apply) is validated against the generated CRD's status schema,
read strictly (no field the schema does not list); what is read back from the object is what was written.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import jsonschema
import pytest
from openapi import crd_json_schema

from turnout.api import ModelDeploymentSpec, ModelDeploymentStatus
from turnout.controller.decide import Decision, Observed, decide, decide_after_apply_failure
from turnout.controller.status import OWNED, read_status, wire
from turnout.controller.world import compact_child, compact_pod
from turnout.hardware import parse_nodes

CPU = parse_nodes([{
    "metadata": {"name": "cpu-1", "labels": {"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux"}},
    "status": {"allocatable": {"cpu": "16", "memory": "64Gi"}, "conditions": [{"type": "Ready", "status": "True"}]},
}])
GGUF = {"model": {"name": "qwen2.5-instruct", "size": 1.5, "format": "gguf", "quantization": "Q4_K_M"},
        "servedModelName": "qwen"}
AWQ = {"model": {"name": "qwen2.5-instruct", "size": 7, "format": "awq", "quantization": "Int4"}}


def _observed(spec: dict[str, Any] | None = GGUF, **kw: Any) -> Observed:
    parsed = ModelDeploymentSpec.model_validate(spec) if spec is not None else None
    return Observed(**{"name": "m", "namespace": "ns", "uid": "u", "generation": 1, "spec": parsed,
                       "hardware": CPU, "now": "T1", **kw})


def _rolled_out(d: Decision, **status: Any) -> dict[tuple[str, str], Any]:
    """``d``'s children as the watch shows them once applied, the Deployment with ``status`` (its replicas)."""
    out = {}
    for manifest in d.apply:
        child = manifest.body
        body = copy.deepcopy(child)
        body["metadata"].update(uid=f"u-{child['kind']}", resourceVersion="1", generation=1)
        if child["kind"] == "Deployment":
            body["spec"]["replicas"] = status["replicas"]
            body["status"] = {"observedGeneration": 1, **status}
        out[(child["kind"], child["metadata"]["name"])] = compact_child(body)
    return out


CRASHING = compact_pod({"metadata": {"name": "m-1"}, "status": {"containerStatuses": [
    {"name": "model-server", "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
     "lastState": {"terminated": {"reason": "Error", "exitCode": 1, "message": "engine died"}}}]}})


def _statuses() -> dict[str, ModelDeploymentStatus]:
    """One status of every kind decide writes."""
    first = decide(_observed())
    ready = decide(_observed(previous=first.status, now="T2",
                             children=_rolled_out(first, replicas=1, readyReplicas=1, updatedReplicas=1)))
    zero = decide(_observed({**GGUF, "replicas": 0}, previous=ready.status, generation=2, trigger="scale",
                            children=_rolled_out(first, replicas=0, readyReplicas=0, updatedReplicas=0)))
    serving = decide(_observed(AWQ, previous=ready.status, generation=2, trigger="spec",
                               children=_rolled_out(first, replicas=1, readyReplicas=1, updatedReplicas=1)))
    lora = {**GGUF, "lora": {}, "adapters": [{"name": "sql", "uri": "hf://o/sql"}, {"name": "bad", "uri": "hf://o/x"}]}
    holding = compact_pod({"metadata": {"name": "m-2", "annotations": {"turnout.dev/adapters": (
        '{"restarts":0,"loaded":{"sql":"hf://o/sql"},"failed":{"bad":{"uri":"hf://o/x","error":"400: no"}}}')}},
        "status": {"podIP": "10.0.0.2", "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [{"name": "model-server", "ready": True, "restartCount": 0,
                                          "state": {"running": {}}}]}})
    out = {
        "adapters": decide(_observed(lora, previous=ready.status, pods=(holding,), trigger="world",
                                     children=_rolled_out(first, replicas=1, readyReplicas=1, updatedReplicas=1))),
        "invalid": decide(_observed(None, spec_error="spec.model: Field required")),
        "waiting": decide(_observed(hardware=parse_nodes([]))),
        "rejected": decide(_observed(AWQ)),
        "deploying": first,
        "ready": ready,
        "scaled-to-zero": zero,
        "degraded": decide(_observed(previous=ready.status, pods=(CRASHING,), trigger="world",
                                     children=_rolled_out(first, replicas=1, readyReplicas=0, updatedReplicas=1))),
        "serving-previous": serving,
        "apply-failed": decide_after_apply_failure(first, first.apply[0], "forbidden"),
    }
    statuses = {}
    for kind, d in out.items():
        assert d.status is not None, kind
        statuses[kind] = d.status
    return statuses


STATUSES = _statuses()


@pytest.fixture(scope="module")
def status_schema() -> dict[str, Any]:
    return crd_json_schema()["properties"]["status"]


@pytest.mark.parametrize("kind", sorted(STATUSES))
def test_every_written_status_validates_against_the_crd(kind: str, status_schema: dict[str, Any]) -> None:
    status = STATUSES[kind]
    jsonschema.validate(wire(status), status_schema)  # strict: no field the CRD does not list
    assert read_status(wire(status)) == status  # read back from the object, it is what was written


def test_the_statuses_cover_every_phase() -> None:
    phases = {s.phase for s in STATUSES.values()}
    assert phases == {"Resolving", "Deploying", "Ready", "ScaledToZero", "Degraded", "Failed"}
    assert STATUSES["serving-previous"].phase == "Degraded" and STATUSES["serving-previous"].engine == "llama.cpp"
    sql, bad = STATUSES["adapters"].adapters or []
    assert (sql.ready, sql.pods, bad.ready, bad.message) == ("1/1", ["m-2"], "0/1", "pod m-2: 400: no")


def test_the_patch_names_only_the_status_fields_of_the_crd(status_schema: dict[str, Any]) -> None:
    """The fields the operator owns (and removes with null) are the status model's, which the CRD lists."""
    assert set(OWNED) == set(status_schema["anyOf"][0]["properties"] if "anyOf" in status_schema
                             else status_schema["properties"])
    first = STATUSES["deploying"]
    patch = decide(replace(_observed(AWQ), previous=first)).patch
    assert patch is not None and set(patch) <= set(OWNED)
    assert patch["engine"] is None  # the rejected spec has no engine: the field is removed
