"""RBAC rules as the operator and the host agent declare them, and the PolicyRules they become.

Each program declares its rules once (:mod:`turnout.controller.rbac`, :mod:`turnout.agent.rbac`,
:mod:`turnout.gateway.rbac`); the chart, ``python -m ... rbac`` (:func:`main`) and the tests that
match recorded requests against the rules all read those declarations through these helpers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

import yaml

#: Resources without a namespace: a namespaced install still needs a ClusterRole for these.
CLUSTER_SCOPED = frozenset({"nodes"})


@dataclass(frozen=True)
class Rule:
    """One RBAC rule: API group, resource (``plural`` or ``plural/subresource``), verbs, and why."""

    api_group: str
    resource: str
    verbs: tuple[str, ...]
    why: str
    #: False for permissions the API server checks but no request of the program shows as that verb (an admission
    #: plugin's check; create for a server-side apply that creates).
    observed: bool = True
    #: Only objects of these names (RBAC ``resourceNames``; in a ClusterRole: that name in every namespace).
    #: Empty: every object of the resource.
    resource_names: tuple[str, ...] = ()

    @property
    def cluster_scoped(self) -> bool:
        """Needs a ClusterRole even when the program works in only some namespaces (a Role suffices otherwise)."""
        return self.resource.split("/", 1)[0] in CLUSTER_SCOPED


def covers(api_group: str, resource: str, verb: str, rules: tuple[Rule, ...], name: str | None = None) -> Rule | None:
    """The first rule that allows ``verb`` on ``api_group``/``resource`` (the object ``name``), if any.

    A rule with ``resource_names`` covers only a request naming one of them (not a list, not a create).
    """
    for rule in rules:
        if rule.api_group == api_group and rule.resource == resource and verb in rule.verbs \
                and (not rule.resource_names or name in rule.resource_names):
            return rule
    return None


def merged(rules: tuple[Rule, ...]) -> list[dict[str, object]]:
    """The rules as Kubernetes PolicyRules, one per (group, resource, resource names), verbs merged and sorted,
    plus ``why``."""
    verbs: dict[tuple[str, str, tuple[str, ...]], set[str]] = {}
    whys: dict[tuple[str, str, tuple[str, ...]], list[str]] = {}
    for rule in rules:
        key = (rule.api_group, rule.resource, tuple(sorted(rule.resource_names)))
        verbs.setdefault(key, set()).update(rule.verbs)
        whys.setdefault(key, []).append(rule.why)
    out: list[dict[str, object]] = []
    for key in sorted(verbs):
        group, resource, names = key
        policy: dict[str, object] = {"apiGroups": [group], "resources": [resource]}
        if names:
            policy["resourceNames"] = list(names)
        out.append({**policy, "verbs": sorted(verbs[key]), "why": "; ".join(whys[key])})
    return out


def policy_rules(rules: tuple[Rule, ...]) -> list[dict[str, object]]:
    """:func:`merged` without ``why`` (not a PolicyRule field)."""
    return [{k: v for k, v in rule.items() if k != "why"} for rule in merged(rules)]


def cluster_role(name: str, rules: tuple[Rule, ...]) -> dict[str, object]:
    """A ClusterRole granting exactly ``rules``."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": policy_rules(rules),
    }


def role(name: str, namespace: str, rules: tuple[Rule, ...]) -> dict[str, object]:
    """A Role in ``namespace`` granting exactly ``rules``."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": policy_rules(rules),
    }


def main(argv: list[str] | None, *, description: str, name: str,
         build: Callable[[str, str | None], list[dict[str, object]]], namespace_help: str | None = None) -> int:
    """``python -m <program>.rbac``: print ``build(name, namespace)`` as YAML documents or JSON.

    Without ``namespace_help`` there is no ``--namespace`` (``build`` gets None). JSON prints a lone
    object as itself and several as a list.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    parser.add_argument("--name", default=name)
    if namespace_help:
        parser.add_argument("--namespace", help=namespace_help)
    ns = parser.parse_args(argv)
    objs = build(ns.name, getattr(ns, "namespace", None))
    if ns.output == "json":
        sys.stdout.write(json.dumps(objs[0] if len(objs) == 1 else objs, indent=2) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump_all(objs, sort_keys=False))
    return 0
