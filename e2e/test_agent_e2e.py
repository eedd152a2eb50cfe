"""End to end: host agents, each in a network namespace of this machine, join the cluster and serve natively.

Agents run as subprocesses (``python -m turnout.agent``), each inside a network namespace that
:mod:`netns` makes (``turnout-e2e-N``: ``10.250.N.1/24`` on the host end of a veth pair,
``10.250.N.2/24`` inside), so each is a host with an address of its own. An agent reaches the API
server through a TCP forwarder on its namespace's host end (``10.250.N.1:<port>`` → the API server),
with a kubeconfig naming ``https://10.250.N.1:<port>`` and ``tls-server-name: localhost``: the server's
certificate has no SAN for that address, so every agent also proves ``tls-server-name`` on a real
server. The agents' pods listen on their namespace's address, which is the pod IP their
EndpointSlices carry; test traffic goes only there (and to 127.0.0.0/8). Needs root (``ip netns``);
namespaces and links are removed at the end, and a crashed run's at the start.

Every agent joins as kubelets do: ``turnout agent join-token`` (with the admin kubeconfig of
KUBECONFIG) makes its bootstrap token and a bootstrap kubeconfig naming the forwarder; the agent
trades the token for a node certificate through a CertificateSigningRequest that the real
kube-controller-manager approves (the standard bootstrapper ClusterRoleBindings, made here as the
chart makes them) and signs; from then on it is ``system:node:<name>``, and the Node authorizer and
NodeRestriction decide what it may do: it reads a Secret its pod references, and is refused (403) a
Secret no pod of its references, another Node, its own taints, and a pod on another node.

One agent advertises ``--accelerator cpu``, one ``--accelerator metal``. The operator (the
``operator`` fixture of e2e/conftest.py) places a Metal plan on the Metal agent's node with its
ordinary node selector and toleration (no special case), and a CPU llama.cpp deployment pinned to
the CPU agent becomes Ready, answers through the pod IP from its EndpointSlice, recovers when its
engine process is killed, and disappears (processes included) when deleted. Two more CPU agents
(``--address`` given) take the two replicas of one deployment, each answering at its own pod IP on
the same port. The agents come from e2e/hostagents.py (the conftest's ``hosts``); on failure their
logs are printed after the conftest's objects and events.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hostagents import (
    TOLERATE_AGENT,
    Hosts,
    delete_and_wait,
    model_pods,
    node_csrs,
    ready_endpoints,
    start_agent,
    stop_agents,
    wait_ready,
)
from kubectl import KubectlError, cluster_settled, condition, get_json, kubectl, poll
from results import record_results

from turnout.agent.node import AGENT_LABEL as NODE_AGENT_LABEL
from turnout.hardware import ACCELERATOR_LABEL, AGENT_TAINT, METAL_RESOURCE
from turnout.images import REGISTRY

PAIR_LABEL = "turnout.dev/e2e-pair"


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    return False


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model: Any) -> Path:
    return Path(tiny_model.gguf_path)


def _as_node(agent: dict[str, Any], *args: str) -> str:
    """kubectl with the agent's node kubeconfig (its certificate): stdout, or KubectlError."""
    return kubectl("--kubeconfig", str(agent["kubeconfig"]), *args)


def _refused(agent: dict[str, Any], *args: str) -> str:
    """Assert the node identity is refused ``kubectl args`` with 403 Forbidden; the server's message."""
    with pytest.raises(KubectlError) as refused:
        _as_node(agent, *args)
    assert "Forbidden" in refused.value.stderr or "forbidden" in refused.value.stderr, refused.value.stderr
    return refused.value.stderr


@pytest.fixture(scope="module")
def agents(operator: object, hosts: Hosts) -> Iterator[dict[str, dict]]:
    """A CPU agent and a Metal agent, each in its own network namespace, Ready in the cluster; removed after."""
    suffix = uuid.uuid4().hex[:5]
    out: dict[str, dict[str, Any]] = {}
    try:
        for accel in ("cpu", "metal"):
            out[accel] = start_agent(hosts, f"e2e-agent-{accel}-{suffix}", "--accelerator", accel)
        wait_ready(list(out.values()))
        yield out
    finally:
        stop_agents(list(out.values()))


@pytest.fixture(scope="module")
def agent_pair(operator: object, hosts: Hosts) -> Iterator[dict[str, Any]]:
    """Two CPU agents, each in its own namespace with ``--address``, sharing a ``turnout.dev/e2e-pair`` label."""
    suffix = uuid.uuid4().hex[:5]
    out: list[dict[str, Any]] = []
    try:
        for i in range(2):
            agent = start_agent(hosts, f"e2e-pair-{i}-{suffix}", "--accelerator", "cpu",
                                "--label", f"{PAIR_LABEL}={suffix}", address=True)
            out.append(agent)
        wait_ready(out)
        yield {"agents": out, "label": suffix}
    finally:
        stop_agents(out)


def _openai(address: str, port: int) -> Any:
    """A client for the pod at ``address`` (in an agent's namespace), never through a proxy from the environment."""
    import httpx
    from openai import OpenAI

    return OpenAI(base_url=f"http://{address}:{port}/v1", api_key="none", http_client=httpx.Client(trust_env=False))


def _md(name: str, gguf: Path, accelerator: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
        "spec": {"model": {"uri": f"file://{gguf}", "type": "llm", "size": 0.01, "format": "gguf"},
                 "servedModelName": "tiny-chat", "accelerator": {"type": accelerator}, **spec},
    }


def _apply(obj: dict[str, Any], namespace: str) -> None:
    kubectl("apply", "--server-side", "-n", namespace, "-f", "-", stdin=json.dumps(obj))


def test_agent_nodes_join_with_labels_capacity_taint_and_lease(agents: dict[str, dict], hosts: Hosts) -> None:
    for accel, agent in agents.items():
        node = agent["node"]
        # The agent found its address itself: the source address of its route to the API server (the
        # forwarder on the namespace's host end), reached with tls-server-name.
        internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
        assert internal == [agent["netns"].address]
        assert node["metadata"]["labels"][ACCELERATOR_LABEL] == accel
        assert {"key": AGENT_TAINT, "value": "true", "effect": "NoSchedule"} in node["spec"]["taints"]
        assert (METAL_RESOURCE in node["status"]["allocatable"]) == (accel == "metal")
        lease = get_json("lease", agent["name"], "-n", "kube-node-lease")
        assert lease and lease["spec"]["holderIdentity"] == agent["name"]
        assert node["metadata"]["labels"][NODE_AGENT_LABEL] == "true"


def test_agents_join_by_tls_bootstrapping_as_their_nodes(agents: dict[str, dict]) -> None:
    for agent in agents.values():
        # The bootstrap token's CSR, approved by kube-controller-manager's csrapproving and signed by csrsigning.
        token_id = yaml.safe_load(agent["bootstrap"].read_text())["users"][0]["user"]["token"].split(".")[0]
        (csr,) = [c for c in node_csrs(agent["name"]) if c["spec"]["username"] == f"system:bootstrap:{token_id}"]
        assert "system:bootstrappers:turnout" in csr["spec"]["groups"]
        assert csr["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
        assert condition(csr, "Approved").get("status") == "True" and csr["status"].get("certificate")
        # From then on the agent is the node itself: its kubeconfig holds the signed certificate, by path.
        who = json.loads(_as_node(agent, "auth", "whoami", "-o", "json"))["status"]["userInfo"]
        assert who["username"] == f"system:node:{agent['name']}" and "system:nodes" in who["groups"]
        pki = Path(agent["kubeconfig"]).parent / "pki"
        assert oct((pki / "turnout-agent-client-current.pem").stat().st_mode & 0o777) == "0o600"
        secret = get_json("secret", "-n", "kube-system", f"bootstrap-token-{token_id}")
        assert secret and secret["metadata"]["labels"]["turnout.dev/host"] == agent["name"]


def test_a_renewal_is_approved_for_the_node_itself_and_the_running_agent_switches_to_it(
        agents: dict[str, dict]) -> None:
    """Renewal as the agent does it at 70-90 % of the lifetime, started now (the real signer's minimum is 10 min)."""
    import asyncio

    from cryptography import x509

    from turnout.agent.bootstrap import NodeIdentity
    from turnout.kube import KubeClient, load_credentials

    cpu = agents["cpu"]
    state = Path(cpu["kubeconfig"]).parent
    current = state / "pki" / "turnout-agent-client-current.pem"
    before = x509.load_pem_x509_certificate(current.read_bytes()).serial_number
    identity = NodeIdentity.of(cpu["name"], str(state), str(cpu["bootstrap"]), str(cpu["kubeconfig"]),
                               csr_timeout=60)

    async def renew() -> None:
        async with KubeClient(await load_credentials(str(cpu["kubeconfig"]))) as kube:
            await identity.renew(kube)

    asyncio.run(renew())
    after = x509.load_pem_x509_certificate(current.read_bytes()).serial_number
    assert after != before
    renewal = [c for c in node_csrs(cpu["name"]) if c["spec"]["username"] == f"system:node:{cpu['name']}"]
    approved = condition(renewal[0], "Approved") if renewal else {}
    # csrapproving's selfnodeclient path: "Auto approving self kubelet client certificate after SubjectAccessReview."
    assert approved.get("status") == "True" and "self" in approved.get("message", ""), renewal
    poll(lambda: "client certificate changed: reconnecting" in cpu["log"].read_text(), timeout=60,
         what="the running agent reconnecting with the renewed certificate")
    renewed = get_json("lease", cpu["name"], "-n", "kube-node-lease")["spec"]["renewTime"]
    poll(lambda: get_json("lease", cpu["name"], "-n", "kube-node-lease")["spec"]["renewTime"] != renewed,
         timeout=60, what="a heartbeat with the renewed certificate")


def _sleeper(name: str, node: str, **container: Any) -> dict[str, Any]:
    """A pod bound to ``node`` whose container sleeps (the agent runs it with its own interpreter)."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 2, "containers": [{
                "name": "sleep", "image": f"{REGISTRY}/e2e-sleeper:1",
                "command": [sys.executable, "-c", "import time; time.sleep(600)"], **container}]}}


def test_the_node_identity_gets_only_what_the_node_authorizer_grants(agents: dict[str, dict],
                                                                     namespace: str) -> None:
    cpu, metal = agents["cpu"], agents["metal"]
    for secret in ("e2e-referenced", "e2e-unrelated"):
        kubectl("create", "secret", "generic", secret, "-n", namespace, "--from-literal=key=value")
    _apply(_sleeper("e2e-reader", cpu["name"], env=[
        {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "e2e-referenced", "key": "key"}}}]), namespace)
    _apply(_sleeper("e2e-elsewhere", metal["name"]), namespace)
    try:
        poll(lambda: condition(get_json("pod", "e2e-reader", "-n", namespace), "Ready").get("status") == "True",
             timeout=120, what="e2e-reader running on the CPU agent (so it could read its secret)")
        # Its pod references it: the node may read it.
        got = json.loads(_as_node(cpu, "get", "secret", "e2e-referenced", "-n", namespace, "-o", "json"))
        assert base64.b64decode(got["data"]["key"]) == b"value"
        # No pod of the node references this one.
        assert "no relationship found" in _refused(cpu, "get", "secret", "e2e-unrelated", "-n", namespace)
        # Another node's Node object, and a pod bound to another node.
        _refused(cpu, "label", "node", metal["name"], "e2e.turnout.dev/touched=yes")
        _refused(cpu, "delete", "pod", "e2e-elsewhere", "-n", namespace, "--wait=false")
        assert get_json("pod", "e2e-elsewhere", "-n", namespace) is not None
        # NodeRestriction on its own Node: no taint changes, no kubernetes.io/role label (why the agent sends neither).
        assert "taints" in _refused(cpu, "taint", "node", cpu["name"], "e2e.turnout.dev/x=y:NoSchedule")
        _refused(cpu, "label", "node", cpu["name"], "kubernetes.io/role=agent")
        _as_node(cpu, "label", "node", cpu["name"], "e2e.turnout.dev/touched=yes")  # its own, unrestricted label
    finally:
        kubectl("delete", "pod", "e2e-reader", "e2e-elsewhere", "-n", namespace, "--ignore-not-found",
                "--wait=false", check=False)
        kubectl("delete", "secret", "e2e-referenced", "e2e-unrelated", "-n", namespace, "--ignore-not-found",
                check=False)
    poll(lambda: get_json("pod", "e2e-reader", "-n", namespace) is None and
         get_json("pod", "e2e-elsewhere", "-n", namespace) is None, timeout=120, what="the sleepers removed")


def test_metal_plan_is_scheduled_onto_the_metal_agent(agents: dict[str, dict], namespace: str,
                                                      tiny_gguf: Path) -> None:
    metal = agents["metal"]
    _apply(_md("e2e-metal", tiny_gguf, "metal"), namespace)
    md = poll(lambda: (m := get_json("modeldeployment", "e2e-metal", "-n", namespace)) and
              (m.get("status") or {}).get("accelerator") and m, timeout=120, what="e2e-metal resolved")
    assert md["status"]["accelerator"] == "metal", md["status"]
    # The scheduler binds the pod to the Metal agent (node selector + toleration from the plan), and that
    # agent runs it: it reports the pod's hostIP and container state.
    pod = poll(lambda: next((p for p in model_pods(namespace, "e2e-metal") if (p.get("status") or {}).get("hostIP")),
                            None), timeout=120, what="the Metal pod bound and reported by the agent")
    assert pod["spec"]["nodeName"] == metal["name"]
    internal = next(a["address"] for a in metal["node"]["status"]["addresses"] if a["type"] == "InternalIP")
    assert pod["status"]["hostIP"] == internal
    assert pod["spec"]["nodeSelector"][ACCELERATOR_LABEL] == "metal"
    delete_and_wait(namespace, "e2e-metal")


def test_cpu_agent_serves_recovers_and_cleans_up(agents: dict[str, dict], namespace: str, tiny_gguf: Path) -> None:
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
    client = _openai(address, port)
    reply = client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=4, temperature=0)
    assert reply.model == "tiny-chat"

    # Kill the engine's process group: the agent restarts it and the deployment returns to Ready.
    pod = model_pods(namespace, "e2e-agent-cpu")[0]
    assert pod["spec"]["nodeName"] == cpu["name"]
    pgid = int(pod["status"]["containerStatuses"][0]["containerID"].rsplit("-", 1)[1])
    os.killpg(pgid, signal.SIGKILL)
    poll(lambda: (p := model_pods(namespace, "e2e-agent-cpu")) and
         p[0]["status"]["containerStatuses"][0]["restartCount"] >= 1 and
         condition(p[0], "Ready").get("status") == "True", timeout=300, interval=2, what="restarted and Ready")
    poll(lambda: (get_json("modeldeployment", "e2e-agent-cpu", "-n", namespace) or {}).get("status", {})
         .get("phase") == "Ready", timeout=120, interval=2, what="e2e-agent-cpu Ready again")
    new_pgid = int(model_pods(namespace, "e2e-agent-cpu")[0]["status"]["containerStatuses"][0]["containerID"]
                   .rsplit("-", 1)[1])

    delete_and_wait(namespace, "e2e-agent-cpu")
    assert _pid_gone(new_pgid), "the model server outlived its pod"


def test_two_replicas_on_two_agents_sharing_this_host(agent_pair: dict[str, Any], namespace: str,
                                                      tiny_gguf: Path) -> None:
    addresses = {a["name"]: a["address"] for a in agent_pair["agents"]}
    name = "e2e-pair"
    _apply(_md(name, tiny_gguf, "cpu", tolerations=[TOLERATE_AGENT],
               nodeSelector={PAIR_LABEL: agent_pair["label"]}), namespace)

    def md_ready(replicas: int) -> dict | None:
        md = get_json("modeldeployment", name, "-n", namespace) or {}
        st = md.get("status") or {}
        return md if st.get("phase") == "Ready" and st.get("readyReplicas") == replicas else None

    poll(lambda: md_ready(1), timeout=300, interval=2, what=f"{name} Ready with 1 replica")
    kubectl("scale", f"modeldeployment/{name}", "-n", namespace, "--replicas=2")
    # The scheduler spreads the second replica onto the other agent (fewer requests, default pod spreading);
    # on the same node it would wait with PortInUse and this poll would time out, listing it below.
    poll(lambda: md_ready(2), timeout=300, interval=2, what=f"{name} Ready with 2 replicas")

    pods = model_pods(namespace, name)
    assert len(pods) == 2 and {p["spec"]["nodeName"] for p in pods} == set(addresses), \
        [(p["metadata"]["name"], p["spec"].get("nodeName"), p.get("status")) for p in pods]
    for p in pods:
        assert p["status"]["podIP"] == addresses[p["spec"]["nodeName"]]
    endpoints = poll(lambda: (e := ready_endpoints(namespace, name)) and len(e) == 2 and e, timeout=120,
                     what="two ready endpoints in the EndpointSlices")
    assert set(endpoints) == set(addresses.values()) and len(set(endpoints.values())) == 1, endpoints
    for address, port in endpoints.items():  # each replica answers at its own address, on the same port
        client = _openai(address, port)
        reply = client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=4, temperature=0)
        assert reply.model == "tiny-chat" and reply.choices[0].message.content is not None
    pgids = [int(p["status"]["containerStatuses"][0]["containerID"].rsplit("-", 1)[1]) for p in pods]

    # Kill one replica's engine: its agent restarts it; the other replica keeps serving meanwhile.
    victim = pods[0]
    os.killpg(pgids[0], signal.SIGKILL)
    poll(lambda: (p := get_json("pod", victim["metadata"]["name"], "-n", namespace)) and
         p["status"]["containerStatuses"][0]["restartCount"] >= 1 and condition(p, "Ready").get("status") == "True",
         timeout=300, interval=2, what="the killed replica restarted and Ready")
    poll(lambda: md_ready(2), timeout=120, interval=2, what=f"{name} Ready with 2 replicas again")
    pgids[0] = int(get_json("pod", victim["metadata"]["name"], "-n", namespace)["status"]["containerStatuses"][0]
                   ["containerID"].rsplit("-", 1)[1])

    # Delete: pods (and their processes), the Deployment and the Service go.
    delete_and_wait(namespace, name)
    poll(lambda: get_json("deployment", name, "-n", namespace) is None and
         get_json("service", name, "-n", namespace) is None, timeout=120, what="the Deployment and Service removed")
    assert all(_pid_gone(pgid) for pgid in pgids), "a model server outlived its pod"


def test_an_api_server_restart_makes_the_agent_list_again_and_miss_no_pod(agents: dict[str, dict],
                                                                           namespace: str) -> None:
    """The API server restarted: the agent's pod watch resumes from a version the new server no longer has
    (410 Gone), so it lists again in-process; a pod deleted and one created right after are both handled."""
    import subprocess
    import time

    restart = os.environ.get("TURNOUT_E2E_RESTART_APISERVER")
    if not restart:
        pytest.skip("TURNOUT_E2E_RESTART_APISERVER (a command that restarts the API server) is not set")
    cpu = agents["cpu"]
    _apply(_sleeper("e2e-before-restart", cpu["name"]), namespace)
    poll(lambda: condition(get_json("pod", "e2e-before-restart", "-n", namespace), "Ready").get("status") == "True",
         timeout=120, what="e2e-before-restart running on the CPU agent")
    subprocess.run(restart, shell=True, check=True, timeout=60)
    time.sleep(3)
    poll(lambda: kubectl("get", "--raw", "/readyz", check=False, timeout=10).strip() == "ok", timeout=300,
         what="the API server ready again")
    back = time.monotonic()
    kubectl("delete", "pod", "e2e-before-restart", "-n", namespace, "--wait=false")
    _apply(_sleeper("e2e-after-restart", cpu["name"]), namespace)
    try:
        poll(lambda: condition(get_json("pod", "e2e-after-restart", "-n", namespace), "Ready").get("status")
             == "True", timeout=180, what="e2e-after-restart running on the CPU agent")
        poll(lambda: get_json("pod", "e2e-before-restart", "-n", namespace) is None, timeout=180,
             what="e2e-before-restart stopped and gone")
        seconds = time.monotonic() - back
        assert cpu["process"].poll() is None, "the agent exited instead of listing again"
        assert "watch expired (410)" in cpu["log"].read_text()
    finally:
        kubectl("delete", "pod", "e2e-before-restart", "e2e-after-restart", "-n", namespace, "--ignore-not-found",
                "--wait=false", check=False)
        poll(cluster_settled, timeout=300, interval=2, what="every node Ready and every API served again")
    record_results({"watch_410": {"agent_relisted_in_process": True,
                                  "agent_pods_handled_after_ready_s": round(seconds, 1)}})
