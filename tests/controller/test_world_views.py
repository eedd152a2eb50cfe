"""The typed views the reconcile passes from observe to decide to act: built from API objects, immutable."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from turnout.api import ModelDeploymentSpec
from turnout.controller.decide import Decision, Manifest, Observed, as_applied
from turnout.controller.world import (
    Child,
    ContainerState,
    Pod,
    Terminated,
    Waiting,
    WorkloadStatus,
    compact_child,
    compact_pod,
)

DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "m", "namespace": "ns", "uid": "u-d", "resourceVersion": "7", "generation": 3,
                 "labels": {"turnout.dev/spec-hash": "h1", "turnout.dev/deployment": "m"},
                 "ownerReferences": [{"kind": "ModelDeployment", "name": "m", "uid": "u-md"}],
                 "managedFields": [{"manager": "turnout"}]},
    "spec": {"replicas": 2, "template": {"spec": {"containers": []}}},
    "status": {"observedGeneration": 3, "replicas": 2, "readyReplicas": 1, "updatedReplicas": 2,
               "availableReplicas": 1, "conditions": [
                   {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated", "message": "m",
                    "lastUpdateTime": "T"}]},
}


def test_a_child_is_read_from_its_api_object():
    child = compact_child(DEPLOYMENT)
    assert child == Child(
        kind="Deployment", name="m", namespace="ns", uid="u-d", resource_version="7", generation=3,
        labels={"turnout.dev/spec-hash": "h1", "turnout.dev/deployment": "m"}, owner_uids=("u-md",),
        deleting=False, replicas=2,
        status=WorkloadStatus(replicas=2, ready_replicas=1, updated_replicas=2, observed_generation=3,
                              conditions=(WorkloadStatus.of(DEPLOYMENT["status"]).conditions[0],)),
    )
    assert child.spec_hash == "h1" and child.status is not None
    assert child.status.condition("Progressing").reason == "ReplicaSetUpdated"  # type: ignore[union-attr]
    # A Service has no replicas, a new object no status; a claim held by a finalizer is on its way out.
    claim = compact_child({"kind": "PersistentVolumeClaim", "metadata": {"name": "m-cache", "deletionTimestamp": "T"},
                           "spec": {"resources": {}}})
    assert (claim.replicas, claim.status, claim.deleting, claim.spec_hash) == (None, None, True, None)


def test_a_pod_is_read_with_its_init_containers_first_and_each_state():
    pod = compact_pod({
        "metadata": {"name": "m-1", "labels": {"turnout.dev/spec-hash": "h1"}},
        "status": {"phase": "Running",
                   "conditions": [{"type": "Ready", "status": "False", "lastProbeTime": None}],
                   "initContainerStatuses": [{"name": "fetch", "ready": False, "restartCount": 0,
                                              "state": {"terminated": {"reason": "Completed", "exitCode": 0}}}],
                   "containerStatuses": [{"name": "model-server", "ready": False, "restartCount": 4,
                                          "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                                          "lastState": {"terminated": {"reason": "Error", "exitCode": 3,
                                                                       "message": "engine died"}}}]},
    })
    assert (pod.name, pod.hash, pod.phase, pod.deleting) == ("m-1", "h1", "Running", False)
    assert [c.name for c in pod.containers] == ["fetch", "model-server"]
    fetch, server = pod.containers
    assert fetch.state == ContainerState(terminated=Terminated("Completed", None, 0))
    assert fetch.state.terminated is not None and not fetch.state.terminated.failed
    assert server.state == ContainerState(waiting=Waiting("CrashLoopBackOff", "back-off"))
    assert server.last_state.terminated == Terminated("Error", "engine died", 3) and server.restart_count == 4
    assert compact_pod({"metadata": {"name": "p"}, "status": {"containerStatuses": [
        {"name": "c", "state": {"running": {}}}]}}).containers[0].state.running


def test_the_views_are_immutable():
    child, pod = compact_child(DEPLOYMENT), compact_pod({"metadata": {"name": "p"}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        child.replicas = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        pod.deleting = True  # type: ignore[misc]


def test_the_workload_as_applied_keeps_the_rollout_seen_and_counts_a_changed_spec_as_a_new_generation():
    seen = compact_child(DEPLOYMENT)
    same = Manifest.of({**DEPLOYMENT, "metadata": {"name": "m", "labels": dict(DEPLOYMENT["metadata"]["labels"])}})
    assert as_applied(same, seen) == dataclasses.replace(same.view, generation=3, status=seen.status)
    scaled = Manifest.of({**same.body, "spec": {**DEPLOYMENT["spec"], "replicas": 4}})
    after = as_applied(scaled, seen)
    assert (after.replicas, after.generation, after.status) == (4, 4, seen.status)
    # a first apply: generation 1, no rollout yet (a status in what is sent is not the server's)
    assert as_applied(scaled, None).generation == 1 and as_applied(scaled, None).status is None


def test_the_workload_observed_is_the_current_one_else_any():
    spec = ModelDeploymentSpec.model_validate({"model": {"name": "qwen2.5-instruct"}})
    old = Child("LeaderWorkerSet", "old-name")
    o = Observed(name="m", namespace="ns", uid="u", generation=1, spec=spec, children={("LeaderWorkerSet",
                                                                                          "old-name"): old})
    assert o.deployment is old
    current = Child("Deployment", "m")
    assert dataclasses.replace(o, children={**o.children, ("Deployment", "m"): current}).deployment is current


def test_nothing_untyped_crosses_observe_decide_act():
    """What observe hands decide, and what decide hands act, holds no ``Any``: the status patch is computed by
    act from two typed statuses (``Decision.patch``); each child to apply is a typed view beside the object
    sent."""
    for cls, allowed in ((Observed, set()), (Decision, set())):
        hints = typing.get_type_hints(cls)
        untyped = {name for name, hint in hints.items() if "Any" in str(hint)}
        assert untyped <= allowed, (cls.__name__, untyped - allowed)
    for view in (Child, Pod, WorkloadStatus, ContainerState):
        assert not [n for n, h in typing.get_type_hints(view).items() if "Any" in str(h)], view
