"""deploy/autoscaling/: KEDA and HPA alternatives to the built-in autoscaler, valid against their real schemas and
reading the metrics the gateway and the shims export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from turnout.api.crd import crd
from turnout.controller.scaleloop import GATEWAY_IN_FLIGHT, GATEWAY_QUEUE, SHIM_IN_FLIGHT

ROOT = Path(__file__).resolve().parents[2]
AUTOSCALING = ROOT / "deploy" / "autoscaling"
KEDA_CRD = ROOT.parent / "shared" / "crds" / "keda.sh_scaledobjects.yaml"
EXAMPLE = yaml.safe_load((ROOT / "examples" / "qwen-gguf-cpu.yaml").read_text())


def _load(name: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all((AUTOSCALING / name).read_text()) if d]
    return doc


def _targets_the_example(ref: dict[str, Any], namespace: str) -> None:
    """The scale target is a ModelDeployment (whose CRD has the scale subresource), the example one."""
    version = crd()["spec"]["versions"][0]
    assert "scale" in version["subresources"]
    assert (ref["apiVersion"], ref["kind"]) == (f"{crd()['spec']['group']}/{version['name']}", "ModelDeployment")
    assert ref["name"] == EXAMPLE["metadata"]["name"]
    assert namespace == EXAMPLE["metadata"].get("namespace", "default")


def test_the_shim_exports_the_in_flight_gauge_the_examples_read() -> None:
    source = (ROOT / "operator" / "turnout" / "shim" / "metrics.py").read_text()
    assert f'"{SHIM_IN_FLIGHT}"' in source


def test_keda_scaled_object_is_valid_and_reads_gateway_and_shim_load() -> None:
    if not KEDA_CRD.exists():
        pytest.skip(f"{KEDA_CRD} is absent: the upstream KEDA CRD comes from ../shared/crds")
    keda = yaml.safe_load(KEDA_CRD.read_text())
    (version,) = [v for v in keda["spec"]["versions"] if v["name"] == "v1alpha1"]
    obj = _load("keda-scaledobject.yaml")
    assert obj["apiVersion"] == f"{keda['spec']['group']}/v1alpha1" and obj["kind"] == keda["spec"]["names"]["kind"]
    jsonschema.validate(obj, version["schema"]["openAPIV3Schema"])
    _targets_the_example(obj["spec"]["scaleTargetRef"], obj["metadata"]["namespace"])
    (trigger,) = obj["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    query = trigger["metadata"]["query"]
    for name in (GATEWAY_IN_FLIGHT, GATEWAY_QUEUE, SHIM_IN_FLIGHT):
        assert name in query
    assert query.count("(") == query.count(")")
    assert obj["spec"]["minReplicaCount"] == 0 and float(trigger["metadata"]["threshold"]) > 0


@pytest.mark.parametrize("version", ["1.30.0", kubernetes_validate.latest_version()])
def test_hpa_is_valid_autoscaling_v2_on_pods_and_external_metrics(version: str) -> None:
    obj = _load("hpa.yaml")
    kubernetes_validate.validate(obj, version, strict=True)
    _targets_the_example(obj["spec"]["scaleTargetRef"], obj["metadata"]["namespace"])
    metrics = {m["type"]: m for m in obj["spec"]["metrics"]}
    assert metrics["Pods"]["pods"]["metric"]["name"] == SHIM_IN_FLIGHT
    adapter = yaml.safe_load((AUTOSCALING / "prometheus-adapter-values.yaml").read_text())
    external = {r["name"]["as"]: r for r in adapter["rules"]["external"]}
    rule = external[metrics["External"]["external"]["metric"]["name"]]
    assert GATEWAY_IN_FLIGHT in rule["seriesQuery"] and GATEWAY_QUEUE in rule["metricsQuery"]
    assert {r["name"]["as"] for r in adapter["rules"]["custom"]} == {SHIM_IN_FLIGHT}
