"""Several agents on one host: each binds its pods to its own address, so replicas share a port.

Two agents run here on 127.0.0.2 and 127.0.0.3 (all of 127.0.0.0/8 is local on Linux) and each runs a
pod from the same template on the same containerPort at the same time. Ports conflict per (address, port):
a second pod on the same agent, or a foreign listener on the agent's address, still gives ``PortInUse``.
"""

from __future__ import annotations

import copy
import json
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from agentfake import AgentFake
from agentharness import (
    NODES,
    NS,
    PODS,
    STANDIN,
    AgentRun,
    container_status,
    delete_pod,
    pid_gone,
    pod,
    running_and_ready,
    status,
)

from turnout.agent.ports import is_local

ADDRESSES = {"node-a": "127.0.0.2", "node-b": "127.0.0.3"}
pytestmark = pytest.mark.skipif(
    not all(is_local(a) for a in ADDRESSES.values()),
    reason="127.0.0.2 and 127.0.0.3 are not local addresses here (on macOS: sudo ifconfig lo0 alias 127.0.0.2 up)")


@pytest.fixture
def shared_port() -> int:
    """A port nothing listens on, on any address (the agents' replicas all take this one)."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


def get_json(address: str, port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{address}:{port}{path}", timeout=10) as resp:
        return json.loads(resp.read())


def refused(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(5)
        return sock.connect_ex((address, port)) != 0


def standin_template(port: int) -> dict[str, Any]:
    """A Deployment's pod template whose server binds the pod IP through the downward API."""
    return {
        "metadata": {"labels": {"app": "web"}},
        "spec": {
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "server", "image": "example.test/standin:1",
                "command": [sys.executable, STANDIN, "--host", "$(POD_IP)", "--port", str(port)],
                "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1},
            }],
        },
    }


def pod_from(template: dict[str, Any], name: str, node: str) -> dict[str, Any]:
    """What the ReplicaSet controller and the scheduler make of the template: a named pod bound to ``node``."""
    made = copy.deepcopy(template)
    made["metadata"].update(name=name, namespace=NS)
    made["spec"]["nodeName"] = node
    return made


def waiting(fake: AgentFake, name: str) -> dict[str, Any]:
    return container_status(fake, name).get("state", {}).get("waiting") or {}


async def test_two_agents_run_replicas_on_the_same_port(fake: AgentFake, agents, shared_port: int) -> None:
    for node, address in ADDRESSES.items():
        await agents(node_name=node, address=address).start()
    template = standin_template(shared_port)
    for node in ADDRESSES:
        await fake.put_object(PODS, pod_from(template, f"web-{node}", node))
    await fake.wait_for(lambda: all(running_and_ready(fake, f"web-{n}") for n in ADDRESSES), what="both Ready")

    pids = set()
    for node, address in ADDRESSES.items():
        st = status(fake, f"web-{node}")
        assert st["podIP"] == st["hostIP"] == address
        assert get_json(address, shared_port, "/env")["POD_IP"] == address
        pids.add(get_json(address, shared_port, "/pids")["pid"])
    assert len(pids) == 2, "both addresses answered from one process"
    assert refused("127.0.0.1", shared_port), "a replica listens beyond its pod IP"

    # The same port on the same agent still conflicts; the pod starts once the holder is gone.
    await fake.put_object(PODS, pod_from(template, "web-node-a-2", "node-a"))
    await fake.wait_for(lambda: waiting(fake, "web-node-a-2").get("reason") == "PortInUse", what="PortInUse")
    message = waiting(fake, "web-node-a-2")["message"]
    assert f"{NS}/web-node-a" in message and f"{shared_port} on 127.0.0.2" in message
    assert status(fake, "web-node-a-2")["phase"] == "Pending"
    assert running_and_ready(fake, "web-node-b")
    await delete_pod(fake, "web-node-a")
    await fake.wait_for(lambda: running_and_ready(fake, "web-node-a-2"), what="the second pod Ready on node-a")


async def test_a_foreign_listener_on_the_agents_address_gives_port_in_use(fake: AgentFake, agents,
                                                                          shared_port: int) -> None:
    await agents(node_name="node-b", address=ADDRESSES["node-b"]).start()
    other = socket.socket()  # some program outside the cluster, on the agent's address
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    other.bind((ADDRESSES["node-b"], shared_port))
    other.listen()
    try:
        await fake.put_object(PODS, pod_from(standin_template(shared_port), "web", "node-b"))
        await fake.wait_for(lambda: waiting(fake, "web").get("reason") == "PortInUse", what="PortInUse")
        assert "another process" in waiting(fake, "web")["message"]
    finally:
        other.close()
    await fake.wait_for(lambda: running_and_ready(fake, "web"), what="Ready once the listener is gone")
    assert container_status(fake, "web")["restartCount"] == 0


async def test_agents_refuse_to_share_a_state_folder(fake: AgentFake, agents) -> None:
    first = await agents(node_name="node-a", address=ADDRESSES["node-a"]).start()
    second = AgentRun(fake, state_dir=Path(first.config.state_dir), node_name="node-b", address=ADDRESSES["node-b"])
    with pytest.raises(RuntimeError, match="--state-dir"):
        await second.start()
    assert fake.get(NODES, None, "node-b") is None  # refused before registering


@pytest.mark.slow
async def test_real_shims_of_one_deployment_on_two_agents(fake: AgentFake, agents, tiny_model,
                                                          shared_port: int) -> None:
    pytest.importorskip("xllamacpp", reason="the llama.cpp backend needs xllamacpp")
    from openai import AsyncOpenAI

    from turnout.agent import EnvMap
    from turnout.api.types import ModelDeployment, ModelDeploymentSpec
    from turnout.config import OperatorConfig
    from turnout.hardware import parse_nodes
    from turnout.render.manifests import render_deployment
    from turnout.resolver import Plan, resolve

    for node, address in ADDRESSES.items():  # default env map: turnout images -> this environment's shim
        await agents(node_name=node, address=address, accelerator="cpu", env_map=EnvMap(),
                     backoff_initial=1.0).start()
    md = {
        "apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "tiny-chat", "namespace": NS},
        "spec": {"model": {"uri": f"file://{tiny_model.gguf_path}", "type": "llm", "size": 0.01, "format": "gguf"},
                 "servedModelName": "tiny-chat", "accelerator": {"type": "cpu"}, "replicas": 2,
                 "tolerations": [{"key": "turnout.dev/agent", "operator": "Exists", "effect": "NoSchedule"}]},
    }
    config = OperatorConfig(port=shared_port)
    nodes = parse_nodes([fake.get(NODES, None, n) for n in ADDRESSES])
    plan = resolve(ModelDeploymentSpec.model_validate(md["spec"]), nodes, config)
    assert isinstance(plan, Plan) and plan.engine == "llama.cpp", plan
    template = render_deployment(plan, ModelDeployment.model_validate(md), config)["spec"]["template"]
    command = template["spec"]["containers"][0]["command"]
    assert command[command.index("--host") + 1] == "0.0.0.0"  # as rendered for a pod network
    for node in ADDRESSES:
        await fake.put_object(PODS, pod_from(template, f"tiny-chat-{node}", node))

    def settled(name: str) -> bool:
        return running_and_ready(fake, name) or bool(container_status(fake, name).get("restartCount"))

    await fake.wait_for(lambda: all(settled(f"tiny-chat-{n}") for n in ADDRESSES), timeout=180,
                        what="both shims Ready (startup probe, then readiness on /health at the pod IP)")
    shims = []
    for node, address in ADDRESSES.items():
        cs = container_status(fake, f"tiny-chat-{node}")
        assert cs.get("restartCount") == 0, cs.get("lastState")
        assert pod(fake, f"tiny-chat-{node}")["status"]["podIP"] == address
        client = AsyncOpenAI(base_url=f"http://{address}:{shared_port}/v1", api_key="none")
        reply = await client.chat.completions.create(model="tiny-chat", max_tokens=4, temperature=0,
                                                     messages=[{"role": "user", "content": "hi"}])
        assert reply.model == "tiny-chat" and reply.choices[0].message.content is not None
        await client.close()
        shims.append(int(cs["containerID"].rsplit("-", 1)[1]))
    assert refused("127.0.0.1", shared_port), "the shim listens beyond its pod IP (--host not rewritten)"

    for node in ADDRESSES:
        await delete_pod(fake, f"tiny-chat-{node}")
    await fake.wait_for(lambda: all(pod(fake, f"tiny-chat-{n}") is None for n in ADDRESSES), timeout=60,
                        what="both pods removed")
    assert all(pid_gone(pid) for pid in shims)

