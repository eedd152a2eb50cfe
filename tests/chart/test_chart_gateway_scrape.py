"""A namespaced install lets the operator list the gateway Service's EndpointSlices in the release's namespace:
the autoscaler and the LoRA adapters' placement scrape every gateway replica (``--gateway-service``). Without
that Role the operator's namespaced Roles cover only the watched namespaces, and the scrape was forbidden."""

from __future__ import annotations

from chartkit import NAMESPACE, by_kind, one, render

from turnout.controller.rbac import GATEWAY_SCRAPE_RULES

SUFFIX = "-gateway-scrape"


def _granted(role: dict) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}


def test_a_namespaced_install_grants_the_gateway_endpointslices_in_the_release_namespace() -> None:
    objs = render({"watchNamespaces": ["team-a"]})
    (role,) = [r for r in by_kind(objs, "Role") if r["metadata"]["name"].endswith(SUFFIX)]
    (binding,) = [b for b in by_kind(objs, "RoleBinding") if b["metadata"]["name"].endswith(SUFFIX)]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
    assert _granted(role) == {(r.api_group, r.resource, v) for r in GATEWAY_SCRAPE_RULES for v in r.verbs}
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    sa = one(objs, "ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    (container,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    (flag,) = [a for a in container["args"] if a.startswith("--gateway-service=")]
    assert flag.split("=", 1)[1].split("/")[0] == NAMESPACE  # the namespace the Role is in


def test_cluster_wide_or_without_a_gateway_no_extra_role() -> None:
    for values in ({}, {"watchNamespaces": ["team-a"], "gateway": {"enabled": False}}):
        objs = render(values)
        assert not [r for r in by_kind(objs, "Role") if r["metadata"]["name"].endswith(SUFFIX)], values
    cluster = {(g, r, v) for role in by_kind(render(), "ClusterRole") for rule in role["rules"]
               for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert ("discovery.k8s.io", "endpointslices", "list") in cluster  # cluster-wide: the ClusterRole covers it
