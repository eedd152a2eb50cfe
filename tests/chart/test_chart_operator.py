"""The operator started exactly as the chart starts it (its arguments, its config file) against the
in-memory API of tests/controller: it serves the probe and metrics paths the chart points at, and
in namespaced mode every request it makes is allowed by the Role of that namespace or by the
chart's ClusterRole (never a cluster-wide request for a namespaced resource)."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from chartkit import ROOT, by_kind, one, render

from turnout.config import load_config
from turnout.controller import options as operator_app

pytest.importorskip("helm_python", reason="helm-python-sdk renders the chart: pip install helm-python-sdk")
kmock = pytest.importorskip("kmock", reason="the in-memory Kubernetes API is built on kmock")
sys.path.insert(0, str(ROOT / "tests" / "controller"))
from aiohttp.test_utils import RawTestServer  # noqa: E402
from ctlharness import DEPLOYMENTS, MDS, NODES, NS, OperatorRun, cpu_node, gguf_md  # noqa: E402
from fakekube import FakeKube  # noqa: E402

OTHER = "team-b"
UNWATCHED = "elsewhere"


@pytest.fixture
async def fake() -> AsyncIterator[FakeKube]:
    server_cls = functools.partial(RawTestServer, keepalive_timeout=0.2)
    async with FakeKube() as api, kmock.Server(api, server_cls=server_cls):
        crd = yaml.safe_load((ROOT / "crds" / "turnout.dev_modeldeployments.yaml").read_text())
        api.schemas[MDS] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for ns in (NS, OTHER, UNWATCHED):
            await api.put_object(("", "v1", "namespaces"), {"metadata": {"name": ns}})
        yield api
        api.close_watches()


def _verb(request: Any) -> str:
    method = str(request.method.value).upper()
    if method == "GET":
        if request.params.get("watch") == "true":
            return "watch"
        return "get" if request.name else "list"
    return {"POST": "create", "PATCH": "patch", "PUT": "update",
            "DELETE": "delete" if request.name else "deletecollection"}[method]


def _allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules)


async def test_operator_as_the_chart_runs_it_needs_only_what_the_chart_grants(
    fake: FakeKube, tmp_path: Path, free_port_factory: Callable[[], int]
) -> None:
    metrics_port, health_port = free_port_factory(), free_port_factory()
    values = {"watchNamespaces": [NS, OTHER], "metrics": {"port": metrics_port},
              "health": {"port": health_port}}
    objs = render(values)
    deployment = one(objs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    config_file = tmp_path / "config.yaml"
    config_file.write_text(one(objs, "ConfigMap")["data"]["config.yaml"])
    args = [a.replace("/etc/turnout/config.yaml", str(config_file)) for a in container["args"]]
    parser = argparse.ArgumentParser()
    operator_app.add_arguments(parser)
    options = operator_app.options_from(parser.parse_args([*args, "--bind-address=127.0.0.1"]))

    await fake.put_object(NODES, cpu_node())
    run = OperatorRun(fake, config=load_config(options.config_path), options=options)
    await run.start()
    try:
        await fake.put_object(MDS, gguf_md())
        await fake.put_object(MDS, {**gguf_md("lost"), "metadata": {"name": "lost", "namespace": UNWATCHED}})
        await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "qwen-gguf"))
        await fake.wait_for(lambda: (fake.get(MDS, NS, "qwen-gguf").get("status") or {}).get("phase") == "Deploying")
        async with aiohttp.ClientSession() as session:
            probe = container["livenessProbe"]["httpGet"]
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            async with session.get(f"http://127.0.0.1:{ports[probe['port']]}{probe['path']}") as response:
                assert response.status == 200
            async with session.get(f"http://127.0.0.1:{ports['metrics']}/metrics") as response:
                assert response.status == 200
                assert "turnout_operator_reconciles_total" in await response.text()
    finally:
        await run.stop()

    assert fake.get(DEPLOYMENTS, UNWATCHED, "lost") is None
    cluster_rules = one(objs, "ClusterRole")["rules"]
    role_rules: dict[str, list[dict[str, Any]]] = {}  # a namespace may have several (leader election, scrape)
    for role in by_kind(objs, "Role"):
        role_rules.setdefault(role["metadata"]["namespace"], []).extend(role["rules"])
    denied = []
    for request in fake.requests:
        if request.resource is None or not request.resource.plural:
            continue  # discovery: allowed to every authenticated user
        group = request.resource.group or ""
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        verb = _verb(request)
        allowed = _allows(cluster_rules, group, resource, verb) or (
            request.namespace is not None and _allows(role_rules.get(request.namespace, []), group, resource, verb))
        if not allowed:
            denied.append((request.namespace, group, resource, verb))
    assert denied == [], f"requests the chart's RBAC would deny: {sorted(set(denied))}"
