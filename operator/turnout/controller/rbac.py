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

from turnout.api import GATEWAY_KEYS_SECRET, GROUP, PLURAL
from turnout.kube import rbac
from turnout.kube.rbac import Rule


def _applied(group: str, plural: str, one: str, *, follow: str, apply: str, prune: str) -> tuple[Rule, ...]:
    """The rules of a child kind the operator follows, applies (server-side) and prunes."""
    return (
        Rule(group, plural, ("list", "watch"), follow),
        Rule(group, plural, ("patch",), apply),
        # A server-side apply is a PATCH, but one that creates the object is authorized as create as well: the API
        # server refuses it (403) without that verb, though no request of the operator is a POST for these kinds.
        Rule(group, plural, ("create",), f"server-side apply of {one} not there yet (authorized as create)",
             observed=False),
        Rule(group, plural, ("delete",), prune),
    )


RULES: tuple[Rule, ...] = (
    # kopf only watches them (no write of its own: the reconciles run on the operator's work queue).
    Rule(GROUP, PLURAL, ("list", "watch"), "watch ModelDeployments (kopf)"),
    Rule(GROUP, f"{PLURAL}/status", ("patch",), "write status (phase, conditions, engine, endpoint)"),
    Rule(
        GROUP,
        f"{PLURAL}/finalizers",
        ("update",),
        "set blockOwnerDeletion on the children's ownerReferences (OwnerReferencesPermissionEnforcement)",
        observed=False,
    ),
    Rule("", "nodes", ("list", "watch"), "in-memory index of node hardware for the resolver"),
    *_applied("apps", "deployments", "a Deployment", follow="follow the model server Deployments' rollout",
              apply="server-side apply of the model server Deployment",
              prune="prune a Deployment the current plan no longer uses"),
    *_applied("", "services", "a Service", follow="know which Services are applied (spec-hash)",
              apply="server-side apply of the model Service", prune="prune a Service the current plan no longer uses"),
    *_applied("", "persistentvolumeclaims", "a cache claim", follow="know which cache claims are applied",
              apply="server-side apply of the model cache claim",
              prune="prune the cache claim when spec.cache no longer asks for it"),
    *_applied("leaderworkerset.x-k8s.io", "leaderworkersets", "a LeaderWorkerSet",
              follow="follow the LeaderWorkerSets of multi-node plans (only while the cluster serves them)",
              apply="server-side apply of the LeaderWorkerSet of a multi-node plan",
              prune="prune the LeaderWorkerSet when the plan fits one node again"),
    *_applied("inference.networking.k8s.io", "inferencepools", "an InferencePool",
              follow="follow the InferencePools of --inference-pool while the cluster serves them (so they are "
              "pruned when it is off)",
              apply="server-side apply of a deployment's InferencePool (--inference-pool)",
              prune="prune an InferencePool when --inference-pool is off or the name changed"),
    Rule(GROUP, f"{PLURAL}/scale", ("patch",), "the autoscaler sets spec.replicas through the scale subresource"),
    Rule("discovery.k8s.io", "endpointslices", ("list",),
         "the autoscaler scrapes the ready model pods and gateway endpoints (EndpointSlices of their Services)"),
    Rule("", "pods", ("list", "watch"), "detect CrashLoopBackOff, ImagePullBackOff, OOMKilled, Unschedulable"),
    Rule("", "pods", ("patch",), "record in a model pod's turnout.dev/adapters annotation the LoRA adapters its "
         "engine holds"),
    Rule("", "secrets", ("get",), "read the key a ModelDeployment's apiKeySecretRef names, to publish its SHA-256"),
    Rule("", "secrets", ("patch",), "server-side apply of the key digests the gateway reads (only that Secret)",
         resource_names=(GATEWAY_KEYS_SECRET,)),
    Rule("", "secrets", ("create",), f"server-side apply of {GATEWAY_KEYS_SECRET} not there yet (authorized as "
         "create, which RBAC cannot restrict by name)", observed=False),
    Rule("events.k8s.io", "events", ("create",), "Events: engine selected, rejected, rollout started, degraded"),
    Rule("", "events", ("create",), "kopf's own warning Events (a handler that failed)", observed=False),
)


#: Leader election (``--leader-elect``): the Lease in the operator's own namespace, granted by a Role there.
LEASE_RULES: tuple[Rule, ...] = (
    Rule("coordination.k8s.io", "leases", ("get", "create", "update"),
         "leader election: read, create and renew the operator's Lease (its own namespace only)"),
)


#: The gateway Service's EndpointSlices (``--gateway-service``), in the operator's own namespace: the
#: autoscaler and the LoRA adapters' placement scrape every gateway replica. Cluster-wide the ClusterRole's
#: ``endpointslices`` rule covers it; a namespaced install grants it by a Role in the release's namespace.
GATEWAY_SCRAPE_RULES: tuple[Rule, ...] = (
    Rule("discovery.k8s.io", "endpointslices", ("list",),
         "find the gateway replicas to scrape (the gateway Service's EndpointSlices, the operator's own namespace)"),
)


def cluster_role(name: str = "turnout-operator", rules: tuple[Rule, ...] = RULES) -> dict[str, object]:
    """A ClusterRole granting exactly ``rules`` (the ``why`` is dropped: not a PolicyRule field)."""
    return rbac.cluster_role(name, rules)


def namespaced_roles(name: str, namespace: str) -> list[dict[str, object]]:
    """For an operator watching some namespaces: a Role there, and a ClusterRole for cluster-scoped rules."""
    local = tuple(r for r in RULES if not r.cluster_scoped)
    cluster = tuple(r for r in RULES if r.cluster_scoped)
    return [cluster_role(f"{name}-cluster", cluster), rbac.role(name, namespace, local)]


def main(argv: list[str] | None = None) -> int:
    return rbac.main(argv, description="Print the operator's RBAC rules as Kubernetes objects.",
                     name="turnout-operator",
                     namespace_help="print a Role for this namespace plus a ClusterRole for nodes",
                     build=lambda name, ns: namespaced_roles(name, ns) if ns else [cluster_role(name)])


if __name__ == "__main__":
    raise SystemExit(main())
