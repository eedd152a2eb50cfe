"""Every Kubernetes API call the host agent makes, declared in one place, and how its identity is granted them.

The agent authenticates as its node, ``system:node:<name>`` in group ``system:nodes``, with a
certificate from TLS bootstrapping (:mod:`turnout.agent.bootstrap`). On a cluster with the Node
authorizer (``--authorization-mode=Node,RBAC``, every kubeadm, kind, k3s and managed cluster) and
the NodeRestriction admission plugin, that identity is granted exactly what :data:`RULES` lists,
limited to its own Node and Lease, the pods bound to it, and the Secrets and ConfigMaps those pods
reference: nothing needs binding but :data:`BOOTSTRAP_BINDINGS` (the chart renders them when
``hostAgents.names`` is set). A test records the agent's real requests against the API emulator and
proves each is covered here and every rule is used.

On a cluster *without* the Node authorizer (rare), ``python -m turnout.agent.rbac`` prints a
ClusterRole granting :data:`RULES`; bind it to the user ``system:node:<name>`` of each host
(``docs/host-agent.md``). RBAC cannot narrow it to the node's own objects as the Node authorizer does.
"""

from __future__ import annotations

from turnout.kube import rbac
from turnout.kube.rbac import Rule

RULES: tuple[Rule, ...] = (
    Rule("", "nodes", ("get", "create", "patch"), "register this node: labels, taint, capacity"),
    Rule("", "nodes/status", ("patch",), "Ready condition, capacity, addresses (heartbeat)"),
    Rule("coordination.k8s.io", "leases", ("get", "create", "patch"), "node heartbeat Lease in kube-node-lease"),
    Rule("", "pods", ("list", "watch"), "pods bound to this node (fieldSelector spec.nodeName)"),
    Rule("", "pods", ("delete",), "remove a pod once its processes are gone (gracePeriodSeconds=0)"),
    Rule("", "pods/status", ("patch",), "phase, podIP, container states, Ready condition"),
    Rule("", "secrets", ("get",), "env valueFrom.secretKeyRef and secret volumes (API key, HF token)"),
    Rule("", "configmaps", ("get",), "env valueFrom.configMapKeyRef and configMap volumes"),
    Rule("certificates.k8s.io", "certificatesigningrequests", ("create", "list", "watch"),
         "TLS bootstrapping and renewal of the node's client certificate"),
)

#: The group of the hosts' bootstrap tokens (``auth-extra-groups``); bootstrap tokens are also in
#: ``system:bootstrappers``, which kubeadm binds for its own tokens.
BOOTSTRAP_GROUP = "system:bootstrappers:turnout"
#: The standard ClusterRoles (bootstrapped by every API server) to bind: (ClusterRole, group, why).
BOOTSTRAP_BINDINGS: tuple[tuple[str, str, str], ...] = (
    ("system:node-bootstrapper", BOOTSTRAP_GROUP, "bootstrap tokens may create and watch CSRs"),
    ("system:certificates.k8s.io:certificatesigningrequests:nodeclient", BOOTSTRAP_GROUP,
     "the controller manager auto-approves a bootstrap token's node client CSR"),
    ("system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", "system:nodes",
     "... and a node's CSR renewing its own certificate"),
)


def bootstrap_binding_name(role: str, prefix: str = "turnout") -> str:
    """``<prefix>-<role, short>`` (e.g. ``turnout-node-bootstrapper``, ``turnout-selfnodeclient``)."""
    return f"{prefix}-" + role.removeprefix("system:").replace("certificates.k8s.io:certificatesigningrequests:", "")


def bootstrap_bindings() -> list[dict[str, object]]:
    """The ClusterRoleBindings of :data:`BOOTSTRAP_BINDINGS`."""
    return [{
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": bootstrap_binding_name(role)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
    } for role, group, _ in BOOTSTRAP_BINDINGS]


def cluster_role(name: str = "turnout-agent") -> dict[str, object]:
    """A ClusterRole granting exactly :data:`RULES`, for clusters without the Node authorizer."""
    return rbac.cluster_role(name, RULES)


def main(argv: list[str] | None = None) -> int:
    return rbac.main(argv, description="Print the host agent's API calls as a ClusterRole, for a cluster without "
                                       "the Node authorizer (bind it to system:node:<name>).",
                     name="turnout-agent", build=lambda name, _: [cluster_role(name)])


if __name__ == "__main__":
    raise SystemExit(main())
