"""End to end: host agents on this machine join the cluster in KUBECONFIG and serve ModelDeployments natively.

Two agents run here as subprocesses (``python -m modelplane.agent``): one
advertises ``--accelerator cpu``, one ``--accelerator metal``. The operator
(the ``operator`` fixture of e2e/conftest.py) places a Metal plan on the Metal
agent's node with its ordinary node selector and toleration (no special
case), and a CPU llama.cpp deployment pinned to the CPU agent becomes Ready,
answers through the pod IP from its EndpointSlice, recovers when its engine
process is killed, and disappears (processes included) when deleted.

Both agents share this host's address, so only one model server (port 8000,
the operator's default) runs here at a time: the tests run one deployment
after the other. Skipped, like all of e2e/, without a reachable cluster. On
failure the agents' logs are printed after the conftest's objects and events.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubectl import condition, get_json, kubectl, poll

from modelplane.hardware import ACCELERATOR_LABEL, AGENT_TAINT, METAL_RESOURCE

ROOT = Path(__file__).resolve().parent.parent
TOLERATE_AGENT = {"key": AGENT_TAINT, "operator": "Exists", "effect": "NoSchedule"}


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    return False


@pytest.fixture(scope="module")
def tiny_gguf() -> Path:
    from modelplane.tinymodel import build_tiny_model

    return build_tiny_model().gguf_path


@pytest.fixture(scope="module")
def agents(operator: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict]]:
    """A CPU agent and a Metal agent on this machine, Ready in the cluster; removed afterwards."""
    root = tmp_path_factory.mktemp("agents")
    suffix = uuid.uuid4().hex[:5]
    out: dict[str, dict[str, Any]] = {}
    for accel in ("cpu", "metal"):
        name = f"e2e-agent-{accel}-{suffix}"
        log_path = root / f"{name}.log"
        cmd = [sys.executable, "-m", "modelplane.agent", "--node-name", name, "--accelerator", accel,
               "--state-dir", str(root / name), "--stop-pods-on-exit", "-v"]
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        out[accel] = {"name": name, "process": proc, "log": log_path}
    try:
        for agent in out.values():
            def ready(agent: dict[str, Any] = agent) -> dict | None:
                if agent["process"].poll() is not None:
                    raise AssertionError(f"agent exited {agent['process'].returncode}:\n{agent['log'].read_text()}")
                node = get_json("node", agent["name"])
                return node if condition(node, "Ready").get("status") == "True" else None

            agent["node"] = poll(ready, timeout=60, what=f"node {agent['name']} Ready")
        yield out
    finally:
        for agent in out.values():
            agent["process"].send_signal(signal.SIGTERM)
        for agent in out.values():
            try:
                agent["process"].wait(timeout=90)
            except subprocess.TimeoutExpired:
                agent["process"].kill()
            if not os.environ.get("MODELPLANE_E2E_KEEP"):
                kubectl("delete", "node", agent["name"], "--ignore-not-found", check=False)
                kubectl("delete", "lease", agent["name"], "-n", "kube-node-lease", "--ignore-not-found", check=False)


@pytest.fixture(autouse=True)
def agent_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before and "agents" in request.fixturenames:
        for agent in request.getfixturevalue("agents").values():
            print(f"\n===== agent {agent['name']} log =====\n{Path(agent['log']).read_text()[-20000:]}")


def _md(name: str, gguf: Path, accelerator: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelplane.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
        "spec": {"model": {"uri": f"file://{gguf}", "type": "llm", "size": 0.01, "format": "gguf"},
                 "servedModelName": "tiny-chat", "accelerator": {"type": accelerator}, **spec},
    }


def _apply(obj: dict[str, Any], namespace: str) -> None:
    kubectl("apply", "--server-side", "-n", namespace, "-f", "-", stdin=json.dumps(obj))


def _pods(namespace: str, name: str) -> list[dict[str, Any]]:
    listing = json.loads(kubectl("get", "pods", "-n", namespace, "-l", f"modelplane.io/deployment={name}",
                                 "-o", "json"))
    return listing["items"]


def _delete_and_wait(namespace: str, name: str) -> None:
    kubectl("delete", "modeldeployment", name, "-n", namespace, "--ignore-not-found", "--wait=false")
    poll(lambda: not _pods(namespace, name), timeout=120, what=f"the pods of {name} removed")


def test_agent_nodes_join_with_labels_capacity_taint_and_lease(agents: dict[str, dict]) -> None:
    for accel, agent in agents.items():
        node = agent["node"]
        assert node["metadata"]["labels"][ACCELERATOR_LABEL] == accel
        assert {"key": AGENT_TAINT, "value": "true", "effect": "NoSchedule"} in node["spec"]["taints"]
        assert (METAL_RESOURCE in node["status"]["allocatable"]) == (accel == "metal")
        lease = get_json("lease", agent["name"], "-n", "kube-node-lease")
        assert lease and lease["spec"]["holderIdentity"] == agent["name"]


def test_metal_plan_is_scheduled_onto_the_metal_agent(agents: dict[str, dict], namespace: str,
                                                      tiny_gguf: Path) -> None:
    metal = agents["metal"]
    _apply(_md("e2e-metal", tiny_gguf, "metal"), namespace)
    md = poll(lambda: (m := get_json("modeldeployment", "e2e-metal", "-n", namespace)) and
              (m.get("status") or {}).get("accelerator") and m, timeout=120, what="e2e-metal resolved")
    assert md["status"]["accelerator"] == "metal", md["status"]
    # The scheduler binds the pod to the Metal agent (node selector + toleration from the plan), and that
    # agent runs it: it reports the pod's hostIP and container state.
    pod = poll(lambda: next((p for p in _pods(namespace, "e2e-metal") if (p.get("status") or {}).get("hostIP")),
                            None), timeout=120, what="the Metal pod bound and reported by the agent")
    assert pod["spec"]["nodeName"] == metal["name"]
    internal = next(a["address"] for a in metal["node"]["status"]["addresses"] if a["type"] == "InternalIP")
    assert pod["status"]["hostIP"] == internal
    assert pod["spec"]["nodeSelector"][ACCELERATOR_LABEL] == "metal"
    _delete_and_wait(namespace, "e2e-metal")


def test_cpu_agent_serves_recovers_and_cleans_up(agents: dict[str, dict], namespace: str, tiny_gguf: Path) -> None:
    from openai import OpenAI

    cpu = agents["cpu"]
    _apply(_md("e2e-agent-cpu", tiny_gguf, "cpu", tolerations=[TOLERATE_AGENT],
               nodeSelector={"kubernetes.io/hostname": cpu["name"]}), namespace)
    poll(lambda: (get_json("modeldeployment", "e2e-agent-cpu", "-n", namespace) or {}).get("status", {})
         .get("phase") == "Ready", timeout=300, interval=2, what="e2e-agent-cpu Ready")

    def endpoint() -> tuple[str, int] | None:
        slices = json.loads(kubectl("get", "endpointslices", "-n", namespace, "-l",
                                    "kubernetes.io/service-name=e2e-agent-cpu", "-o", "json"))["items"]
        for item in slices:
            for ep in item.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready"):
                    return ep["addresses"][0], int(item["ports"][0]["port"])
        return None

    address, port = poll(endpoint, timeout=120, what="a ready endpoint in the EndpointSlice")
    client = OpenAI(base_url=f"http://{address}:{port}/v1", api_key="none")
    reply = client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=4, temperature=0)
    assert reply.model == "tiny-chat"

    # Kill the engine's process group: the agent restarts it and the deployment returns to Ready.
    pod = _pods(namespace, "e2e-agent-cpu")[0]
    assert pod["spec"]["nodeName"] == cpu["name"]
    pgid = int(pod["status"]["containerStatuses"][0]["containerID"].rsplit("-", 1)[1])
    os.killpg(pgid, signal.SIGKILL)
    poll(lambda: (p := _pods(namespace, "e2e-agent-cpu")) and
         p[0]["status"]["containerStatuses"][0]["restartCount"] >= 1 and
         condition(p[0], "Ready").get("status") == "True", timeout=300, interval=2, what="restarted and Ready")
    poll(lambda: (get_json("modeldeployment", "e2e-agent-cpu", "-n", namespace) or {}).get("status", {})
         .get("phase") == "Ready", timeout=120, interval=2, what="e2e-agent-cpu Ready again")
    new_pgid = int(_pods(namespace, "e2e-agent-cpu")[0]["status"]["containerStatuses"][0]["containerID"]
                   .rsplit("-", 1)[1])

    _delete_and_wait(namespace, "e2e-agent-cpu")
    assert _pid_gone(new_pgid), "the model server outlived its pod"
