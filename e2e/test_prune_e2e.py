"""Pruning and a rejected update on a real cluster: server-side apply drops the fields a manifest no longer
has, the operator deletes (uid-guarded, background propagation) only children it owns, and a spec no engine
can serve leaves the previous plan's children in place with the status saying so.

Models run at ``replicas: 0``: these tests are about the objects, not about pulling engine images, and a
claim no pod mounts is deleted at once (a mounted one waits for its pods: ``kubernetes.io/pvc-protection``).
Run with ``KUBECONFIG=... pytest e2e -v``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubectl import condition, get_json, kubectl, poll

from turnout.api import ModelDeploymentSpec
from turnout.config import OperatorConfig
from turnout.hardware import parse_nodes
from turnout.resolver import Plan, resolve

LABELS = {"app.kubernetes.io/managed-by": "turnout", "app.kubernetes.io/component": "model-server",
          "app.kubernetes.io/name": "turnout"}


def _hardware() -> Any:
    return parse_nodes(json.loads(kubectl("get", "nodes", "-o", "json"))["items"])


def _plan(spec: dict[str, Any]) -> Plan | None:
    decision = resolve(ModelDeploymentSpec.model_validate(spec), _hardware(), OperatorConfig())
    return decision if isinstance(decision, Plan) else None


def _md(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": spec}


def _apply(obj: dict[str, Any], namespace: str) -> None:
    # One field manager for every apply of a test: a field left out of the next apply is removed.
    kubectl("apply", "--server-side", "--field-manager=e2e", "-n", namespace, "-f", "-", stdin=json.dumps(obj))


def _settled(namespace: str, name: str, generation: int | None = None) -> dict[str, Any] | None:
    md = get_json("modeldeployment", name, "-n", namespace)
    if not md:
        return None
    want = generation or md["metadata"]["generation"]
    seen = (md.get("status") or {}).get("observedGeneration")
    return md if seen == want == md["metadata"]["generation"] else None


def _events(namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    out = kubectl("get", "events", "-n", namespace, "-o", "json",
                  "--field-selector", f"involvedObject.name={name},reason={reason}")
    return json.loads(out)["items"]


def _gguf(replicas: int = 0, **extra: Any) -> dict[str, Any]:
    return {"model": {"name": "qwen2.5-instruct", "size": 0.5, "format": "gguf", "quantization": "Q4_K_M"},
            "replicas": replicas, **extra}


@pytest.fixture
def deployed(namespace: str, operator: dict[str, object]) -> Iterator[list[str]]:
    """Names to delete after the test (their children go with them by garbage collection)."""
    names: list[str] = []
    yield names
    for name in names:
        kubectl("delete", "modeldeployment", name, "-n", namespace, "--ignore-not-found", "--wait=false")


def _needs(spec: dict[str, Any]) -> None:
    if _plan(spec) is None:
        pytest.skip("no node of this cluster can serve a small GGUF model")


def test_removing_the_cache_prunes_the_claim(namespace, deployed):
    spec = _gguf(cache={"size": "1Gi"})
    _needs(spec)
    deployed.append("e2e-prune-cache")
    _apply(_md("e2e-prune-cache", spec), namespace)
    md = poll(lambda: _settled(namespace, "e2e-prune-cache"), what="reconciled")
    claim = poll(lambda: get_json("pvc", "e2e-prune-cache-cache", "-n", namespace), what="the cache claim")
    assert [r["uid"] for r in claim["metadata"]["ownerReferences"]] == [md["metadata"]["uid"]]
    dep = poll(lambda: get_json("deployment", "e2e-prune-cache", "-n", namespace), what="the Deployment")

    _apply(_md("e2e-prune-cache", _gguf()), namespace)  # spec.cache dropped by server-side apply
    poll(lambda: _settled(namespace, "e2e-prune-cache", 2), what="generation 2 reconciled")
    poll(lambda: get_json("pvc", "e2e-prune-cache-cache", "-n", namespace) is None, what="the claim deleted")
    after = get_json("deployment", "e2e-prune-cache", "-n", namespace)
    assert after["metadata"]["uid"] == dep["metadata"]["uid"]
    volumes = {v["name"]: v for v in after["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["model-cache"]
    poll(lambda: _events(namespace, "e2e-prune-cache", "Pruned"), what="a Pruned event")


def test_only_children_it_owns_are_pruned(namespace, deployed):
    _needs(_gguf())
    deployed.extend(["e2e-prune-owned", "e2e-prune-other"])
    _apply(_md("e2e-prune-owned", _gguf()), namespace)
    _apply(_md("e2e-prune-other", _gguf()), namespace)
    md = poll(lambda: _settled(namespace, "e2e-prune-owned"), what="reconciled")
    other = poll(lambda: _settled(namespace, "e2e-prune-other"), what="the other reconciled")
    labels = {**LABELS, "turnout.dev/deployment": "e2e-prune-owned"}

    def service(name: str, owner: dict[str, Any] | None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "labels": labels}
        if owner is not None:
            meta["ownerReferences"] = [{"apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment",
                                        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}]
        return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
                "spec": {"ports": [{"name": "http", "port": 8000}]}}

    by_hand = service("e2e-prune-owned-by-hand", None)  # this one's labels, no owner
    foreign = service("e2e-prune-owned-foreign", other)  # this one's labels, another ModelDeployment's
    stale = service("e2e-prune-owned-stale", md)  # this one's own, under a name its plan does not render
    for obj in (by_hand, foreign, stale):
        kubectl("create", "-n", namespace, "-f", "-", stdin=json.dumps(obj))
    poll(lambda: get_json("service", "e2e-prune-owned-stale", "-n", namespace) is None, what="the stale one pruned")
    for obj in (by_hand, foreign):
        assert get_json("service", obj["metadata"]["name"], "-n", namespace) is not None, obj["metadata"]["name"]
    assert get_json("service", "e2e-prune-owned", "-n", namespace) is not None
    assert get_json("service", "e2e-prune-other", "-n", namespace) is not None
    kubectl("delete", "service", "e2e-prune-owned-by-hand", "-n", namespace, "--ignore-not-found")


def _two_engines() -> tuple[dict[str, Any], str, str] | None:
    """A spec and two engines this cluster can both run it with, if any."""
    candidates = [
        {"model": {"name": "qwen2.5-instruct", "size": 7, "format": "awq", "quantization": "Int4"}, "replicas": 0},
        {"model": {"name": "qwen2.5-instruct", "size": 0.5, "format": "pytorch"}, "replicas": 0},
    ]
    for spec in candidates:
        engines = [e for e in ("vllm", "sglang", "transformers") if _plan({**spec, "engine": e}) is not None]
        if len(engines) >= 2:
            return spec, engines[0], engines[1]
    return None


def test_an_engine_change_updates_in_place_and_prunes_what_the_new_plan_does_not_use(namespace, deployed):
    found = _two_engines()
    if found is None:
        pytest.skip("no model spec here that two engines can serve on this cluster's nodes")
    spec, first, second = found
    deployed.append("e2e-prune-engine")
    _apply(_md("e2e-prune-engine", {**spec, "engine": first, "cache": {"size": "1Gi"}}), namespace)
    md = poll(lambda: _settled(namespace, "e2e-prune-engine"), what="reconciled")
    assert md["status"]["engine"] == first
    poll(lambda: get_json("pvc", "e2e-prune-engine-cache", "-n", namespace), what="the cache claim")
    dep = get_json("deployment", "e2e-prune-engine", "-n", namespace)

    _apply(_md("e2e-prune-engine", {**spec, "engine": second}), namespace)
    md = poll(lambda: _settled(namespace, "e2e-prune-engine", 2), what="generation 2 reconciled")
    assert md["status"]["engine"] == second
    poll(lambda: get_json("pvc", "e2e-prune-engine-cache", "-n", namespace) is None, what="the claim deleted")
    after = get_json("deployment", "e2e-prune-engine", "-n", namespace)
    assert after["metadata"]["uid"] == dep["metadata"]["uid"]
    assert after["spec"]["template"]["spec"]["containers"][0]["image"] == md["status"]["image"]


def test_a_rejected_update_keeps_the_previous_plan_serving_then_a_fix_recovers(namespace, deployed):
    _needs(_gguf())
    hardware = _hardware()
    missing = next((a for a in ("ascend", "metal", "nvidia")
                    if not isinstance(resolve(ModelDeploymentSpec.model_validate(_gguf(accelerator={"type": a})),
                                              hardware, OperatorConfig()), Plan)), None)
    if missing is None:
        pytest.skip("every accelerator type can serve the model here: nothing to reject")
    deployed.append("e2e-rejected")
    _apply(_md("e2e-rejected", _gguf()), namespace)
    placed = poll(lambda: _settled(namespace, "e2e-rejected"), what="reconciled")
    dep = poll(lambda: get_json("deployment", "e2e-rejected", "-n", namespace), what="the Deployment")
    svc = get_json("service", "e2e-rejected", "-n", namespace)

    _apply(_md("e2e-rejected", _gguf(accelerator={"type": missing})), namespace)
    held = poll(lambda: _settled(namespace, "e2e-rejected", 2), what="generation 2 reconciled")
    assert held["status"]["phase"] == "Degraded"
    assert (condition(held, "Resolved")["status"], condition(held, "Resolved")["reason"]) == ("False", "Rejected")
    assert held["status"]["rejected"] and all(r["reason"] for r in held["status"]["rejected"])
    assert condition(held, "Degraded")["reason"] == "ServingPreviousPlan"
    for key in ("engine", "accelerator", "image", "endpoint"):
        assert held["status"][key] == placed["status"][key]
    # The previous plan's children are left as they were: same objects, no new template.
    now_dep = get_json("deployment", "e2e-rejected", "-n", namespace)
    assert (now_dep["metadata"]["uid"], now_dep["metadata"]["generation"]) == \
        (dep["metadata"]["uid"], dep["metadata"]["generation"])
    assert get_json("service", "e2e-rejected", "-n", namespace)["metadata"]["uid"] == svc["metadata"]["uid"]
    poll(lambda: _events(namespace, "e2e-rejected", "ServingPreviousPlan"), what="a ServingPreviousPlan event")

    _apply(_md("e2e-rejected", _gguf()), namespace)
    fixed = poll(lambda: _settled(namespace, "e2e-rejected", 3), what="generation 3 reconciled")
    assert condition(fixed, "Resolved")["status"] == "True"
    assert condition(fixed, "Degraded")["reason"] != "ServingPreviousPlan"
    assert fixed["status"]["phase"] in {"Deploying", "Ready"}
