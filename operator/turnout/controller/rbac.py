"""Every Kubernetes API permission the operator needs, declared in one place.

The Helm chart generates its ClusterRole (or, for a namespaced install, a
Role per namespace plus a ClusterRole for the ``cluster_scoped`` rules) from
:data:`RULES`; a test
records the operator's real requests against an API emulator and proves they
are covered by these rules, and that every rule marked ``observed`` is used.
``python -m turnout.controller.rbac`` prints the rules as a ClusterRole. The
rule type and its rendering live in :mod:`turnout.kube.rbac` (shared with the
host agent's declaration).
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from turnout.api import GROUP, PLURAL
from turnout.kube.rbac import Rule
from turnout.kube.rbac import cluster_role as _cluster_role
from turnout.kube.rbac import role as _role

RULES: tuple[Rule, ...] = (
    Rule(GROUP, PLURAL, ("list", "watch"), "watch ModelDeployments (kopf)"),
    Rule(GROUP, PLURAL, ("patch",), "kopf's last-handled-configuration and progress annotations"),
    Rule(GROUP, f"{PLURAL}/status", ("patch",), "write status (phase, conditions, engine, endpoint)"),
    Rule(
        GROUP,
        f"{PLURAL}/finalizers",
        ("update",),
        "set blockOwnerDeletion on the children's ownerReferences (OwnerReferencesPermissionEnforcement)",
        observed=False,
    ),
    Rule("", "nodes", ("list", "watch"), "in-memory index of node hardware for the resolver"),
    Rule("apps", "deployments", ("list", "watch"), "follow the model server Deployments' rollout"),
    Rule("apps", "deployments", ("patch",), "server-side apply of the model server Deployment"),
    Rule("", "services", ("list", "watch"), "know which Services are applied (spec-hash)"),
    Rule("", "services", ("patch",), "server-side apply of the model Service"),
    Rule("", "persistentvolumeclaims", ("list", "watch"), "know which cache claims are applied"),
    Rule("", "persistentvolumeclaims", ("patch",), "server-side apply of the model cache claim"),
    # A server-side apply is a PATCH, but one that creates the object is authorized as create as well: the API
    # server refuses it (403) without that verb, though no request of the operator is a POST for these kinds.
    Rule("apps", "deployments", ("create",), "server-side apply of a Deployment not there yet (authorized as "
         "create)", observed=False),
    Rule("", "services", ("create",), "server-side apply of a Service not there yet (authorized as create)",
         observed=False),
    Rule("", "persistentvolumeclaims", ("create",), "server-side apply of a cache claim not there yet (authorized "
         "as create)", observed=False),
    Rule("apps", "deployments", ("delete",), "prune a Deployment the current plan no longer uses"),
    Rule("", "services", ("delete",), "prune a Service the current plan no longer uses"),
    Rule("", "persistentvolumeclaims", ("delete",), "prune the cache claim when spec.cache no longer asks for it"),
    Rule("leaderworkerset.x-k8s.io", "leaderworkersets", ("list", "watch"),
         "follow the LeaderWorkerSets of multi-node plans (only while the cluster serves them)"),
    Rule("leaderworkerset.x-k8s.io", "leaderworkersets", ("patch",),
         "server-side apply of the LeaderWorkerSet of a multi-node plan"),
    Rule("leaderworkerset.x-k8s.io", "leaderworkersets", ("create",), "server-side apply of a LeaderWorkerSet not "
         "there yet (authorized as create)", observed=False),
    Rule("leaderworkerset.x-k8s.io", "leaderworkersets", ("delete",),
         "prune the LeaderWorkerSet when the plan fits one node again"),
    Rule("inference.networking.k8s.io", "inferencepools", ("list", "watch"),
         "follow the InferencePools of --inference-pool while the cluster serves them (so they are pruned when it "
         "is off)"),
    Rule("inference.networking.k8s.io", "inferencepools", ("patch",),
         "server-side apply of a deployment's InferencePool (--inference-pool)"),
    Rule("inference.networking.k8s.io", "inferencepools", ("create",), "server-side apply of an InferencePool not "
         "there yet (authorized as create)", observed=False),
    Rule("inference.networking.k8s.io", "inferencepools", ("delete",),
         "prune an InferencePool when --inference-pool is off or the name changed"),
    Rule(GROUP, f"{PLURAL}/scale", ("patch",), "the autoscaler sets spec.replicas through the scale subresource"),
    Rule("discovery.k8s.io", "endpointslices", ("list",),
         "the autoscaler scrapes the ready model pods and gateway endpoints (EndpointSlices of their Services)"),
    Rule("", "pods", ("list", "watch"), "detect CrashLoopBackOff, ImagePullBackOff, OOMKilled, Unschedulable"),
    Rule("events.k8s.io", "events", ("create",), "Events: engine selected, rejected, rollout started, degraded"),
    Rule("", "events", ("create",), "kopf's own warning Events (a handler that failed)", observed=False),
)


def cluster_role(name: str = "turnout-operator", rules: tuple[Rule, ...] = RULES) -> dict[str, object]:
    """A ClusterRole granting exactly ``rules`` (the ``why`` is dropped: not a PolicyRule field)."""
    return _cluster_role(name, rules)


def namespaced_roles(name: str, namespace: str) -> list[dict[str, object]]:
    """For an operator watching some namespaces: a Role there, and a ClusterRole for cluster-scoped rules."""
    local = tuple(r for r in RULES if not r.cluster_scoped)
    cluster = tuple(r for r in RULES if r.cluster_scoped)
    return [cluster_role(f"{name}-cluster", cluster), _role(name, namespace, local)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the operator's RBAC rules as Kubernetes objects.")
    parser.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    parser.add_argument("--name", default="turnout-operator")
    parser.add_argument("--namespace", help="print a Role for this namespace plus a ClusterRole for nodes")
    ns = parser.parse_args(argv)
    objs = namespaced_roles(ns.name, ns.namespace) if ns.namespace else [cluster_role(ns.name)]
    if ns.output == "json":
        sys.stdout.write(json.dumps(objs if ns.namespace else objs[0], indent=2) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump_all(objs, sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
