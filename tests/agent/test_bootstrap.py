"""Node identity: join tokens, TLS bootstrapping, renewal, and the node's API use vs what the Node authorizer grants.

The cluster is :mod:`clusterfake` (the emulator over TLS, authenticating certificates and bootstrap
tokens, approving and signing node CSRs as kube-controller-manager does, and restricting node users
as the Node authorizer and NodeRestriction do); e2e/test_agent_e2e.py runs the same flow against a
real control plane.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import os
import signal
import stat
import sys
from pathlib import Path

import pytest
import yaml
from agentfake import CONFIGMAPS, SECRETS
from agentharness import NODE, NODES, NS, PODS, delete_pod, pod, running_and_ready
from agentharness import standin_pod as make_pod
from clusterfake import CSRS, ClusterFake
from cryptography import x509

from kubeconfigs import credentials_for, write_kubeconfig
from turnout.agent.bootstrap import CURRENT, BootstrapError, NodeIdentity, issued
from turnout.agent.jointoken import (
    HOST_LABEL,
    JoinTokenError,
    bootstrap_kubeconfig,
    join_token,
    parse_ttl,
    token_secret,
)
from turnout.agent.node import AGENT_LABEL
from turnout.agent.rbac import BOOTSTRAP_GROUP, RULES
from turnout.hardware import AGENT_TAINT
from turnout.kube import Credentials, KubeClient, PermanentApiError, load_credentials
from turnout.kube.rbac import Rule, covers

#: system:node-bootstrapper, the ClusterRole the bootstrap token's group is bound to.
NODE_BOOTSTRAPPER = (Rule("certificates.k8s.io", "certificatesigningrequests", ("create", "get", "list", "watch"),
                          "system:node-bootstrapper"),)


async def admin(cluster: ClusterFake) -> Credentials:
    return await credentials_for(str(cluster.url).rstrip("/"), user={"token": "admin-token"},
                                 cluster={"certificate-authority-data": base64.b64encode(cluster.ca.pem).decode()})


async def bootstrap_file(cluster: ClusterFake, folder: Path, node: str = NODE) -> tuple[Path, str]:
    """``turnout agent join-token``'s work, in process: (bootstrap kubeconfig, token)."""
    creds = await admin(cluster)
    async with KubeClient(creds) as kube:
        token, _, _ = await join_token(kube, node, datetime.timedelta(hours=1))
    path = folder / f"bootstrap-{node}.kubeconfig"
    path.write_text(yaml.safe_dump(bootstrap_kubeconfig(creds, token, node)))
    return path, token


def csrs(cluster: ClusterFake, user_prefix: str = "") -> list[dict]:
    return [c for c in cluster.objects(CSRS) if c["spec"]["username"].startswith(user_prefix)]


def current_serial(state: Path) -> int:
    return x509.load_pem_x509_certificate((state / "pki" / CURRENT).read_bytes()).serial_number


async def test_join_token_makes_one_token_per_host_and_reuses_it(cluster: ClusterFake, tmp_path: Path) -> None:
    creds = await admin(cluster)
    async with KubeClient(creds) as kube:
        token, expiration, reused = await join_token(kube, NODE, datetime.timedelta(hours=2))
        assert not reused and expiration is not None
        again = await join_token(kube, NODE, datetime.timedelta(hours=2))
        other = await join_token(kube, "mac-2", None)
    token_id, secret = token.split(".")
    assert len(token_id) == 6 and len(secret) == 16 and (token_id + secret).isalnum() and token.islower()
    assert again == (token, expiration, True), "the host's unexpired token is handed out again"
    assert other[0] != token and other[1] is None
    stored = cluster.get(SECRETS, "kube-system", f"bootstrap-token-{token_id}")
    data = {k: base64.b64decode(v).decode() for k, v in stored["data"].items()}
    assert stored["type"] == "bootstrap.kubernetes.io/token" and stored["metadata"]["labels"] == {HOST_LABEL: NODE}
    assert data["token-secret"] == secret and data["usage-bootstrap-authentication"] == "true"
    assert data["auth-extra-groups"] == BOOTSTRAP_GROUP
    left = datetime.datetime.fromisoformat(data["expiration"].replace("Z", "+00:00")) - \
        datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(hours=1, minutes=59) < left <= datetime.timedelta(hours=2)

    # Expired (or about to expire) tokens are not reused: a new one is made.
    await cluster.remove(SECRETS, ("kube-system", f"bootstrap-token-{token_id}"))
    await cluster.put_object(SECRETS, token_secret(NODE, "old000", "o" * 16, datetime.datetime.now(
        datetime.timezone.utc) + datetime.timedelta(minutes=1)))
    async with KubeClient(creds) as kube:
        fresh, _, reused = await join_token(kube, NODE, datetime.timedelta(hours=1))
    assert not reused and not fresh.startswith("old000")

    doc = bootstrap_kubeconfig(creds, fresh, NODE, server="https://10.0.0.1:6443", tls_server_name="kube.internal")
    assert doc["clusters"][0]["cluster"] == {"server": "https://10.0.0.1:6443", "tls-server-name": "kube.internal",
                                             "certificate-authority-data": base64.b64encode(cluster.ca.pem).decode()}
    assert doc["users"][0]["user"] == {"token": fresh}

    assert parse_ttl("24h") == datetime.timedelta(hours=24) and parse_ttl("1h30m") == datetime.timedelta(minutes=90)
    assert parse_ttl("0") is None
    with pytest.raises(JoinTokenError, match="--ttl"):
        parse_ttl("tomorrow")


async def test_join_token_command_writes_a_private_bootstrap_kubeconfig(cluster: ClusterFake, tmp_path: Path) -> None:
    admin_config = write_kubeconfig(tmp_path / "admin", str(cluster.url).rstrip("/"), user={"token": "admin-token"},
                                    cluster={"certificate-authority-data": base64.b64encode(cluster.ca.pem).decode(),
                                             "tls-server-name": "localhost"})
    out = tmp_path / "mac-1.bootstrap"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout.agent", "join-token", "--node-name", NODE, "--ttl", "2h", "-o", str(out),
        "--kubeconfig", str(admin_config), stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "created bootstrap token" in err.decode()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    doc = yaml.safe_load(out.read_text())
    assert doc["clusters"][0]["cluster"]["tls-server-name"] == "localhost"
    token = doc["users"][0]["user"]["token"]
    async with KubeClient(await credentials_for(str(cluster.url).rstrip("/"), user={"token": token}, cluster={
            "certificate-authority-data": base64.b64encode(cluster.ca.pem).decode()})) as kube:
        await kube.get("/api/v1/namespaces/models")
    assert cluster.calls[-1][2].name == f"system:bootstrap:{token.split('.')[0]}"
    assert BOOTSTRAP_GROUP in cluster.calls[-1][2].groups


async def test_python_m_turnout_agent_with_a_bootstrap_kubeconfig(cluster: ClusterFake, tmp_path: Path) -> None:
    bootstrap, _ = await bootstrap_file(cluster, tmp_path)
    state = tmp_path / "cli-state"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout.agent", "--node-name", NODE, "--accelerator", "cpu", "--address", "127.0.0.1",
        "--bootstrap-kubeconfig", str(bootstrap), "--state-dir", str(state), "--stop-pods-on-exit",
        stderr=asyncio.subprocess.PIPE)
    try:
        await cluster.wait_for(lambda: cluster.get(NODES, None, NODE), timeout=60, what="the CLI's node")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert (state / "kubeconfig").is_file() and (state / "pki" / CURRENT).is_file()
    assert b"submitted certificate signing request" in err

    cluster.approve = False  # a denied request ends the agent with the reason, exit status 2
    (state / "pki" / CURRENT).unlink()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout.agent", "--node-name", NODE, "--bootstrap-kubeconfig", str(bootstrap),
        "--state-dir", str(state), stderr=asyncio.subprocess.PIPE)
    await cluster.wait_for(lambda: len(csrs(cluster)) == 2, timeout=60, what="the second CSR")
    newest = max(csrs(cluster), key=lambda c: int(c["metadata"]["resourceVersion"]))["metadata"]["name"]
    await cluster.deny_csr(newest, "unknown host")
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and b"was denied: AdminDenied: unknown host" in err, err.decode()


async def test_an_agent_joins_with_a_bootstrap_token_and_renews_its_certificate(
        cluster: ClusterFake, node_agents, tmp_path: Path, free_port: int) -> None:
    bootstrap, token = await bootstrap_file(cluster, tmp_path)
    cluster.signing_seconds = 10  # the first certificate: renewed 7-9 s after it was signed
    run = node_agents(bootstrap)
    await run.start()
    cluster.signing_seconds = 3600
    (first,) = csrs(cluster)
    assert first["spec"]["username"] == f"system:bootstrap:{token.split('.')[0]}"
    assert BOOTSTRAP_GROUP in first["spec"]["groups"]
    assert first["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
    assert first["spec"]["usages"] == ["digital signature", "client auth"]
    request = x509.load_pem_x509_csr(base64.b64decode(first["spec"]["request"]))
    assert request.subject.rfc4514_string() == f"CN=system:node:{NODE},O=system:nodes"
    assert issued(first) is not None

    # Registered as the node itself; the bootstrap token was used for the CSR only.
    node = cluster.get(NODES, None, NODE)
    assert node["metadata"]["labels"][AGENT_LABEL] == "true"
    assert node["spec"]["taints"] == [{"key": AGENT_TAINT, "value": "true", "effect": "NoSchedule"}]
    node_calls = [(m, p) for m, p, u in cluster.calls if u.name == f"system:node:{NODE}"]
    assert ("POST", "/api/v1/nodes") in node_calls
    assert {p for _, p, u in cluster.calls if u.name.startswith("system:bootstrap:")} == {
        "/apis/certificates.k8s.io/v1/certificatesigningrequests"}

    state = Path(run.config.state_dir)
    pki = state / "pki"
    assert (pki / CURRENT).is_symlink() and stat.S_IMODE((pki / CURRENT).stat().st_mode) == 0o600
    assert stat.S_IMODE(pki.stat().st_mode) == 0o700
    kubeconfig = yaml.safe_load((state / "kubeconfig").read_text())
    current = str(pki / CURRENT)
    assert kubeconfig["users"][0]["user"] == {"client-certificate": current, "client-key": current}
    assert stat.S_IMODE((state / "kubeconfig").stat().st_mode) == 0o600
    old_serial = current_serial(state)

    # Renewal: a CSR sent as the node (selfnodeclient), then the running agent switches to the new certificate.
    await cluster.wait_for(lambda: [c for c in csrs(cluster, "system:node:") if issued(c)], timeout=30,
                           what="the renewal CSR signed")
    await cluster.wait_for(lambda: current_serial(state) != old_serial, timeout=10, what="the new certificate stored")
    new_serial = current_serial(state)
    await cluster.wait_for(lambda: any(u.serial == new_serial for _, _, u in cluster.calls), timeout=30,
                           what="a request with the renewed certificate")
    count = len(cluster.calls)
    await cluster.wait_for(lambda: len(cluster.calls) > count + 3, timeout=10, what="more heartbeats")
    assert {u.serial for _, _, u in cluster.calls[count:]} == {new_serial}
    # The pod watch opened before the renewal still delivers (it is not left hanging on a closed pool).
    await cluster.put_object(PODS, make_pod("after-renewal", free_port, extra_args=("--ready-after", "0")))
    await cluster.wait_for(lambda: running_and_ready(cluster, "after-renewal"), timeout=30,
                           what="a pod bound after the renewal running")
    await delete_pod(cluster, "after-renewal")
    await cluster.wait_for(lambda: pod(cluster, "after-renewal") is None, what="removed")
    await run.stop(stop_pods=True)

    # A restart uses the stored certificate: the token may be gone by then (single use, expired).
    for secret in cluster.objects(SECRETS, "kube-system"):
        await cluster.remove(SECRETS, ("kube-system", secret["metadata"]["name"]))
    before = len(csrs(cluster))
    count = len(cluster.calls)
    await run.start()
    assert len(csrs(cluster)) == before
    assert {u.name for _, _, u in cluster.calls[count:]} == {f"system:node:{NODE}"}


async def test_a_pending_denied_or_refused_request_says_what_to_do(cluster: ClusterFake, tmp_path: Path) -> None:
    bootstrap, _ = await bootstrap_file(cluster, tmp_path)
    cluster.approve = False
    identity = NodeIdentity.of(NODE, str(tmp_path / "state"), str(bootstrap), csr_timeout=0.5)
    with pytest.raises(BootstrapError, match=r"still pending after .*csrapproving controller running.*"
                                             r"kubectl certificate approve node-csr-"):
        await identity.credentials()

    waiting = asyncio.create_task(NodeIdentity.of(NODE, str(tmp_path / "state"), str(bootstrap)).credentials())
    await cluster.wait_for(lambda: len(csrs(cluster)) == 2, what="the second CSR")
    newest = max(csrs(cluster), key=lambda c: int(c["metadata"]["resourceVersion"]))["metadata"]["name"]
    await cluster.deny_csr(newest, "not a host we know")
    with pytest.raises(BootstrapError, match="was denied: AdminDenied: not a host we know"):
        await asyncio.wait_for(waiting, 30)

    # An admin approves by hand (kubectl certificate approve): that works too.
    cluster.approve = False
    manual = asyncio.create_task(NodeIdentity.of(NODE, str(tmp_path / "state"), str(bootstrap)).credentials())
    await cluster.wait_for(lambda: len(csrs(cluster)) == 3, what="the third CSR")
    newest = max(csrs(cluster), key=lambda c: int(c["metadata"]["resourceVersion"]))["metadata"]["name"]
    await cluster.approve_csr(newest)
    creds = await asyncio.wait_for(manual, 30)
    assert Path(creds.configuration.cert_file).name == CURRENT

    wrong = tmp_path / "wrong.kubeconfig"
    doc = yaml.safe_load(bootstrap.read_text())
    doc["users"][0]["user"]["token"] = "abcdef.0000000000000000"
    wrong.write_text(yaml.safe_dump(doc))
    with pytest.raises(BootstrapError, match=r"401.*turnout agent join-token"):
        await NodeIdentity.of(NODE, str(tmp_path / "other-state"), str(wrong)).credentials()

    foreign = write_kubeconfig(tmp_path / "mine", "https://example.test", user={"token": "t"})
    with pytest.raises(BootstrapError, match="is not a node kubeconfig"):
        await NodeIdentity.of(NODE, str(tmp_path / "state"), str(bootstrap), kubeconfig=str(foreign)).credentials()
    assert foreign.read_text().count("example.test") == 1, "a kubeconfig the agent did not write is left alone"
    assert os.path.exists(bootstrap)


async def test_the_node_identity_uses_only_what_the_node_authorizer_grants(
        cluster: ClusterFake, node_agents, tmp_path: Path, free_port: int) -> None:
    """Every call the agent makes as its node is declared in turnout.agent.rbac, and every rule is used."""
    bootstrap, _ = await bootstrap_file(cluster, tmp_path)
    cluster.signing_seconds = 8  # so a renewal happens while the pod runs
    run = node_agents(bootstrap)
    await run.start()
    cluster.signing_seconds = 3600
    await cluster.put_object(SECRETS, {"metadata": {"name": "tokens", "namespace": NS},
                                       "data": {"hf": base64.b64encode(b"hf_secret").decode()}})
    await cluster.put_object(SECRETS, {"metadata": {"name": "unrelated", "namespace": NS}, "data": {}})
    await cluster.put_object(CONFIGMAPS, {"metadata": {"name": "settings", "namespace": NS}, "data": {"mode": "fast"}})
    spec = make_pod("keyed", free_port, container={
        "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "tokens", "key": "hf"}}},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}}],
        "args": ["--ready-after", "0"]})
    await cluster.put_object(PODS, spec)
    await cluster.wait_for(lambda: running_and_ready(cluster, "keyed"), timeout=30, what="Ready")
    await cluster.wait_for(lambda: csrs(cluster, "system:node:"), timeout=30, what="a renewal")
    await delete_pod(cluster, "keyed")
    await cluster.wait_for(lambda: pod(cluster, "keyed") is None, what="removed")
    await run.stop(stop_pods=True)

    used: dict[str, set[tuple[str, str, str]]] = {"turnout-agent": set(), "turnout-agent-bootstrap": set()}
    for request in cluster.requests:
        agent = str(request.headers.get("User-Agent", ""))
        if request.resource is None or agent not in used:
            continue
        method = str(request.method.value).upper()
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        verb = {"GET": "get" if request.name else "list", "POST": "create", "PATCH": "patch",
                "PUT": "update", "DELETE": "delete"}[method]
        if method == "GET" and request.params.get("watch") == "true":
            verb = "watch"
        used[agent].add((request.resource.group or "", resource, verb))
    for group, resource, verb in sorted(used["turnout-agent"]):
        assert covers(group, resource, verb, RULES), f"{verb} {group}/{resource} is not in turnout.agent.rbac"
    for rule in RULES:
        for verb in rule.verbs:
            assert (rule.api_group, rule.resource, verb) in used["turnout-agent"], \
                f"declared but unused: {verb} {rule.resource}"
    for group, resource, verb in sorted(used["turnout-agent-bootstrap"]):
        assert covers(group, resource, verb, NODE_BOOTSTRAPPER), f"the bootstrap token cannot {verb} {resource}"
    # Every call as the node was one the Node authorizer and NodeRestriction allow; others are refused.
    assert cluster.refused == []
    node_users = {u.name for _, p, u in cluster.calls if "certificatesigningrequests" not in p and u.name != "admin"}
    assert node_users == {f"system:node:{NODE}"}
    await cluster.put_object(NODES, {"metadata": {"name": "other-node"}})
    await cluster.put_object(PODS, make_pod("elsewhere", free_port, node="other-node"))
    async with KubeClient(await load_credentials(str(Path(run.config.state_dir) / "kubeconfig"))) as kube:
        for call in (kube.get(f"/api/v1/namespaces/{NS}/secrets/unrelated"),
                     kube.merge_patch("/api/v1/nodes/other-node", {"metadata": {"labels": {"x": "y"}}}),
                     kube.delete(f"/api/v1/namespaces/{NS}/pods/elsewhere"),
                     kube.merge_patch(f"/api/v1/nodes/{NODE}", {"spec": {"taints": []}})):
            with pytest.raises(PermanentApiError) as refused:
                await call
            assert refused.value.status == 403
