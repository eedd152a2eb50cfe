"""Pruning and a rejected update on a real cluster: server-side apply drops the fields a manifest no longer
has, the operator deletes (uid-guarded, background propagation) only children it owns, and a spec no engine
can serve leaves the previous plan's children in place with the status saying so.

Models run at ``replicas: 0``: these tests are about the objects, not about running pods, and a claim no
pod mounts is deleted at once (a mounted one waits for its pods: ``kubernetes.io/pvc-protection``). Each
test makes the fake nodes it needs (``own_nodes``) and selects them, so it decides which hardware there is.
Run with ``KUBECONFIG=... pytest e2e -v``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from admission import Refusal
from kubectl import apply, awq, condition, events, get_json, gguf, kubectl, model_deployment, phase, poll, settled

LABELS = {"app.kubernetes.io/managed-by": "turnout", "app.kubernetes.io/component": "model-server",
          "app.kubernetes.io/name": "turnout"}


def _md(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return model_deployment(name, spec)


def _apply(obj: dict[str, Any], namespace: str) -> None:
    # One field manager for every apply of a test: a field left out of the next apply is removed.
    apply(obj, namespace, manager="e2e")


def _settled(namespace: str, name: str, generation: int | None = None) -> dict[str, Any] | None:
    return settled(namespace, name, generation)


def _events(namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    return events(namespace, name, reason)


def _gguf(replicas: int = 0, **extra: Any) -> dict[str, Any]:
    return gguf(replicas, **extra)


@pytest.fixture
def deployed(namespace: str, operator: dict[str, object]) -> Iterator[list[str]]:
    """Names to delete after the test (their children go with them by garbage collection)."""
    names: list[str] = []
    yield names
    for name in names:
        kubectl("delete", "modeldeployment", name, "-n", namespace, "--ignore-not-found", "--wait=false")


def test_removing_the_cache_prunes_the_claim(namespace, deployed, own_nodes):
    own_nodes.add("cpu")
    on = {"nodeSelector": own_nodes.selector}
    spec = _gguf(cache={"size": "1Gi"}, **on)
    deployed.append("e2e-prune-cache")
    _apply(_md("e2e-prune-cache", spec), namespace)
    md = poll(lambda: _settled(namespace, "e2e-prune-cache"), what="reconciled")
    claim = poll(lambda: get_json("pvc", "e2e-prune-cache-cache", "-n", namespace), what="the cache claim")
    assert [r["uid"] for r in claim["metadata"]["ownerReferences"]] == [md["metadata"]["uid"]]
    dep = poll(lambda: get_json("deployment", "e2e-prune-cache", "-n", namespace), what="the Deployment")

    _apply(_md("e2e-prune-cache", _gguf(**on)), namespace)  # spec.cache dropped by server-side apply
    poll(lambda: _settled(namespace, "e2e-prune-cache", 2), what="generation 2 reconciled")
    poll(lambda: get_json("pvc", "e2e-prune-cache-cache", "-n", namespace) is None, what="the claim deleted")
    after = get_json("deployment", "e2e-prune-cache", "-n", namespace)
    assert after["metadata"]["uid"] == dep["metadata"]["uid"]
    volumes = {v["name"]: v for v in after["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["model-cache"]
    poll(lambda: _events(namespace, "e2e-prune-cache", "Pruned"), what="a Pruned event")


def test_only_children_it_owns_are_pruned(namespace, deployed, own_nodes):
    own_nodes.add("cpu")
    on = {"nodeSelector": own_nodes.selector}
    deployed.extend(["e2e-prune-owned", "e2e-prune-other"])
    _apply(_md("e2e-prune-owned", _gguf(**on)), namespace)
    _apply(_md("e2e-prune-other", _gguf(**on)), namespace)
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


def test_an_engine_change_updates_in_place_and_prunes_what_the_new_plan_does_not_use(namespace, deployed,
                                                                                     own_nodes):
    own_nodes.add("gpu")  # an A10G: vLLM and transformers can both serve a 7B AWQ model there
    spec, first, second = awq(replicas=0, nodeSelector=own_nodes.selector), "vllm", "transformers"
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


def test_a_rejected_update_keeps_the_previous_plan_serving_then_a_fix_recovers(namespace, deployed, own_nodes):
    own_nodes.add("cpu")
    on = {"nodeSelector": own_nodes.selector}
    missing = "nvidia"  # no GPU among this test's nodes
    deployed.append("e2e-rejected")
    _apply(_md("e2e-rejected", _gguf(**on)), namespace)
    placed = poll(lambda: _settled(namespace, "e2e-rejected"), what="reconciled")
    dep = poll(lambda: get_json("deployment", "e2e-rejected", "-n", namespace), what="the Deployment")
    svc = get_json("service", "e2e-rejected", "-n", namespace)

    _apply(_md("e2e-rejected", _gguf(accelerator={"type": missing}, **on)), namespace)
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

    _apply(_md("e2e-rejected", _gguf(**on)), namespace)
    fixed = poll(lambda: _settled(namespace, "e2e-rejected", 3), what="generation 3 reconciled")
    assert condition(fixed, "Resolved")["status"] == "True"
    assert condition(fixed, "Degraded")["reason"] != "ServingPreviousPlan"
    # replicas 0: a reconciled deployment with no pod is ScaledToZero (docs/autoscaling.md), not Ready
    assert fixed["status"]["phase"] in {"Deploying", "ScaledToZero"}


def test_a_rejected_first_spec_without_children_is_a_plain_failure(namespace, deployed, own_nodes):
    own_nodes.add("cpu")
    deployed.append("e2e-first-rejected")
    _apply(_md("e2e-first-rejected", _gguf(accelerator={"type": "nvidia"}, nodeSelector=own_nodes.selector)),
           namespace)
    failed = poll(lambda: _settled(namespace, "e2e-first-rejected"), what="reconciled")
    assert failed["status"]["phase"] == "Failed"
    assert "engine" not in failed["status"] and "endpoint" not in failed["status"]
    assert condition(failed, "Degraded")["reason"] == "NotResolved"
    assert get_json("deployment", "e2e-first-rejected", "-n", namespace) is None
    assert not _events(namespace, "e2e-first-rejected", "ServingPreviousPlan")


def test_hardware_that_can_serve_a_rejected_update_rolls_it_out(namespace, deployed, own_nodes):
    own_nodes.add("cpu")
    on = {"nodeSelector": own_nodes.selector}
    deployed.append("e2e-later-gpu")
    _apply(_md("e2e-later-gpu", _gguf(**on)), namespace)
    poll(lambda: _settled(namespace, "e2e-later-gpu"), what="placed on CPU")
    _apply(_md("e2e-later-gpu", _gguf(accelerator={"type": "nvidia"}, **on)), namespace)
    poll(lambda: (m := _settled(namespace, "e2e-later-gpu", 2)) and
         condition(m, "Degraded").get("reason") == "ServingPreviousPlan", what="serving the previous plan")

    own_nodes.add("gpu")
    placed = poll(lambda: (m := _settled(namespace, "e2e-later-gpu", 2)) and
                  m["status"].get("accelerator") == "nvidia" and m, what="the update placed on the new GPU node")
    assert condition(placed, "Resolved")["status"] == "True"
    dep = get_json("deployment", "e2e-later-gpu", "-n", namespace)
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")
    poll(lambda: condition(_settled(namespace, "e2e-later-gpu"), "Degraded").get("status") == "False",
         what="no longer degraded")


def test_a_refused_delete_is_reported_and_tried_again(namespace, deployed, operator, own_nodes):
    own_nodes.add("cpu")
    on = {"nodeSelector": own_nodes.selector}
    name, claim = "e2e-refused-prune", "e2e-refused-prune-cache"
    deployed.append(name)
    _apply(_md(name, _gguf(cache={"size": "1Gi"}, **on)), namespace)
    poll(lambda: _settled(namespace, name) and get_json("pvc", claim, "-n", namespace), what="the cache claim")
    deletes = operator.total("turnout_operator_writes_total", kind="delete")
    refusal = Refusal(namespace, "refuse-prune", group="", resource="persistentvolumeclaims",
                      operations=["DELETE"], expression=f"oldObject.metadata.name != '{claim}'",
                      message="e2e: this claim may not be deleted", probe=["delete", "pvc", claim, "-n", namespace])
    with refusal:
        _apply(_md(name, _gguf(**on)), namespace)  # spec.cache dropped: the claim is to be pruned
        failed = poll(lambda: _events(namespace, name, "PruneFailed"), what="a PruneFailed warning")
        assert failed[0]["type"] == "Warning" and refusal.message in failed[0]["message"]
        assert claim in failed[0]["message"]
        poll(lambda: _settled(namespace, name, 2), what="generation 2 reconciled")
        assert get_json("pvc", claim, "-n", namespace) is not None
        # the serving plan itself is fine: at replicas 0 that reads ScaledToZero, not Degraded
        poll(lambda: phase(namespace, name, "ScaledToZero"), what="ScaledToZero despite the refused prune")
        # Any later reconcile tries again: refused once more, said once.
        kubectl("scale", f"modeldeployment/{name}", "-n", namespace, "--replicas=1")
        poll(lambda: _settled(namespace, name, 3), what="generation 3 reconciled")
        assert get_json("pvc", claim, "-n", namespace) is not None
        refusal.lift()
    kubectl("scale", f"modeldeployment/{name}", "-n", namespace, "--replicas=0")
    poll(lambda: get_json("pvc", claim, "-n", namespace) is None, what="the claim pruned")
    assert operator.total("turnout_operator_writes_total", kind="delete") == deletes + 1
    assert len(_events(namespace, name, "PruneFailed")) == 1
    assert len(_events(namespace, name, "Pruned")) == 1
