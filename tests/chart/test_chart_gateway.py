"""The chart's gateway: on by default, exactly the gateway's declared RBAC, arguments its own parser takes."""

from __future__ import annotations

from typing import Any

import pytest
from chartkit import EVERYTHING, NAMESPACE, by_kind, is_gateway, one, render, render_files

from turnout.cli import build_parser
from turnout.gateway.rbac import RULES

helm = pytest.importorskip("helm_python", reason="helm-python-sdk renders the chart: pip install helm-python-sdk")

DECLARED = {(r.api_group, r.resource, v) for r in RULES for v in r.verbs}


def _triples(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def _args(objs: list[dict[str, Any]]) -> Any:
    (container,) = one(objs, "Deployment", gateway=True)["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["turnout", "gateway"]
    return build_parser("gateway").parse_args(["gateway", *container["args"]]), container


def test_gateway_is_on_by_default_with_exactly_its_declared_rbac() -> None:
    objs = render()
    role = one(objs, "ClusterRole", gateway=True)
    assert _triples(role["rules"]) == DECLARED
    binding = one(objs, "ClusterRoleBinding", gateway=True)
    account = one(objs, "ServiceAccount", gateway=True)
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": NAMESPACE}]
    pod = one(objs, "Deployment", gateway=True)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"] != \
        one(objs, "ServiceAccount")["metadata"]["name"], "an identity of its own, not the operator's"
    args, _ = _args(objs)
    assert args.all_namespaces and args.port == 8000 and args.hold_timeout == 300 and args.queue_size == 100
    assert args.api_key_file is None
    text = render_files()["turnout/templates/gateway.yaml"]
    assert all(f"# {r.why}\n" in text for r in RULES), "each rule says what it serves"


def test_namespaced_gateway_gets_a_role_per_namespace_and_no_cluster_role() -> None:
    objs = render(EVERYTHING)
    assert by_kind(objs, "ClusterRole", gateway=True) == []
    roles = {r["metadata"]["namespace"]: r for r in by_kind(objs, "Role", gateway=True)}
    assert set(roles) == {"team-a", "team-b"} and all(_triples(r["rules"]) == DECLARED for r in roles.values())
    bindings = by_kind(objs, "RoleBinding", gateway=True)
    assert {b["metadata"]["namespace"] for b in bindings} == {"team-a", "team-b"}
    args, _ = _args(objs)
    assert args.namespaces == ["team-a", "team-b"] and not args.all_namespaces


def test_values_reach_the_gateway_and_its_key_is_mounted_from_the_secret() -> None:
    values = {"gateway": {"port": 9100, "holdTimeoutSeconds": 60, "queueSize": 7, "replicas": 3,
                          "service": {"type": "LoadBalancer", "port": 443},
                          "apiKeySecret": {"name": "gw-key", "key": "token"}}}
    objs = render(values)
    args, container = _args(objs)
    assert (args.port, args.hold_timeout, args.queue_size) == (9100, 60, 7)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "gateway-key")
    assert args.api_key_file == f"{mount['mountPath']}/token"
    deployment = one(objs, "Deployment", gateway=True)
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "gateway-key")
    assert volume["secret"]["secretName"] == "gw-key"
    assert deployment["spec"]["replicas"] == 3
    service = one(objs, "Service", gateway=True)
    assert service["spec"]["type"] == "LoadBalancer" and service["spec"]["ports"][0]["port"] == 443
    assert container["ports"] == [{"name": "http", "containerPort": 9100, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_selectors_keep_the_gateway_and_the_operator_apart() -> None:
    objs = render()
    gateway_pod = one(objs, "Deployment", gateway=True)["spec"]["template"]["metadata"]["labels"]
    operator = one(objs, "Deployment")
    operator_pod = operator["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    assert selects(one(objs, "Service", gateway=True)["spec"]["selector"], gateway_pod)
    assert not selects(one(objs, "Service", gateway=True)["spec"]["selector"], operator_pod)
    assert not selects(operator["spec"]["selector"]["matchLabels"], gateway_pod)


def test_gateway_can_be_turned_off() -> None:
    assert [o for o in render({"gateway": {"enabled": False}}) if is_gateway(o)] == []


def test_gateway_pod_meets_the_restricted_pod_security_standard() -> None:
    pod = one(render(), "Deployment", gateway=True)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("values", [{"gateway": {"queueSize": 0}}, {"gateway": {"service": {"type": "Ingress"}}},
                                    {"gateway": {"holdTimeout": 5}}])
def test_schema_refuses_bad_gateway_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError):
        render(values)


def test_notes_give_the_gateway_url() -> None:
    notes = render_files()["turnout/templates/NOTES.txt"]
    assert "http://turnout-gateway.turnout-system.svc/v1" in notes
    moved = render_files({"gateway": {"service": {"port": 8443}}})["turnout/templates/NOTES.txt"]
    assert "http://turnout-gateway.turnout-system.svc:8443/v1" in moved
    assert "gateway" not in render_files({"gateway": {"enabled": False}})["turnout/templates/NOTES.txt"]
