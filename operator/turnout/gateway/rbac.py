"""Every Kubernetes API permission the gateway needs, declared in one place.

The chart's gateway ClusterRole (or a Role per namespace for a namespaced
install) is generated from :data:`RULES` by ``scripts/sync-chart-rbac.py``; a
test records the gateway's real requests against the API emulator and proves
each is covered here and every rule is used. ``python -m turnout.gateway.rbac``
prints them as a ClusterRole.
"""

from __future__ import annotations

from turnout.api import GATEWAY_KEYS_SECRET, GROUP, PLURAL
from turnout.kube import rbac
from turnout.kube.rbac import Rule

RULES: tuple[Rule, ...] = (
    Rule(GROUP, PLURAL, ("list", "watch"), "served names, routing, apiKeySecretRef and replicas of every model"),
    Rule(GROUP, f"{PLURAL}/scale", ("get", "patch"),
         "wake a model scaled to zero (spec.replicas 0 -> 1, only from the 0 read) for a held request"),
    Rule("discovery.k8s.io", "endpointslices", ("list", "watch"), "the model pods' ready endpoints to route to"),
    Rule("", "secrets", ("get",), "the SHA-256 digests of the API keys the operator publishes (no other Secret)",
         resource_names=(GATEWAY_KEYS_SECRET,)),
)


def cluster_role(name: str = "turnout-gateway") -> dict[str, object]:
    """A ClusterRole granting exactly :data:`RULES`."""
    return rbac.cluster_role(name, RULES)


def role(name: str, namespace: str) -> dict[str, object]:
    """A Role granting :data:`RULES` in one namespace (every rule is on a namespaced resource)."""
    return rbac.role(name, namespace, RULES)


def main(argv: list[str] | None = None) -> int:
    return rbac.main(argv, description="Print the gateway's RBAC rules as a ClusterRole (or Role).",
                     name="turnout-gateway", namespace_help="print a Role for this namespace instead",
                     build=lambda name, ns: [role(name, ns) if ns else cluster_role(name)])


if __name__ == "__main__":
    raise SystemExit(main())
