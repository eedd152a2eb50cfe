"""Host agents as real nodes, for the end-to-end tests that need pods that really serve.

Each agent is ``python -m turnout.agent`` in a network namespace of its own (:mod:`netns`), so it
is a host with an address of its own (``10.250.N.2``) and reaches the API server through the
forwarder on its namespace's host end. It joins as kubelets do: ``turnout agent join-token`` (with
the admin kubeconfig of KUBECONFIG) makes its bootstrap token and a bootstrap kubeconfig naming the
forwarder, and the agent trades the token for a node certificate (the bootstrapper bindings are the
conftest's ``bootstrap_bindings_applied``). :class:`Hosts` makes the namespaces and remembers every
agent started in them (the conftest prints their logs when a test that used them fails); the
``hosts`` fixture of e2e/conftest.py gives one per test module.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from kubectl import condition, get_json, kubectl, poll
from netns import AGENT_LABEL, Forwarder, Namespace, server_of, verified_name
from procs import ROOT, child_env

from turnout.hardware import AGENT_TAINT

#: The toleration a spec needs for the agents' nodes (they are tainted so that only such specs land there).
TOLERATE_AGENT = {"key": AGENT_TAINT, "operator": "Exists", "effect": "NoSchedule"}


class Hosts:
    """Network namespaces for agents, the forwarder that lets them reach the API server, the agents started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.kubeconfig = os.environ["KUBECONFIG"].split(os.pathsep)[0]
        host, port, _ = server_of(self.kubeconfig)
        self.port = port
        self.forwarder = Forwarder((host, port))
        self.namespaces: list[Namespace] = []
        self.agents: list[dict[str, Any]] = []

    def new(self, node_name: str) -> tuple[Namespace, Path]:
        """A fresh namespace, forwarded to the API server; and the bootstrap kubeconfig of ``node_name`` in it.

        The admin's ``turnout agent join-token``, naming the forwarder (verified as the server's own name).
        """
        ns = Namespace(len(self.namespaces) + 1).create()
        self.namespaces.append(ns)
        self.forwarder.listen(ns.host, self.port)
        bootstrap = self.root / f"{node_name}.bootstrap.kubeconfig"
        subprocess.run([sys.executable, "-m", "turnout.agent", "join-token", "--node-name", node_name, "--ttl", "1h",
                        "--server", f"https://{ns.host}:{self.port}",
                        "--tls-server-name", verified_name(self.kubeconfig), "-o", str(bootstrap)],
                       check=True, cwd=ROOT, env=child_env({"KUBECONFIG": self.kubeconfig}), timeout=60)
        return ns, bootstrap

    def close(self) -> None:
        self.forwarder.close()
        for ns in self.namespaces:
            ns.delete()


def start_agent(hosts: Hosts, name: str, *args: str, address: bool = False) -> dict[str, Any]:
    """``python -m turnout.agent`` in a namespace of its own, with its own state folder, logging to a file.

    Without ``address`` the agent finds its address itself (the route to the API server); with it,
    ``--address`` is the namespace's address (also under the returned dict's ``address``). The dict has
    its ``bootstrap`` kubeconfig and the node ``kubeconfig`` it writes once it has its certificate.
    """
    ns, bootstrap = hosts.new(name)
    log_path = hosts.root / f"{name}.log"
    cmd = [sys.executable, "-m", "turnout.agent", "--node-name", name, "--bootstrap-kubeconfig", str(bootstrap),
           "--state-dir", str(hosts.root / name), "--stop-pods-on-exit", "-v", "--label", f"{AGENT_LABEL}=true",
           *(["--address", ns.address] if address else []), *args]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(ns.command(cmd), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=child_env({"KUBECONFIG": None}))
    agent = {"name": name, "process": proc, "log": log_path, "netns": ns, "address": ns.address,
             "bootstrap": bootstrap, "kubeconfig": hosts.root / name / "kubeconfig"}
    hosts.agents.append(agent)
    return agent


def wait_ready(agents: list[dict[str, Any]]) -> None:
    """Wait until each agent's Node is Ready and schedulable; its Node object lands under ``node``."""
    for agent in agents:
        def ready(agent: dict[str, Any] = agent) -> dict | None:
            if agent["process"].poll() is not None:
                raise AssertionError(f"agent exited {agent['process'].returncode}:\n{agent['log'].read_text()}")
            node = get_json("node", agent["name"])
            # Ready, and no longer tainted not-ready: the API server taints every new Node so until the
            # node-lifecycle controller has seen it Ready (until then no deployment can be placed there).
            lifted = all(t["key"] != "node.kubernetes.io/not-ready" for t in (node or {}).get("spec", {})
                         .get("taints") or [])
            return node if condition(node, "Ready").get("status") == "True" and lifted else None

        agent["node"] = poll(ready, timeout=60, what=f"node {agent['name']} Ready and schedulable")


def stop_agents(agents: list[dict[str, Any]]) -> None:
    """SIGTERM (the agents stop their pods' processes), then remove their Nodes, Leases, tokens and CSRs."""
    for agent in agents:
        agent["process"].send_signal(signal.SIGTERM)
    for agent in agents:
        try:
            agent["process"].wait(timeout=90)
        except subprocess.TimeoutExpired:
            agent["process"].kill()
        if not os.environ.get("TURNOUT_E2E_KEEP"):
            kubectl("delete", "node", agent["name"], "--ignore-not-found", check=False)
            kubectl("delete", "lease", agent["name"], "-n", "kube-node-lease", "--ignore-not-found", check=False)
            kubectl("delete", "secrets", "-n", "kube-system", "-l", f"turnout.dev/host={agent['name']}",
                    "--ignore-not-found", check=False)
            for csr in node_csrs(agent["name"]):
                kubectl("delete", "csr", csr["metadata"]["name"], "--ignore-not-found", check=False)


def node_csrs(node: str) -> list[dict[str, Any]]:
    """The CertificateSigningRequests for ``system:node:<node>``'s certificate."""
    from cryptography import x509

    out = []
    for csr in json.loads(kubectl("get", "csr", "-o", "json"))["items"]:
        request = x509.load_pem_x509_csr(base64.b64decode(csr["spec"]["request"]))
        if request.subject.rfc4514_string() == f"CN=system:node:{node},O=system:nodes":
            out.append(csr)
    return out


def model_pods(namespace: str, name: str) -> list[dict[str, Any]]:
    """The pods of ModelDeployment ``name``."""
    listing = json.loads(kubectl("get", "pods", "-n", namespace, "-l", f"turnout.dev/deployment={name}",
                                 "-o", "json"))
    return list(listing["items"])


def ready_endpoints(namespace: str, service: str) -> dict[str, int]:
    """Ready endpoint address -> port, from the Service's EndpointSlices."""
    slices = json.loads(kubectl("get", "endpointslices", "-n", namespace, "-l",
                                f"kubernetes.io/service-name={service}", "-o", "json"))["items"]
    out = {}
    for item in slices:
        for ep in item.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready"):
                out.update({address: int(item["ports"][0]["port"]) for address in ep["addresses"]})
    return out


def delete_and_wait(namespace: str, name: str, timeout: float = 120) -> None:
    """Delete ModelDeployment ``name`` and wait until its pods (and so their processes) are gone."""
    kubectl("delete", "modeldeployment", name, "-n", namespace, "--ignore-not-found", "--wait=false")
    poll(lambda: not model_pods(namespace, name), timeout=timeout, what=f"the pods of {name} removed")
