"""decide(): what one reconcile writes, from what it observed. Pure: no client, no emulator, no kopf."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from turnout.api import ModelDeploymentSpec, ModelDeploymentStatus
from turnout.api.types import Condition
from turnout.controller.decide import Decision, Event, Manifest, Observed, Owned, decide, decide_after_apply_failure
from turnout.controller.status import condition, wire
from turnout.controller.world import INSTANCE_LABEL, SPEC_HASH_LABEL, Child, compact_child
from turnout.hardware import parse_nodes

UID = "uid-m"
CPU = parse_nodes([{
    "metadata": {"name": "cpu-1", "labels": {"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux"}},
    "spec": {},
    "status": {"allocatable": {"cpu": "16", "memory": "64Gi"}, "conditions": [{"type": "Ready", "status": "True"}]},
}])
GGUF = {"model": {"name": "qwen2.5-instruct", "size": 1.5, "format": "gguf", "quantization": "Q4_K_M"},
        "servedModelName": "qwen", "cache": {"size": "20Gi"}}
AWQ = {"model": {"name": "qwen2.5-instruct", "size": 7, "format": "awq", "quantization": "Int4"},
       "servedModelName": "qwen"}


def observed(spec: dict[str, Any] | None = None, **kw: Any) -> Observed:
    parsed = ModelDeploymentSpec.model_validate(spec or GGUF)
    return Observed(**{"name": "m", "namespace": "ns", "uid": UID, "generation": 1, "spec": parsed,
                       "hardware": CPU, "now": "T1", **kw})


def seen(children: tuple[Manifest, ...], **status: Any) -> dict[tuple[str, str], Child]:
    """The children as the watch shows them once applied (with a Deployment status when given)."""
    out = {}
    for manifest in children:
        child = manifest.body
        body = copy.deepcopy(child)
        body["metadata"].update(uid=f"u-{child['kind']}", resourceVersion="1", generation=1)
        if status and child["kind"] == "Deployment":
            body["status"] = {"observedGeneration": 1, **status}
        out[(child["kind"], child["metadata"]["name"])] = compact_child(body)
    return out


def reasons(events: tuple[Event, ...]) -> list[str]:
    return [e.reason for e in events]


def cond(status: ModelDeploymentStatus | None, type_: str) -> Condition:
    found = condition(status, type_)
    assert found is not None, type_
    return found


def placed() -> tuple[Decision, Observed]:
    """A first placement, and what the next reconcile observes once it is applied, written and rolled out."""
    first = decide(observed())
    later = observed(previous=first.status, children=seen(first.apply, replicas=1, readyReplicas=1,
                                                          updatedReplicas=1), now="T2")
    return first, later


def test_an_invalid_spec_fails_with_the_validation_error_and_writes_nothing_else():
    d = decide(Observed(name="m", namespace="ns", uid=UID, generation=1, spec=None,
                        spec_error="spec.replicas: Input should be greater than or equal to 0", hardware=CPU, now="T"))
    assert (d.result, d.apply, d.prune) == ("invalid", (), ())
    assert d.status.phase == "Failed" and d.patch == wire(d.status)
    assert (cond(d.status, "Resolved").reason, cond(d.status, "Resolved").message) == (
        "InvalidSpec", "spec.replicas: Input should be greater than or equal to 0")
    assert d.after_status == (Event("Warning", "InvalidSpec",
                                    "spec.replicas: Input should be greater than or equal to 0"),)


def test_without_nodes_it_waits_and_says_so_once():
    d = decide(observed(hardware=parse_nodes([])))
    assert (d.result, d.apply, d.status.phase) == ("skipped", (), "Resolving")
    assert cond(d.status, "Resolved").reason == "WaitingForNodes" and d.after_status == ()
    again = decide(observed(hardware=parse_nodes([]), previous=d.status, now="T2"))
    assert again.patch is None  # nothing changed: nothing written


def test_a_rejection_names_each_engines_reason():
    d = decide(observed(AWQ))
    assert (d.result, d.apply, d.status.phase) == ("rejected", (), "Failed")
    by_engine = {r.engine: r.reason for r in d.status.rejected}
    assert set(by_engine) == {"vllm", "sglang", "llama.cpp", "transformers", "mlx"}
    assert by_engine["llama.cpp"] == "cpu: llama.cpp serves gguf weights, not awq"
    assert cond(d.status, "Resolved").reason == "Rejected"
    assert reasons(d.after_status) == ["Rejected"]


def test_a_placed_deployment_whose_new_spec_is_rejected_keeps_serving_its_previous_plan():
    first, later = placed()
    d = decide(replace(later, spec=ModelDeploymentSpec.model_validate(AWQ), generation=2, trigger="spec"))
    assert (d.result, d.apply, d.prune) == ("rejected", (), ())  # the children stay as they are
    assert d.status.phase == "Degraded" and d.status.engine == first.status.engine == "llama.cpp"
    assert d.status.endpoint == first.status.endpoint and d.status.observed_generation == 2
    assert cond(d.status, "Degraded").reason == cond(d.status, "Progressing").reason == "ServingPreviousPlan"
    assert cond(d.status, "Available").message == "1/1 replicas of the previous plan ready"
    assert reasons(d.after_status) == ["Rejected", "ServingPreviousPlan"]


def test_a_first_placement_applies_every_child_and_posts_no_event():
    d = decide(observed())
    assert d.result == "planned"
    assert [(c.kind, c.name) for c in d.apply] == [
        ("PersistentVolumeClaim", "m-cache"), ("Service", "m"), ("Deployment", "m")]
    for child in d.apply:
        assert child.body["metadata"]["ownerReferences"][0]["uid"] == UID
        assert child.view.owner_uids == (UID,)
        assert child.spec_hash and child.spec_hash == child.body["metadata"]["labels"][SPEC_HASH_LABEL]
    assert d.status.phase == "Deploying" and d.status.endpoint == "http://m.ns.svc:8000/v1"
    want = d.apply[-1].spec_hash
    # The choice and the rollout are in the status: a new deployment's steady path writes no Event.
    assert d.before_status == () and d.after_status == ()
    assert cond(d.status, "Resolved").reason == "EngineSelected"
    assert cond(d.status, "Resolved").message and want
    # When the status is not written after all (the object is gone), the rollout is said alone.
    assert reasons(d.unwritten) == ["RolloutStarted"]


def test_scaling_changes_only_the_deployment_replicas_and_says_scaled():
    _, later = placed()
    d = decide(replace(later, spec=ModelDeploymentSpec.model_validate({**GGUF, "replicas": 3}), generation=2,
                       trigger="scale"))
    assert [(c.kind, c.replicas, c.body["spec"]["replicas"]) for c in d.apply] == [("Deployment", 3, 3)]
    assert d.apply[0].spec_hash == later.children[("Deployment", "m")].spec_hash
    assert d.before_status == (Event("Normal", "Scaled", "scaled m from 1 to 3 replicas"),)
    assert d.after_status == () and d.unwritten == ()
    assert d.status.phase == "Deploying"  # 3 replicas asked for, not rolled out yet


def test_nothing_changed_nothing_to_write():
    _, later = placed()
    settled = decide(later)  # the rollout completed: Ready is written once
    assert settled.apply == () and settled.status.phase == "Ready" and settled.patch is not None
    d = decide(replace(later, previous=settled.status, now="T3", trigger="world"))
    assert (d.apply, d.prune, d.patch) == ((), (), None)
    assert d.before_status == d.after_status == d.unwritten == ()


def test_a_removed_cache_claim_is_pruned_and_said():
    _, later = placed()
    claim = later.children[("PersistentVolumeClaim", "m-cache")]
    assert claim.labels[INSTANCE_LABEL] == "m"
    owned = (Owned("Service", "m", "u-Service"), Owned("Deployment", "m", "u-Deployment"),
             Owned("PersistentVolumeClaim", "m-cache", str(claim.uid)))
    no_cache = {k: v for k, v in GGUF.items() if k != "cache"}
    d = decide(replace(later, spec=ModelDeploymentSpec.model_validate(no_cache), generation=2, trigger="spec",
                       owned=owned))
    assert [c.kind for c in d.apply] == ["Deployment"]  # it no longer mounts the claim
    assert [(p.kind, p.name, p.uid) for p in d.prune] == [("PersistentVolumeClaim", "m-cache", claim.uid)]
    assert d.prune[0].pruned.reason == "Pruned" and "spec.cache" in d.prune[0].pruned.message
    refused = d.prune[0].refused("forbidden")
    assert refused is not None and refused.reason == "PruneFailed" and refused.message.endswith(": forbidden")
    # A refusal already said is not said again; a child already on its way out is not deleted again.
    again = decide(replace(later, spec=ModelDeploymentSpec.model_validate(no_cache), generation=2,
                           owned=(replace(owned[2], refused=True),)))
    assert again.prune[0].refused("forbidden") is None
    gone = decide(replace(later, spec=ModelDeploymentSpec.model_validate(no_cache), generation=2,
                          owned=(replace(owned[2], deleting=True),)))
    assert gone.prune == ()


def test_a_refused_child_fails_the_object_with_apply_failed_and_prunes_nothing():
    d = decide(observed(owned=(Owned("Service", "m-old", "u-old"),)))
    assert d.prune  # had the applies gone through, the stray Service would go
    refused = d.apply[1]
    failed = decide_after_apply_failure(d, refused, "admission webhook denied the request")
    assert (failed.result, failed.apply, failed.prune) == ("failed", (), ())
    assert failed.status.phase == "Failed" and failed.status.engine == "llama.cpp"
    message = "the API server refused Service m: admission webhook denied the request"
    assert cond(failed.status, "Progressing").reason == cond(failed.status, "Degraded").reason == "ApplyFailed"
    assert cond(failed.status, "Degraded").message == message
    # The first choice is in the status (no Event of its own); the failure is a warning.
    assert failed.before_status == () and failed.after_status == (
        Event("Warning", "Degraded", f"ApplyFailed: {message}"),)


def test_a_world_change_before_the_update_handler_ran_is_skipped():
    _, later = placed()
    d = decide(replace(later, generation=2, trigger="world"))
    assert (d.result, d.apply, d.status) == ("skipped", (), None)
    assert decide(replace(later, deleting=True)).result == "skipped"


def _lost_pod() -> Any:
    """A pod as the node lifecycle controller leaves it when its kubelet stops reporting (Ready False,
    ContainersReady still True)."""
    from turnout.controller.world import compact_pod

    return compact_pod({"metadata": {"name": "m-1", "labels": {INSTANCE_LABEL: "m"}}, "spec": {"nodeName": "cpu-1"},
                        "status": {"phase": "Running",
                                   "conditions": [{"type": "Ready", "status": "False"},
                                                  {"type": "ContainersReady", "status": "True"}],
                                   "containerStatuses": [{"name": "model-server", "ready": True, "restartCount": 0,
                                                          "state": {"running": {}}}]}})


def test_the_node_of_a_placed_deployment_stops_reporting_it_keeps_the_plan_and_says_node_not_ready():
    first, later = placed()
    # The node is not ready: it leaves the resolver's view (no node left) a moment before its pod is marked.
    serving = _lost_pod().__class__(**{**_lost_pod().__dict__, "conditions": ()})
    early = decide(replace(later, hardware=parse_nodes([]), pods=(serving,), trigger="world", now="T2"))
    assert (early.apply, early.prune) == ((), ()) and early.status.engine == first.status.engine
    assert cond(early.status, "Degraded").reason == "NodeUnavailable" and "cpu-1" in cond(early.status,
                                                                                          "Degraded").message
    later = replace(later, previous=early.status)
    # Then the pod is marked not ready, and the Deployment controller counts it out.
    down = seen(first.apply, replicas=1, readyReplicas=0, updatedReplicas=1)
    gone = decide(replace(later, hardware=parse_nodes([]), pods=(_lost_pod(),), children=down, trigger="world",
                          now="T3"))
    assert (gone.apply, gone.prune) == ((), ())  # the children stay
    assert gone.status.phase == "Degraded" and gone.status.engine == first.status.engine
    degraded = cond(gone.status, "Degraded")
    assert degraded.reason == "NodeNotReady" and "cpu-1" in degraded.message and "m-1" in degraded.message
    assert cond(gone.status, "Available").status == "False"
    # Said once: the next reconcile with the same world writes nothing.
    again = decide(replace(later, hardware=parse_nodes([]), pods=(_lost_pod(),), children=down,
                           previous=gone.status, trigger="world", now="T4"))
    assert again.patch is None
    # The node is back and the pod ready: Ready again, nothing applied.
    back = decide(replace(later, previous=gone.status, trigger="world", now="T5"))
    assert back.status.phase == "Ready" and back.apply == ()
    # Without the lost-node signature, no node left is the plain wait for nodes.
    assert decide(replace(later, hardware=parse_nodes([]), trigger="world")).status.phase == "Resolving"
