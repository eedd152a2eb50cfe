"""Every Kubernetes API permission the host agent needs, declared in one place.

``docs/host-agent.md`` shows how to grant them; a test records the agent's
real requests against the API emulator and proves each is covered here and
every rule is used. ``python -m turnout.agent.rbac`` prints a ClusterRole.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from turnout.kube.rbac import Rule
from turnout.kube.rbac import cluster_role as _cluster_role

RULES: tuple[Rule, ...] = (
    Rule("", "nodes", ("get", "create", "patch"), "register this node: labels, taint, capacity"),
    Rule("", "nodes/status", ("patch",), "Ready condition, capacity, addresses (heartbeat)"),
    Rule("coordination.k8s.io", "leases", ("get", "create", "patch"), "node heartbeat Lease in kube-node-lease"),
    Rule("", "pods", ("list", "watch"), "pods bound to this node (fieldSelector spec.nodeName)"),
    Rule("", "pods", ("delete",), "remove a pod once its processes are gone (gracePeriodSeconds=0)"),
    Rule("", "pods/status", ("patch",), "phase, podIP, container states, Ready condition"),
    Rule("", "secrets", ("get",), "env valueFrom.secretKeyRef and secret volumes (API key, HF token)"),
    Rule("", "configmaps", ("get",), "env valueFrom.configMapKeyRef and configMap volumes"),
)


def cluster_role(name: str = "turnout-agent") -> dict[str, object]:
    """A ClusterRole granting exactly :data:`RULES`."""
    return _cluster_role(name, RULES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the host agent's RBAC rules as a ClusterRole.")
    parser.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    parser.add_argument("--name", default="turnout-agent")
    ns = parser.parse_args(argv)
    role = cluster_role(ns.name)
    sys.stdout.write(json.dumps(role, indent=2) + "\n" if ns.output == "json" else yaml.safe_dump(role))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
