"""The chart's HA defaults: two operator replicas with leader election on a Lease (a Role in the release's
namespace grants exactly the declared lease rules), two gateway replicas, and a PodDisruptionBudget of
minAvailable 1 for each; one replica renders neither budget nor election."""

from __future__ import annotations

import argparse

import pytest
from chartkit import NAMESPACE, by_kind, one, render

from turnout.controller import options as operator_options
from turnout.controller.rbac import LEASE_RULES
from turnout.controller.run import lease_settings


def _operator(objs: list[dict]) -> dict:
    return one(objs, "Deployment")


def _gateway(objs: list[dict]) -> dict:
    return one(objs, "Deployment", gateway=True)


def test_defaults_run_two_operators_with_leader_election_on_a_lease() -> None:
    objs = render()
    deployment = _operator(objs)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    parser = argparse.ArgumentParser()
    operator_options.add_arguments(parser)
    # The kubelet expands $(POD_NAME) in args.
    args = [a.replace("$(POD_NAME)", "turnout-5f7-abc") for a in container["args"]]
    options = operator_options.options_from(parser.parse_args(args))
    assert options.leader_elect
    lease = lease_settings(options)
    assert (lease.name, lease.namespace, lease.identity) == ("turnout", NAMESPACE, "turnout-5f7-abc")
    assert (lease.lease_duration, lease.renew_deadline, lease.retry_period) == (15, 10, 2)


def test_the_lease_is_granted_by_a_role_in_the_release_namespace_only() -> None:
    objs = render()
    (role,) = [r for r in by_kind(objs, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    (binding,) = [b for b in by_kind(objs, "RoleBinding") if b["metadata"]["name"].endswith("-leader-election")]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert granted == {(r.api_group, r.resource, v) for r in LEASE_RULES for v in r.verbs}
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    sa = one(objs, "ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    for cluster_role in by_kind(objs, "ClusterRole"):
        assert all("leases" not in rule["resources"] for rule in cluster_role["rules"])


def test_two_gateways_and_a_disruption_budget_for_each() -> None:
    objs = render()
    assert _gateway(objs)["spec"]["replicas"] == 2
    budgets = {p["metadata"]["name"]: p for g in (False, True) for p in by_kind(objs, "PodDisruptionBudget", gateway=g)}
    assert set(budgets) == {"turnout", "turnout-gateway"}
    for deployment in (_operator(objs), _gateway(objs)):
        budget = budgets[deployment["metadata"]["name"]]
        assert budget["spec"]["minAvailable"] == 1
        assert budget["spec"]["selector"] == deployment["spec"]["selector"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_one_replica_renders_no_budget_that_would_block_every_drain() -> None:
    objs = render({"replicas": 1, "leaderElection": {"enabled": False}, "gateway": {"replicas": 1}})
    assert by_kind(objs, "PodDisruptionBudget") == by_kind(objs, "PodDisruptionBudget", gateway=True) == []
    deployment = _operator(objs)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert not any(a.startswith("--leader-elect") for a in container["args"])
    assert not [r for r in by_kind(objs, "Role") if r["metadata"]["name"].endswith("-leader-election")]


def test_two_operators_without_leader_election_are_refused() -> None:
    import helm_python

    with pytest.raises(helm_python.HelmError, match=r"replicas > 1 needs leaderElection\.enabled"):
        render({"leaderElection": {"enabled": False}})
