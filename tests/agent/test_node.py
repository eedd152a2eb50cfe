"""Node registration, capacity, taint, heartbeats, and what the resolver makes of the node."""

from __future__ import annotations

import json

from agentfake import AgentFake
from agentharness import ADDRESS, LEASES, NODE, NODES, condition, mac_probes

from turnout.agent.node import AGENT_LABEL
from turnout.hardware import ACCELERATOR_LABEL, AGENT_TAINT, MEMORY_LABEL, METAL_RESOURCE, node_info


async def test_metal_node_registration_and_lease_heartbeats(fake: AgentFake, agents) -> None:
    run = await agents(accelerator="auto", probes=mac_probes()).start()
    node = fake.get(NODES, None, NODE)
    assert node is not None
    labels = node["metadata"]["labels"]
    assert labels[ACCELERATOR_LABEL] == "metal"
    assert labels[MEMORY_LABEL] == "65536Mi"
    assert labels["kubernetes.io/os"] == "darwin" and labels["kubernetes.io/arch"] == "arm64"
    assert labels["type"] == "virtual-kubelet"
    assert node["spec"]["taints"] == [{"key": AGENT_TAINT, "value": "true", "effect": "NoSchedule"}]
    status = node["status"]
    assert status["capacity"] == status["allocatable"] == {
        "cpu": "10", "memory": "65536Mi", "pods": "16", METAL_RESOURCE: "1"}
    assert condition(node, "Ready")["status"] == "True"
    assert {"type": "InternalIP", "address": ADDRESS} in status["addresses"]

    # The resolver sees a Metal host with its unified memory (the operator places Metal plans here).
    info = node_info(node)
    assert info is not None and info.accelerator == "metal" and info.device_memory_mib == 65536

    lease = fake.get(LEASES, "kube-node-lease", NODE)
    assert lease["spec"]["holderIdentity"] == NODE and lease["spec"]["leaseDurationSeconds"] == 40
    assert lease["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
    first = lease["spec"]["renewTime"]
    await fake.wait_for(lambda: fake.get(LEASES, "kube-node-lease", NODE)["spec"]["renewTime"] != first,
                        what="a lease renewal")
    heartbeat = condition(node, "Ready")["lastHeartbeatTime"]
    transition = condition(node, "Ready")["lastTransitionTime"]
    await fake.wait_for(lambda: condition(fake.get(NODES, None, NODE), "Ready")["lastHeartbeatTime"] != heartbeat,
                        what="a node status heartbeat")
    # The Ready condition did not change, so its transition time stays.
    assert condition(fake.get(NODES, None, NODE), "Ready")["lastTransitionTime"] == transition

    await run.stop(stop_pods=True)
    stopped = fake.get(NODES, None, NODE)
    assert condition(stopped, "Ready")["status"] == "False"
    assert "stopped" in condition(stopped, "Ready")["message"]


async def test_cpu_node_and_reregistration_keeps_foreign_labels_and_taints(fake: AgentFake, agents) -> None:
    run = await agents(accelerator="cpu", probes=mac_probes()).start()
    node = fake.get(NODES, None, NODE)
    assert node["metadata"]["labels"][ACCELERATOR_LABEL] == "cpu"
    assert MEMORY_LABEL not in node["metadata"]["labels"]
    assert METAL_RESOURCE not in node["status"]["capacity"]
    assert node_info(node).accelerator == "cpu"
    await run.stop(stop_pods=True)

    def admin(obj):
        obj["metadata"]["labels"]["team"] = "ml"
        obj["spec"]["taints"].append({"key": "maintenance", "effect": "NoSchedule"})
        return obj

    await fake.modify(NODES, (None, NODE), admin)
    metal = await agents(accelerator="metal", probes=mac_probes()).start()
    node = fake.get(NODES, None, NODE)
    assert node["metadata"]["labels"]["team"] == "ml"
    assert node["metadata"]["labels"][ACCELERATOR_LABEL] == "metal"
    assert node["status"]["allocatable"][METAL_RESOURCE] == "1"
    assert {t["key"] for t in node["spec"]["taints"]} == {AGENT_TAINT, "maintenance"}
    assert condition(node, "Ready")["status"] == "True"
    await metal.stop(stop_pods=True)
    # NodeRestriction forbids a node to change its taints: they are sent only when the Node is created.
    node_patches = [r for r in fake.requests if r.resource is not None and r.resource.plural == "nodes"
                    and str(r.method.value).upper() == "PATCH" and r.subresource is None]
    assert node_patches and all("spec" not in json.loads(r.text) for r in node_patches)

    # Back to CPU: what only Metal advertised is gone again, the admin's additions stay.
    await agents(accelerator="cpu", probes=mac_probes()).start()
    node = fake.get(NODES, None, NODE)
    assert MEMORY_LABEL not in node["metadata"]["labels"] and node["metadata"]["labels"]["team"] == "ml"
    assert METAL_RESOURCE not in node["status"]["allocatable"] and METAL_RESOURCE not in node["status"]["capacity"]
    assert node_info(node).accelerator == "cpu"


async def test_a_taint_removed_by_an_admin_is_reported_not_put_back(fake: AgentFake, agents, caplog) -> None:
    run = await agents(accelerator="cpu", probes=mac_probes()).start()
    await run.stop(stop_pods=True)

    def untaint(obj):
        obj["spec"]["taints"] = []
        return obj

    await fake.modify(NODES, (None, NODE), untaint)
    await agents(accelerator="cpu", probes=mac_probes()).start()
    assert fake.get(NODES, None, NODE)["spec"]["taints"] == []
    assert f"kubectl taint nodes {NODE} {AGENT_TAINT}=true:NoSchedule" in caplog.text
    assert fake.get(NODES, None, NODE)["metadata"]["labels"][AGENT_LABEL] == "true"


async def test_a_deleted_node_is_registered_again(fake: AgentFake, agents) -> None:
    await agents(accelerator="cpu", probes=mac_probes()).start()
    uid = fake.get(NODES, None, NODE)["metadata"]["uid"]
    await fake.remove(NODES, (None, NODE))
    await fake.wait_for(lambda: (fake.get(NODES, None, NODE) or {}).get("metadata", {}).get("uid") not in (None, uid),
                        what="the node registered again")
    assert condition(fake.get(NODES, None, NODE), "Ready")["status"] == "True"
