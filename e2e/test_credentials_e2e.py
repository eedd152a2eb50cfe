"""Who the operator is to a real API server: every credential form, least privilege, outages; the client's calls.

``turnout operator -A`` runs (the suite's own operator paused meanwhile) and reconciles a deployment
to Ready from:

* the kubeconfig in ``KUBECONFIG`` as kind and EKS write it (embedded base64 CA and client certificate);
* a kubeconfig whose user is an ``exec`` plugin (a script written here, as ``aws eks get-token`` or
  ``gke-gcloud-auth-plugin``) that prints an ExecCredential with a token from
  ``kubectl create token`` for a ServiceAccount bound to the ClusterRole that
  ``python -m turnout.controller.rbac`` prints: the declared rules are enough on a real server
  (least privilege). Its first token is refused (401): the plugin runs again;
* in-cluster: ``KUBERNETES_SERVICE_HOST``/``PORT`` and the service-account files at the real path
  ``/var/run/secrets/kubernetes.io/serviceaccount``, mounted in a private mount namespace
  (``unshare --mount``: nothing on the host changes), ``KUBECONFIG`` unset;
* through a forwarder that drops every connection for a while (an API server outage): the
  operator's watches and requests recover and it converges.

The client (:class:`turnout.kube.KubeClient`) then meets the real server directly: failure
classes, uid-guarded deletes, a watch from a resourceVersion, kubeconfig
contexts, file paths, token files that rotate, an unknown CA and ``insecure-skip-tls-verify``.
Identities are read back with a SelfSubjectReview.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubectl import apply, condition, events, get_json, gguf, kubectl, model_deployment, phase, poll
from netns import Forwarder, kubeconfig_via, server_of
from procs import PACKAGE_ROOT, OperatorProcess, free_port

from turnout.kube import CredentialsError, KubeClient, PermanentApiError, TransientApiError, load_credentials

RUN = uuid.uuid4().hex[:5]
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
REVIEW = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


def _admin_path() -> str:
    return os.environ["KUBECONFIG"].split(os.pathsep)[0]


def _admin() -> dict[str, Any]:
    """The current context's cluster and user of the admin kubeconfig (with file references read in)."""
    config = yaml.safe_load(Path(_admin_path()).read_text())
    base = Path(_admin_path()).resolve().parent
    contexts = {c["name"]: c["context"] for c in config["contexts"]}
    context = contexts[config["current-context"]]
    cluster = dict(next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"]))
    user = dict(next(u["user"] for u in config["users"] if u["name"] == context["user"]))
    for body, key in ((cluster, "certificate-authority"), (user, "client-certificate"), (user, "client-key")):
        if body.get(key):
            body[f"{key}-data"] = base64.b64encode((base / body.pop(key)).read_bytes()).decode()
    return {"cluster": cluster, "user": user}


def _kubeconfig(path: Path, user: dict[str, Any], *, cluster: dict[str, Any] | None = None,
                extra_contexts: list[tuple[str, dict[str, Any], str | None]] = ()) -> Path:
    """A kubeconfig for the admin kubeconfig's server with this ``user`` (its context is current)."""
    cluster = cluster if cluster is not None else _admin()["cluster"]
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Config", "current-context": "e2e",
                           "clusters": [{"name": "e2e", "cluster": cluster}],
                           "users": [{"name": "e2e", "user": user}],
                           "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e"}}]}
    for name, other, namespace in extra_contexts:
        doc["users"].append({"name": name, "user": other})
        context = {"cluster": "e2e", "user": name, **({"namespace": namespace} if namespace else {})}
        doc["contexts"].append({"name": name, "context": context})
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


def _token(namespace: str, account: str) -> str:
    return kubectl("create", "token", account, "-n", namespace, "--duration=10m").strip()


async def _whoami(credentials: Any) -> str:
    async with KubeClient(credentials) as client:
        review = await client.request("POST", REVIEW, body={"apiVersion": "authentication.k8s.io/v1",
                                                            "kind": "SelfSubjectReview"})
    return str(review["status"]["userInfo"]["username"])


@pytest.fixture(scope="module")
def accounts(crds: None) -> Iterator[str]:
    """A namespace with ServiceAccounts ``turnout-operator`` (bound to the generated ClusterRole), ``a`` and ``b``."""
    namespace = f"turnout-e2e-cred-{RUN}"
    role = f"turnout-operator-e2e-{RUN}"
    kubectl("create", "namespace", namespace)
    for account in ("turnout-operator", "a", "b"):
        kubectl("create", "serviceaccount", account, "-n", namespace)
    generated = subprocess.run([sys.executable, "-m", "turnout.controller.rbac", "--name", role], check=True,
                               capture_output=True, text=True, env={**os.environ, "PYTHONPATH": PACKAGE_ROOT}).stdout
    kubectl("apply", "-f", "-", stdin=generated)
    kubectl("create", "clusterrolebinding", role, f"--clusterrole={role}",
            f"--serviceaccount={namespace}:turnout-operator")
    yield namespace
    kubectl("delete", "clusterrolebinding,clusterrole", role, "--ignore-not-found", check=False)
    kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture
def workload(namespace: str, own_nodes: Any, cleanup: Any) -> Iterator[Any]:
    """``check(operator)``: a deployment on this test's own CPU node reconciled to Ready by that operator."""
    own_nodes.add("cpu")
    name = f"e2e-cred-{uuid.uuid4().hex[:5]}"
    cleanup("modeldeployment", name, namespace)

    def check(operator: OperatorProcess, **spec: Any) -> dict[str, Any]:
        apply(model_deployment(name, gguf(replicas=1, nodeSelector=own_nodes.selector, **spec)), namespace,
              manager="e2e")
        md = poll(lambda: phase(namespace, name, "Ready"), timeout=120,
                  what=f"{name} Ready, reconciled by the operator in {operator.log}")
        assert md["status"]["engine"] == "llama.cpp"
        assert any(c["type"] == "Resolved" and c["reason"] == "EngineSelected" for c in md["status"]["conditions"])
        return md

    check.name = name  # type: ignore[attr-defined]
    yield check


def _operator(tmp_path: Path, *args: str, **kwargs: Any) -> OperatorProcess:
    return OperatorProcess(["-A", *args], tmp_path / "operator.log", **kwargs)


# ----- the operator, logged in three ways -------------------------------------------------------------------


def test_operator_with_the_admin_kubeconfig(operator_paused, workload, tmp_path):
    admin = _admin()
    assert "certificate-authority-data" in admin["cluster"]  # embedded base64, as kind and EKS write it
    op = _operator(tmp_path, "--kubeconfig", _admin_path()).start()
    try:
        workload(op)
        assert "with the kubeconfig" in op.log.read_text()
    finally:
        op.stop()


def _exec_plugin(tmp_path: Path, namespace: str) -> tuple[Path, Path]:
    """A credential plugin: a refused token on its first run, then a ServiceAccount token from kubectl."""
    runs = tmp_path / "runs"
    script = tmp_path / "plugin.py"
    script.write_text(textwrap.dedent(f"""\
        import datetime, json, pathlib, subprocess
        runs = pathlib.Path({str(runs)!r})
        n = int(runs.read_text()) + 1 if runs.exists() else 1
        runs.write_text(str(n))
        if n == 1:
            token = "not-a-valid-token"  # the API server answers 401: the plugin must run again
        else:
            token = subprocess.run(["kubectl", "--kubeconfig", {_admin_path()!r}, "create", "token",
                                    "turnout-operator", "-n", {namespace!r}, "--duration=10m"],
                                   check=True, capture_output=True, text=True).stdout.strip()
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=9)
        print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                          "status": {{"token": token,
                                      "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}}}}))
        """))
    return script, runs


def test_operator_with_an_exec_plugin_and_the_generated_role(operator_paused, workload, accounts, tmp_path,
                                                             namespace):
    script, runs = _exec_plugin(tmp_path, accounts)
    config = _kubeconfig(tmp_path / "exec.kubeconfig", {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1beta1", "command": sys.executable, "args": [str(script)],
        "interactiveMode": "Never"}})
    op = _operator(tmp_path, "--kubeconfig", str(config)).start()
    try:
        md = workload(op)
        # Every verb the operator uses, with the generated role only: watch, apply (creating and updating),
        # status, Events, and delete (a claim is pruned when spec.cache goes). Replicas 0: no claim is bound
        # here (no storage class), so no pod could start with one.
        on = {"nodeSelector": md["spec"]["nodeSelector"]}
        claim = f"{workload.name}-cache"
        apply(model_deployment(workload.name, gguf(replicas=0, cache={"size": "1Gi"}, **on)), namespace, manager="e2e")
        poll(lambda: get_json("pvc", claim, "-n", namespace), what="the cache claim")
        apply(model_deployment(workload.name, gguf(replicas=0, **on)), namespace, manager="e2e")
        poll(lambda: get_json("pvc", claim, "-n", namespace) is None, what="the claim pruned")
        # replicas 0: the phase says so (ScaledToZero), as docs/autoscaling.md describes
        poll(lambda: phase(namespace, workload.name, "ScaledToZero", observedGeneration=3),
             what="generation 3 reconciled")
        assert op.total("turnout_operator_api_errors_total", code="403") == 0
        log = op.log.read_text()
        assert "Forbidden" not in log and " 403" not in log, log[-5000:]
    finally:
        op.stop()
    assert int(runs.read_text()) >= 2, "the refused first token made the plugin run again"
    who = f"system:serviceaccount:{accounts}:turnout-operator"
    # Secrets: get (the keys apiKeySecretRef names, hashed for the gateway), patch only the published digests.
    for verb, resource, allowed in (("watch", "nodes", "yes"), ("patch", "deployments.apps", "yes"),
                                    ("delete", "nodes", "no"), ("get", "secrets", "yes"), ("list", "secrets", "no"),
                                    ("patch", "secrets", "no"), ("patch", "secret/turnout-gateway-keys", "yes"),
                                    ("create", "pods", "no"), ("update", "deployments.apps", "no")):
        answer = kubectl("auth", "can-i", verb, resource, "-A", f"--as={who}", check=False).strip()
        assert answer == allowed, (verb, resource, answer)


def test_operator_in_cluster_with_the_service_account_files(operator_paused, workload, accounts, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the in-cluster test mounts the service-account files in a private mount namespace: run as root")
    host, port, _ = server_of(_admin_path())
    files = tmp_path / "serviceaccount"
    files.mkdir()
    (files / "token").write_text(_token(accounts, "turnout-operator"))
    (files / "ca.crt").write_bytes(base64.b64decode(_admin()["cluster"]["certificate-authority-data"]))
    (files / "namespace").write_text(accounts)
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    # A private mount namespace: /run gets an overlay (so the secrets folder can be made in it) and the
    # folder above is bind-mounted at the real path; the host's /run stays as it is.
    mount = (f"mount -t overlay overlay -o lowerdir=/run,upperdir={upper},workdir={work} /run && "
             f"mkdir -p {SA_DIR} && mount --bind {files} {SA_DIR} && exec \"$@\"")
    wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh"]
    env = {"KUBECONFIG": None, "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(port),
           "HOME": str(tmp_path)}
    op = _operator(tmp_path, wrap=wrap, env=env).start()
    try:
        workload(op)
        assert "with the in-cluster service account" in op.log.read_text()
    finally:
        op.stop()
    assert not SA_DIR.exists(), "the host's /var/run/secrets is untouched"


def test_an_api_outage_is_retried_and_converges(operator_paused, workload, tmp_path, namespace, own_nodes,
                                                cleanup):
    host, port, _ = server_of(_admin_path())
    forwarder = Forwarder((host, port))
    name = f"e2e-outage-{uuid.uuid4().hex[:5]}"
    cleanup("modeldeployment", name, namespace)
    try:
        local = free_port()
        forwarder.listen("127.0.0.1", local)
        config = kubeconfig_via(_admin_path(), "127.0.0.1", local, str(tmp_path))
        op = _operator(tmp_path, "--kubeconfig", config).start()
        try:
            workload(op)
            forwarder.cut()  # every connection dropped, none accepted: the API server is gone for the operator
            apply(model_deployment(name, gguf(replicas=1, nodeSelector=own_nodes.selector)), namespace)
            time.sleep(5)
            assert not (get_json("modeldeployment", name, "-n", namespace) or {}).get("status")
            assert op.running
            forwarder.restore()
            md = poll(lambda: phase(namespace, name, "Ready"), timeout=120, what=f"{name} Ready after the outage")
            assert condition(md, "Resolved")["status"] == "True"
        finally:
            op.stop()
    finally:
        forwarder.close()


# ----- the client against the real server ---------------------------------------------------------------------


async def test_client_classifies_failures(accounts, tmp_path):
    errors: list[tuple[str, int]] = []
    client = KubeClient(await load_credentials(_admin_path()), on_error=lambda m, c: errors.append((m, c)))
    services = f"/api/v1/namespaces/{accounts}/services"
    try:
        assert await client.get(f"{services}/nope") is None
        with pytest.raises(PermanentApiError) as missing:
            await client.patch_status("turnout.dev/v1alpha1", "modeldeployments", accounts, "nope", {"phase": "x"})
        assert missing.value.status == 404 and missing.value.reason == "NotFound"
        with pytest.raises(PermanentApiError) as invalid:
            await client.create(services, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "Bad_Name"},
                                           "spec": {"ports": [{"port": 80}]}})
        assert invalid.value.status == 422 and "Bad_Name" in invalid.value.message
        body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "twice"}, "spec": {"ports": [{"port": 80}]}}
        await client.create(services, body)
        with pytest.raises(TransientApiError) as conflict:
            await client.create(services, body)
        assert conflict.value.status == 409 and conflict.value.reason == "AlreadyExists"
        regarding = {"apiVersion": "v1", "kind": "Service", "name": "twice", "namespace": accounts}
        event = await client.create_event(regarding, type_="Normal", reason="Tested", note="n", action="Test",
                                          controller="turnout.dev/e2e", instance="e2e")
        assert event["metadata"]["name"].startswith("twice.")
        assert events(accounts, "twice", "Tested")
    finally:
        await client.close()
    down = KubeClient(await load_credentials(str(_kubeconfig(
        tmp_path / "down", _admin()["user"], cluster={**_admin()["cluster"], "server": f"https://127.0.0.1:{free_port()}"}))))
    with pytest.raises(TransientApiError) as refused:
        await down.get("/api/v1/namespaces")
    await down.close()
    assert refused.value.status == 0
    assert errors == [("GET", 404), ("PATCH", 404), ("POST", 422), ("POST", 409)]


async def test_client_delete_is_guarded_by_the_uid_and_treats_gone_as_done(accounts):
    svc = json.loads(kubectl("create", "service", "clusterip", "guarded", "--tcp=80:80", "-n", accounts, "-o", "json"))
    target = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "guarded", "namespace": accounts}}
    async with KubeClient(await load_credentials(_admin_path())) as client:
        assert await client.delete(target, uid="00000000-0000-0000-0000-000000000000") is False  # 409
        assert get_json("service", "guarded", "-n", accounts) is not None
        assert await client.delete(target, uid=svc["metadata"]["uid"]) is True
        assert get_json("service", "guarded", "-n", accounts) is None
        assert await client.delete(target, uid=svc["metadata"]["uid"]) is False  # 404: already gone


async def test_watch_from_a_resource_version(accounts):
    path = f"/api/v1/namespaces/{accounts}/configmaps"

    async def events_of(params: dict[str, str], count: int) -> list[tuple[str, str]]:
        seen = []
        async for event in client.watch(path, params, timeout_seconds=5):
            if event["type"] != "BOOKMARK":
                seen.append((event["type"], event["object"]["metadata"]["name"]))
            if len(seen) == count:
                break
        return seen

    async with KubeClient(await load_credentials(_admin_path())) as client:
        rv = (await client.request("GET", path))["metadata"]["resourceVersion"]
        await client.create(path, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "watched"},
                                   "data": {"k": "v"}})
        await client.merge_patch(f"{path}/watched", {"data": {"k": "w"}})
        await client.create(path, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kept"}})
        await client.delete(f"{path}/watched", propagation=None)
        # Every change after the list's resourceVersion, in order. (The project lists, then watches from
        # there: a watch without a resourceVersion needs etcd progress notifications, which a control plane
        # may not have, and answers 500 then.)
        assert await events_of({"resourceVersion": rv}, 4) == [
            ("ADDED", "watched"), ("MODIFIED", "watched"), ("ADDED", "kept"), ("DELETED", "watched")]


async def test_current_context_and_a_named_context(accounts, tmp_path):
    token = _token(accounts, "a")
    path = _kubeconfig(tmp_path / "contexts", _admin()["user"],
                       extra_contexts=[("second", {"token": token}, accounts)])
    first = await load_credentials(str(path))
    assert "context e2e" in first.source
    assert await _whoami(first) != f"system:serviceaccount:{accounts}:a"
    second = await load_credentials(str(path), context="second")
    assert "context second" in second.source
    assert await _whoami(second) == f"system:serviceaccount:{accounts}:a"
    with pytest.raises(CredentialsError, match="nope"):
        await load_credentials(str(path), context="nope")


async def test_file_paths_relative_to_the_kubeconfig(tmp_path):
    admin = _admin()
    folder = tmp_path / "certs"
    folder.mkdir()
    for key, name in (("certificate-authority-data", "ca.crt"), ("client-certificate-data", "client.crt"),
                      ("client-key-data", "client.key")):
        body = admin["cluster"] if key.startswith("certificate-authority") else admin["user"]
        (folder / name).write_bytes(base64.b64decode(body[key]))
    cluster = {k: v for k, v in admin["cluster"].items() if k != "certificate-authority-data"}
    user = {"client-certificate": "certs/client.crt", "client-key": "certs/client.key"}
    path = _kubeconfig(tmp_path / "config", user, cluster={**cluster, "certificate-authority": "certs/ca.crt"})
    elsewhere = os.getcwd()
    os.chdir("/")
    try:
        assert await _whoami(await load_credentials(str(path)))
    finally:
        os.chdir(elsewhere)


async def test_token_file_that_rotates(accounts, tmp_path):
    token = tmp_path / "token"
    token.write_text(_token(accounts, "a"))
    creds = await load_credentials(str(_kubeconfig(tmp_path / "config", {"tokenFile": str(token)})))
    assert await _whoami(creds) == f"system:serviceaccount:{accounts}:a"
    (tmp_path / "token.new").write_text(_token(accounts, "b"))
    os.replace(tmp_path / "token.new", token)  # as the kubelet swaps a projected token
    time.sleep(1.1)  # the file is looked at again at most once a second
    assert await _whoami(creds) == f"system:serviceaccount:{accounts}:b"


def _other_ca() -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-this-cluster")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return base64.b64encode(cert.public_bytes(serialization.Encoding.PEM)).decode()


async def test_insecure_skip_tls_verify_and_an_unknown_ca(accounts, tmp_path):
    user = {"token": _token(accounts, "a")}
    server = _admin()["cluster"]["server"]
    unknown = _kubeconfig(tmp_path / "unknown", user, cluster={"server": server,
                                                              "certificate-authority-data": _other_ca()})
    with pytest.raises(TransientApiError, match=r"(?i)certificate"):
        await _whoami(await load_credentials(str(unknown)))
    insecure = _kubeconfig(tmp_path / "insecure", user, cluster={"server": server, "insecure-skip-tls-verify": True})
    assert await _whoami(await load_credentials(str(insecure))) == f"system:serviceaccount:{accounts}:a"
