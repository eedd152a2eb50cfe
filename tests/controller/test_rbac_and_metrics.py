"""The operator's API use equals its declared RBAC; metrics and health endpoints answer."""

from __future__ import annotations

import asyncio

import aiohttp
import yaml
from aiohttp import web
from ctlharness import (
    CLAIMS,
    DEPLOYMENTS,
    INFERENCE_POOLS,
    LWS,
    MDS,
    NODES,
    NS,
    SERVICES,
    MetricsServer,
    OperatorRun,
    add_pod,
    awq_md,
    cpu_node,
    gguf_md,
    gpu_node,
    h100_node,
    llama405_md,
    mark_rollout,
)
from shimlora import LoraShim

from turnout.config import OperatorConfig
from turnout.controller import Options
from turnout.controller.rbac import RULES, cluster_role, main
from turnout.freeport import free_port
from turnout.kube.rbac import covers


def _verb(request) -> str:
    method = str(request.method.value).upper()
    if method == "GET":
        if request.params.get("watch") == "true":
            return "watch"
        return "get" if request.name else "list"
    return {"POST": "create", "PATCH": "patch", "PUT": "update",
            "DELETE": "delete" if request.name else "deletecollection"}[method]


def _api_use(requests) -> set[tuple[str, str, str, str | None]]:
    """(api group, resource[/subresource], verb, object name) of every resource request; discovery URLs
    excluded."""
    used = set()
    for r in requests:
        if r.resource is None or not r.resource.plural:
            continue  # /api, /apis, /apis/GROUP/VERSION: discovery, granted to every authenticated user
        resource = r.resource.plural + (f"/{r.subresource}" if r.subresource else "")
        used.add((r.resource.group or "", resource, _verb(r), r.name or None))
    return used


async def test_recorded_api_use_equals_the_declared_rbac(fake, operator_run):
    await fake.put_object(NODES, cpu_node())
    gateway = await MetricsServer().start()  # the autoscaler's load source
    gateway.gateway(NS, "auto", in_flight=8)
    operator_run.options = Options(all_namespaces=True, metrics_port=0, health_port=0, inference_pool=True,
                                   gateway_metrics_urls=[gateway.url], autoscale_interval=0.2)
    port = free_port()
    operator_run.config = OperatorConfig(port=port)
    shim = LoraShim()  # LoRA adapters: loaded through a pod's shim, recorded on the pod (patch)
    runner = web.AppRunner(shim.app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await operator_run.start()
    # An API key: the Secret it names read, its digest applied for the gateway.
    await fake.put_object(("", "v1", "secrets"), {"metadata": {"name": "user-key", "namespace": NS},
                                                  "data": {"api-key": "c2VjcmV0"}})
    keyed = gguf_md("keyed")
    keyed["spec"]["apiKeySecretRef"] = {"name": "user-key"}
    await fake.put_object(MDS, keyed)
    await fake.wait_for(lambda: fake.get(("", "v1", "secrets"), NS, "turnout-gateway-keys"), what="keys published")
    # Autoscaling: the pods' EndpointSlices listed, replicas written through the scale subresource.
    auto = gguf_md("auto")
    auto["spec"]["autoscaling"] = {"maxReplicas": 2, "targetInFlightPerReplica": 4}
    await fake.put_object(MDS, auto)
    await fake.wait_for(lambda: fake.get(MDS, NS, "auto")["spec"]["replicas"] == 2, what="autoscaled")
    await gateway.stop()
    await fake.put_object(MDS, awq_md())  # rejected first (no GPU): status + a Warning Event
    await fake.wait_for(lambda: (fake.get(MDS, NS, "qwen-awq").get("status") or {}).get("phase") == "Failed")
    await fake.put_object(NODES, gpu_node())  # resolved: claim, Deployment, Service applied
    await fake.wait_for(lambda: fake.get(CLAIMS, NS, "qwen-awq-cache") and fake.get(DEPLOYMENTS, NS, "qwen-awq"))
    md = await fake.put_object(MDS, gguf_md())
    await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "qwen-gguf"))
    await mark_rollout(fake, "qwen-gguf", ready=1)
    # Pruning: the cache dropped from the spec, and owned children under names the plan does not render.
    await fake.modify(MDS, (NS, "qwen-awq"), lambda o: {**o, "spec": {k: v for k, v in o["spec"].items()
                                                                      if k != "cache"}})
    await fake.wait_for(lambda: fake.get(CLAIMS, NS, "qwen-awq-cache") is None)
    owned = {"labels": {"app.kubernetes.io/managed-by": "turnout", "turnout.dev/deployment": "qwen-gguf"},
             "ownerReferences": [{"apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment",
                                  "name": "qwen-gguf", "uid": md["metadata"]["uid"], "controller": True}]}
    await fake.put_object(SERVICES, {"metadata": {"name": "qwen-gguf-old", "namespace": NS, **owned},
                                     "spec": {"ports": [{"port": 80}]}})
    await fake.put_object(DEPLOYMENTS, {"metadata": {"name": "qwen-gguf-old", "namespace": NS, **owned},
                                        "spec": {"replicas": 0, "template": {}}})
    await fake.put_object(INFERENCE_POOLS, {"metadata": {"name": "qwen-gguf-old", "namespace": NS, **owned},
                                            "spec": {"selector": {"matchLabels": {"a": "b"}},
                                                     "targetPorts": [{"number": 8000}]}})
    await fake.wait_for(lambda: fake.get(SERVICES, NS, "qwen-gguf-old") is None
                        and fake.get(DEPLOYMENTS, NS, "qwen-gguf-old") is None
                        and fake.get(INFERENCE_POOLS, NS, "qwen-gguf-old") is None)
    await fake.wait_for(lambda: (fake.get(MDS, NS, "qwen-gguf").get("status") or {}).get("phase") == "Ready")
    await fake.wait_for(lambda: fake.get(MDS, NS, "qwen-gguf")["status"].get("observedGeneration") == 1)
    # A multi-node plan: a LeaderWorkerSet applied, then pruned when the model fits one node.
    for name in ("hgx-h100-1", "hgx-h100-2"):
        await fake.put_object(NODES, h100_node(name))
    await fake.put_object(MDS, llama405_md())
    await fake.wait_for(lambda: fake.get(LWS, NS, "llama-405b"))
    small = {"name": "qwen2.5-instruct", "size": 7, "format": "awq", "quantization": "Int4"}
    await fake.modify(MDS, (NS, "llama-405b"), lambda o: {**o, "spec": {**o["spec"], "model": small}})
    await fake.wait_for(lambda: fake.get(LWS, NS, "llama-405b") is None)
    lora = gguf_md("lora")
    lora["spec"].update(lora={}, adapters=[{"name": "sql", "uri": "hf://acme/sql-lora"}])
    await fake.put_object(MDS, lora)
    dep = await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "lora"))
    await add_pod(fake, dep, "lora-a", {"phase": "Running", "podIP": "127.0.0.1",
                                        "conditions": [{"type": "Ready", "status": "True"}]})
    await fake.wait_for(lambda: ((fake.get(MDS, NS, "lora").get("status") or {}).get("adapters") or [{}])[0]
                        .get("ready") == "1/1", what="the adapter loaded")
    await operator_run.stop()
    await runner.cleanup()

    used = _api_use(fake.requests)
    # A server-side apply that creates its object is authorized as create too (the API server refuses it
    # without): every kind the operator applies needs create, though no request shows that verb.
    applied = {(r.resource.group or "", r.resource.plural) for r in fake.requests if r.resource is not None
               and str(r.method.value).upper() == "PATCH" and not r.subresource
               and "apply-patch" in (r.headers.get("Content-Type") or "")}
    assert applied == {("apps", "deployments"), ("", "services"), ("", "persistentvolumeclaims"),
                       ("leaderworkerset.x-k8s.io", "leaderworkersets"),
                       ("inference.networking.k8s.io", "inferencepools"), ("", "secrets")}
    used |= {(group, plural, "create", None) for group, plural in applied}
    uncovered = sorted(u for u in used if covers(*u[:3], RULES, name=u[3]) is None)
    assert uncovered == [], f"requests the RBAC rules do not allow: {uncovered}"
    verbs_used = {u[:3] for u in used}
    unused = [(r.api_group, r.resource, v) for r in RULES if r.observed for v in r.verbs
              if (r.api_group, r.resource, v) not in verbs_used]
    assert unused == [], f"declared rules the operator never used: {unused}"


def test_cluster_role_merges_rules_and_says_why(capsys):
    role = cluster_role()
    assert role["kind"] == "ClusterRole"
    keys = [(r["apiGroups"][0], r["resources"][0], tuple(r.get("resourceNames", ()))) for r in role["rules"]]
    assert len(keys) == len(set(keys)) == len({(r.api_group, r.resource, r.resource_names) for r in RULES})
    secrets = [r for r in role["rules"] if r["resources"] == ["secrets"]]
    assert secrets == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "get"]},
                       {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["turnout-gateway-keys"],
                        "verbs": ["patch"]}], "patch on no Secret but the digests the operator publishes"
    deployments = next(r for r in role["rules"] if r["resources"] == ["deployments"])
    assert deployments["verbs"] == ["create", "delete", "list", "patch", "watch"]
    assert main([]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == role
    assert all(rule.why for rule in RULES)


async def test_metrics_and_liveness_endpoints(fake, free_port_factory):
    metrics_port, health_port = free_port_factory(), free_port_factory()
    run = OperatorRun(fake, options=Options(all_namespaces=True, metrics_port=metrics_port, health_port=health_port,
                                             bind_address="127.0.0.1"))
    await fake.put_object(NODES, cpu_node())
    await run.start()
    await fake.put_object(MDS, gguf_md())
    await fake.wait_for(lambda: (fake.get(MDS, NS, "qwen-gguf").get("status") or {}).get("phase") == "Deploying")
    async with aiohttp.ClientSession() as session:
        # The status write shows before the reconcile that wrote it has ended (its Events follow): poll.
        for _ in range(100):
            async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                assert response.status == 200
                text = await response.text()
            if 'turnout_operator_reconciles_total{result="applied"}' in text:
                break
            await asyncio.sleep(0.1)
        async with session.get(f"http://127.0.0.1:{health_port}/healthz") as response:
            assert response.status == 200
    assert 'turnout_operator_reconciles_total{result="applied"}' in text
    assert "turnout_operator_reconcile_duration_seconds_count" in text
    assert 'turnout_operator_deployments{accelerator="cpu",engine="llama.cpp",phase="Deploying"} 1.0' in text
    labels = 'deployment="qwen-gguf",model="qwen-small",namespace="models"'
    assert f"turnout_operator_replicas_desired{{{labels}}} 1.0" in text
    assert f"turnout_operator_replicas_ready{{{labels}}} 0.0" in text
    await mark_rollout(fake, "qwen-gguf", ready=1)  # the Deployment's pod ready: the status and the gauge follow
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                text = await response.text()
            if f"turnout_operator_replicas_ready{{{labels}}} 1.0" in text:
                break
            await asyncio.sleep(0.1)
    assert f"turnout_operator_replicas_ready{{{labels}}} 1.0" in text
    assert "turnout_operator_api_errors_total" in text or "turnout_operator_api_errors" in text
    await run.stop()


async def test_namespaced_mode_watches_only_its_namespaces_and_nodes_cluster_wide(fake):
    await fake.put_object(("", "v1", "namespaces"), {"metadata": {"name": "other"}})
    await fake.put_object(NODES, cpu_node())
    run = OperatorRun(fake, options=Options(namespaces=[NS], metrics_port=0, health_port=0))
    await run.start()
    await fake.put_object(MDS, {**gguf_md("elsewhere"), "metadata": {"name": "elsewhere", "namespace": "other"}})
    await fake.put_object(MDS, gguf_md())
    await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "qwen-gguf"))
    await run.stop()
    assert fake.get(DEPLOYMENTS, "other", "elsewhere") is None
    namespaced = {r.resource.plural: r.namespace for r in fake.requests
                  if r.resource is not None and r.params.get("watch") == "true"}
    assert namespaced.pop("nodes") is None
    assert set(namespaced.values()) == {NS}
    scopes = {(r.resource, r.cluster_scoped) for r in RULES}
    assert ("nodes", True) in scopes and all(not c for res, c in scopes if res != "nodes")


def test_namespaced_install_splits_role_and_cluster_role(capsys):
    from turnout.controller.rbac import namespaced_roles

    cluster, role = namespaced_roles("mp", "models")
    assert (cluster["kind"], role["kind"], role["metadata"]["namespace"]) == ("ClusterRole", "Role", "models")
    assert [r["resources"] for r in cluster["rules"]] == [["nodes"]]
    assert "nodes" not in {r["resources"][0] for r in role["rules"]}
    assert main(["--namespace", "models", "--name", "mp"]) == 0
    assert list(yaml.safe_load_all(capsys.readouterr().out)) == [cluster, role]
