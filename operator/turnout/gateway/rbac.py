"""Every Kubernetes API permission the gateway needs, declared in one place.

The chart's gateway ClusterRole (or a Role per namespace for a namespaced
install) is generated from :data:`RULES` by ``scripts/sync-chart-rbac.py``; a
test records the gateway's real requests against the API emulator and proves
each is covered here and every rule is used. ``python -m turnout.gateway.rbac``
prints them as a ClusterRole.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from turnout.api import GROUP, PLURAL
from turnout.kube.rbac import Rule, merged

RULES: tuple[Rule, ...] = (
    Rule(GROUP, PLURAL, ("list", "watch"), "served names, routing, apiKeySecretRef and replicas of every model"),
    Rule(GROUP, f"{PLURAL}/scale", ("patch",), "wake a model scaled to zero (spec.replicas 0 -> 1) for a held request"),
    Rule("discovery.k8s.io", "endpointslices", ("list", "watch"), "the model pods' ready endpoints to route to"),
    Rule("", "secrets", ("get",), "the Bearer key of a model with apiKeySecretRef (checked at the gateway)"),
)


def _rules() -> list[dict[str, object]]:
    return [{k: v for k, v in rule.items() if k != "why"} for rule in merged(RULES)]


def cluster_role(name: str = "turnout-gateway") -> dict[str, object]:
    """A ClusterRole granting exactly :data:`RULES`."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
            "rules": _rules()}


def role(name: str, namespace: str) -> dict[str, object]:
    """A Role granting :data:`RULES` in one namespace (every rule is on a namespaced resource)."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": namespace}, "rules": _rules()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the gateway's RBAC rules as a ClusterRole (or Role).")
    parser.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    parser.add_argument("--name", default="turnout-gateway")
    parser.add_argument("--namespace", help="print a Role for this namespace instead")
    ns = parser.parse_args(argv)
    obj = role(ns.name, ns.namespace) if ns.namespace else cluster_role(ns.name)
    sys.stdout.write(json.dumps(obj, indent=2) + "\n" if ns.output == "json" else yaml.safe_dump(obj, sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
