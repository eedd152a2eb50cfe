"""Operator failover on the real cluster: the chart's two operator replicas, the leader pod deleted, the
standby reconciles a new ModelDeployment — measured from the delete to the new deployment's first child.

Runs in the real-node tier (the chart's operator image must run as a pod: ``test_realnode_e2e``'s fixtures
build and load it); skipped with the reason elsewhere. Two deletes: a forced one (``--grace-period=0``, a
crash: the Lease is not released, the standby waits out the lease duration) and a graceful one (SIGTERM:
the leader releases, the standby leads at its next try). The bound for the forced case is client-go's:
lease duration + 2 retry periods (19 s with the chart's 15 s / 2 s), plus the standby's start of kopf and
one reconcile. ``TURNOUT_E2E_RESULTS=<file>`` records ``operator_failover`` for docs/reliability.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import nodeimages
import pytest
import realnode
from kubectl import get_json, kubectl, poll
from realnode import RELEASE, chart_values, example
from results import record_results

from conftest import RUN
from turnout.render.manifests import child_name

# The real-node tier's fixtures: the node, its taints, the images built and loaded, the other nodes cordoned.
real_node = realnode.real_node
tolerations = realnode.tolerations
images = realnode.images
only_the_real_node = realnode.only_the_real_node
LEASE_DURATION, RETRY = 15, 2
#: Lease expiry (as the standby sees it) + kopf's start + one reconcile.
BOUND = LEASE_DURATION + 2 * RETRY + 15


@pytest.fixture(scope="module")
def ha_release(crds: None, real_node: dict[str, Any], images: nodeimages.Images,
               tolerations: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    with realnode.chart_namespaces(f"turnout-ha-{RUN}-sys", f"turnout-ha-{RUN}-models") as (system, models):
        values = chart_values(images, tolerations, models)
        assert "replicas" not in values, "the chart's defaults (2 replicas, leader election) are what is tested"
        with realnode.installed_chart(system, models, values, clear_models=True, always_uninstall=True):
            yield system, models


def _operator_pods(system: str) -> list[str]:
    pods = json.loads(kubectl("get", "pods", "-n", system, "-l", "app.kubernetes.io/component=operator",
                              "-o", "json"))["items"]
    return [p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")]


def _holder(system: str) -> str | None:
    lease = get_json("lease", RELEASE, "-n", system)
    return (lease or {}).get("spec", {}).get("holderIdentity") or None


def _reconciled(models: str, name: str) -> bool:
    return bool(get_json("deployment", child_name(name), "-n", models))


def _apply(models: str, doc: dict[str, Any], name: str) -> None:
    doc = json.loads(json.dumps(doc))
    doc["metadata"]["name"] = name
    doc["spec"]["servedModelName"] = name
    kubectl("apply", "-n", models, "-f", "-", stdin=json.dumps(doc))


def _failover(system: str, models: str, doc: dict[str, Any], name: str, *, force: bool) -> dict[str, Any]:
    leader = poll(lambda: (h := _holder(system)) in _operator_pods(system) and h, timeout=120,
                  what="a leader among the operator pods")
    standby = poll(lambda: [p for p in _operator_pods(system) if p != leader] or None, timeout=180,
                   what="a standby operator pod")
    start = time.monotonic()
    kubectl("delete", "pod", leader, "-n", system, "--wait=false",
            *(["--grace-period=0", "--force"] if force else []))
    # The old leader leads until its process is gone (a forced delete removes the object at once, the kubelet
    # kills the container a moment later) or it releases the Lease: the new deployment comes after that.
    poll(lambda: _holder(system) != leader, timeout=BOUND + 60, interval=0.2, what="the Lease taken over")
    _apply(models, doc, name)
    poll(lambda: _reconciled(models, name), timeout=BOUND + 60, interval=0.2, what=f"{name} reconciled")
    seconds = time.monotonic() - start
    new_leader = _holder(system)
    # The standby, or the pod the Deployment made in the deleted one's place: whichever takes the Lease first.
    assert new_leader and new_leader != leader and new_leader in _operator_pods(system), (leader, new_leader, standby)
    return {"seconds": round(seconds, 1), "old_leader": leader, "new_leader": new_leader}


def test_the_standby_reconciles_a_new_deployment_after_the_leader_pod_is_deleted(
        ha_release: tuple[str, str], tolerations: list[dict[str, Any]]) -> None:
    system, models = ha_release
    assert len(poll(lambda: len(_operator_pods(system)) == 2 and _operator_pods(system), timeout=180,
                    what="two operator pods")) == 2
    doc = example("tiny-chat-gguf.yaml", tolerations)
    _apply(models, doc, "ha-before")
    poll(lambda: _reconciled(models, "ha-before"), timeout=120, what="the leader's reconcile")
    forced = _failover(system, models, doc, "ha-after-kill", force=True)
    # The deleted pod's Deployment makes a new standby; wait for it, then a graceful handover.
    graceful = _failover(system, models, doc, "ha-after-term", force=False)
    figures = {"forced_s": forced["seconds"], "graceful_s": graceful["seconds"], "bound_s": BOUND,
               "lease_duration_s": LEASE_DURATION}
    print(f"\noperator failover: {figures}")
    record_results({"operator_failover": figures})
    assert forced["seconds"] <= BOUND and graceful["seconds"] <= BOUND, figures
    # Nothing reconciled twice: one Deployment per ModelDeployment.
    for name in ("ha-before", "ha-after-kill", "ha-after-term"):
        owned = [d for d in json.loads(kubectl("get", "deployments", "-n", models, "-o", "json"))["items"]
                 if any(r.get("name") == name for r in d["metadata"].get("ownerReferences") or [])]
        assert len(owned) == 1, (name, [d["metadata"]["name"] for d in owned])
