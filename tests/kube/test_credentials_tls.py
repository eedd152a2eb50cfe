"""Every credential form a kubeconfig or a pod gives, against a real TLS server with a generated CA.

No mocks of ``ssl``: the server is aiohttp over TLS on 127.0.0.1 and checks client certificates and
bearer tokens; the client side is :func:`turnout.kube.load_credentials` (kubernetes_asyncio's loaders)
with :class:`turnout.kube.KubeClient`, and kopf's session from :func:`turnout.kube.session.aiohttp_session`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import os
import ssl
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from kubeconfigs import kubeconfig, write_kubeconfig

pytest.importorskip("cryptography")
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from turnout.kube import CredentialsError, KubeClient, PermanentApiError, TransientApiError, load_credentials
from turnout.kube.session import aiohttp_session

STATUS = "/apis/turnout.dev/v1alpha1/namespaces/models/modeldeployments/m/status"


def _cert(subject: str, issuer_key: Any, issuer_name: Any, key: Any, *, ca: bool,
          ip: str | None = None, dns: str | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    names: list[x509.GeneralName] = []
    if ip:
        names.append(x509.IPAddress(ipaddress.ip_address(ip)))
    if dns:
        names.append(x509.DNSName(dns))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _pem(obj: Any) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Api:
    """A TLS API server: answers any path, 401 for tokens in ``revoked``, records who called."""

    def __init__(self, tmp: Path, *, ip: str | None = "127.0.0.1", dns: str | None = None) -> None:
        self.ca_key = ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = _cert("test-ca", None, None, ca_key, ca=True)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = _cert("apiserver", ca_key, self.ca.subject, server_key, ca=False, ip=ip, dns=dns)
        client_key = ec.generate_private_key(ec.SECP256R1())
        client = _cert("turnout-operator", ca_key, self.ca.subject, client_key, ca=False)
        self.ca_pem, self.cert_pem, self.key_pem = _pem(self.ca), _pem(client), _pem(client_key)
        self.files = {name: tmp / f"{name}.pem" for name in ("ca", "cert", "key", "server")}
        self.files["ca"].write_bytes(self.ca_pem)
        self.files["cert"].write_bytes(self.cert_pem)
        self.files["key"].write_bytes(self.key_pem)
        self.files["server"].write_bytes(_pem(server) + _pem(server_key))
        self.seen: list[dict[str, str]] = []
        self.revoked: set[str] = set()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, port: int) -> Api:
        async def handle(request: web.Request) -> web.Response:
            peer = request.transport.get_extra_info("peercert") if request.transport else None
            cn = ""
            for rdn in (peer or {}).get("subject", ()):
                for key, value in rdn:
                    cn = value if key == "commonName" else cn
            auth = request.headers.get("Authorization", "")
            self.seen.append({"auth": auth, "client": cn, "path": request.path})
            if auth.removeprefix("Bearer ") in self.revoked:
                return web.json_response({"kind": "Status", "reason": "Unauthorized", "message": "expired"},
                                         status=401)
            if request.path.endswith("/missing/status"):
                return web.json_response({"kind": "Status", "reason": "NotFound", "message": "gone"}, status=404)
            return web.json_response({"metadata": {"name": "ok"}})

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.files["ca"]))
        ctx.load_cert_chain(str(self.files["server"]))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port, ssl_context=ctx).start()
        self.url = f"https://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def api(tmp_path: Path, free_port: int):
    server = await Api(tmp_path).start(free_port)
    yield server
    await server.stop()


async def _call(creds: Any, path: str = STATUS) -> dict[str, Any]:
    async with KubeClient(creds) as client:
        return await client.request("GET", path)


async def test_embedded_base64_data_as_kind_and_eks_write_it(api: Api, tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", api.url,
                            cluster={"certificate-authority-data": _b64(api.ca_pem)},
                            user={"client-certificate-data": _b64(api.cert_pem),
                                  "client-key-data": _b64(api.key_pem)})
    creds = await load_credentials(str(path))
    assert (await _call(creds))["metadata"]["name"] == "ok"
    async with KubeClient(creds) as client:
        with pytest.raises(PermanentApiError) as missing:
            await client.patch_status("turnout.dev/v1alpha1", "modeldeployments", "models", "missing", {})
    assert missing.value.status == 404 and missing.value.reason == "NotFound"
    assert api.seen[0] == {"auth": "", "client": "turnout-operator", "path": STATUS}


async def test_file_paths_relative_to_the_kubeconfig(api: Api, tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", api.url, cluster={"certificate-authority": "ca.pem"},
                            user={"client-certificate": "cert.pem", "client-key": str(api.files["key"])})
    await _call(await load_credentials(str(path)))
    assert api.seen[0]["client"] == "turnout-operator"


async def test_a_renewed_client_certificate_file_is_used_without_a_restart(api: Api, tmp_path: Path) -> None:
    """As a node's rotated ``*-current.pem`` (certificate and key in one file, behind a symlink)."""
    first = tmp_path / "client-1.pem"
    first.write_bytes(api.cert_pem + api.key_pem)
    current = tmp_path / "client-current.pem"
    current.symlink_to(first)
    path = write_kubeconfig(tmp_path / "config", api.url, cluster={"certificate-authority": str(api.files["ca"])},
                            user={"client-certificate": str(current), "client-key": str(current)})
    creds = await load_credentials(str(path))
    async with KubeClient(creds) as client:
        await client.request("GET", STATUS)
        renewed_key = ec.generate_private_key(ec.SECP256R1())
        renewed = _cert("turnout-renewed", api.ca_key, api.ca.subject, renewed_key, ca=False)
        second = tmp_path / "client-2.pem"
        second.write_bytes(_pem(renewed) + _pem(renewed_key))
        link = tmp_path / "client-current.pem.new"
        link.symlink_to(second)
        os.replace(link, current)
        await asyncio.sleep(1.1)  # the files are checked at most once a second
        await client.request("GET", STATUS)
        assert [s["client"] for s in api.seen] == ["turnout-operator", "turnout-renewed"]
        # A half-written renewal is not loaded: the pool that works stays.
        broken = tmp_path / "client-3.pem"
        broken.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
        link.symlink_to(broken)
        os.replace(link, current)
        await asyncio.sleep(1.1)
        await client.request("GET", STATUS)
    assert api.seen[-1]["client"] == "turnout-renewed"


async def test_bearer_token_and_token_file_that_rotates(api: Api, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    path = write_kubeconfig(tmp_path / "config", api.url, cluster={"certificate-authority": str(api.files["ca"])},
                            user={"tokenFile": "token"})
    creds = await load_credentials(str(path))
    await _call(creds)
    new = tmp_path / "token.new"
    new.write_text("second-token")
    os.replace(new, token)  # as the kubelet swaps a projected token: a new file under the same name
    api.revoked.add("first-token")
    await _call(creds)  # re-read on change (or at the latest on the 401)
    assert api.seen[0]["auth"] == "Bearer first-token"
    assert api.seen[-1]["auth"] == "Bearer second-token"

    plain = write_kubeconfig(tmp_path / "plain", api.url, cluster={"certificate-authority": str(api.files["ca"])},
                             user={"token": "static-token"})
    await _call(await load_credentials(str(plain)))
    assert api.seen[-1]["auth"] == "Bearer static-token"


def _exec_plugin(tmp_path: Path, *, expires_in: int) -> tuple[Path, Path]:
    """An exec credential plugin (as aws eks get-token / gke-gcloud-auth-plugin): a token per run."""
    runs = tmp_path / "runs"
    script = tmp_path / "plugin.py"
    script.write_text(
        "import datetime, json, pathlib, sys\n"
        f"runs = pathlib.Path({str(runs)!r})\n"
        "n = int(runs.read_text()) + 1 if runs.exists() else 1\n"
        "runs.write_text(str(n))\n"
        "exp = datetime.datetime.now(datetime.timezone.utc) + "
        f"datetime.timedelta(seconds={expires_in})\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1beta1', 'kind': 'ExecCredential',\n"
        "  'status': {'token': f'exec-token-{n}', 'expirationTimestamp': exp.strftime('%Y-%m-%dT%H:%M:%SZ')}}))\n"
    )
    return script, runs


async def test_exec_plugin_runs_again_when_its_token_expires_or_is_refused(api: Api, tmp_path: Path) -> None:
    script, runs = _exec_plugin(tmp_path, expires_in=3600)
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": sys.executable,
                     "args": [str(script)], "interactiveMode": "Never"}}
    path = write_kubeconfig(tmp_path / "config", api.url,
                            cluster={"certificate-authority-data": _b64(api.ca_pem)}, user=user)
    creds = await load_credentials(str(path))
    await _call(creds)
    await _call(creds)
    assert runs.read_text() == "1", "a token that has not expired is reused"
    api.revoked.add("exec-token-1")
    await _call(creds)
    assert [s["auth"] for s in api.seen] == ["Bearer exec-token-1", "Bearer exec-token-1",
                                             "Bearer exec-token-1", "Bearer exec-token-2"]

    (tmp_path / "soon").mkdir()
    script, runs = _exec_plugin(tmp_path / "soon", expires_in=5)
    short = write_kubeconfig(tmp_path / "short", api.url, cluster={"certificate-authority-data": _b64(api.ca_pem)},
                             user={"exec": {**user["exec"], "args": [str(script)]}})
    creds = await load_credentials(str(short))
    await _call(creds)
    await _call(creds)
    assert runs.read_text() == "3", "a token within the renewal margin of its expiry is renewed before each use"


async def test_in_cluster_service_account_token_is_read_again_when_it_rotates(
        api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "ca.crt").write_bytes(api.ca_pem)
    (sa / "token").write_text("sa-token-1")
    (sa / "namespace").write_text("turnout-system")
    host, port = api.url.removeprefix("https://").split(":")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    creds = await load_credentials(service_account=sa)
    assert creds.source == "in-cluster service account" and creds.namespace == "turnout-system"
    await _call(creds)
    (sa / "token.tmp").write_text("sa-token-2")
    os.replace(sa / "token.tmp", sa / "token")
    api.revoked.add("sa-token-1")  # bound tokens expire: the old one is refused from now on
    await _call(creds)
    assert api.seen[0]["auth"] == "Bearer sa-token-1" and api.seen[-1]["auth"] == "Bearer sa-token-2"


async def test_insecure_skip_tls_verify_and_an_unknown_ca(api: Api, tmp_path: Path) -> None:
    unknown = write_kubeconfig(tmp_path / "unknown", api.url, user={"token": "t"})
    with pytest.raises(TransientApiError, match=r"(?i)certificate"):
        await _call(await load_credentials(str(unknown)))
    assert api.seen == []
    insecure = write_kubeconfig(tmp_path / "insecure", api.url, cluster={"insecure-skip-tls-verify": True},
                                user={"token": "t"})
    await _call(await load_credentials(str(insecure)))
    assert api.seen[0]["auth"] == "Bearer t"


async def test_tls_server_name_verifies_a_certificate_issued_for_another_name(tmp_path: Path, free_port: int) -> None:
    api = await Api(tmp_path, ip=None, dns="kube-apiserver.internal").start(free_port)
    try:
        cluster = {"certificate-authority-data": _b64(api.ca_pem)}
        plain = write_kubeconfig(tmp_path / "plain", api.url, cluster=cluster, user={"token": "t"})
        with pytest.raises(TransientApiError, match=r"(?i)certificate|hostname"):
            await _call(await load_credentials(str(plain)))
        named = write_kubeconfig(tmp_path / "named", api.url, user={"token": "t"},
                                 cluster={**cluster, "tls-server-name": "kube-apiserver.internal"})
        creds = await load_credentials(str(named))
        await _call(creds)
        async with aiohttp_session(creds) as session, session.get(api.url + "/api") as response:
            assert response.status == 200  # kopf's session verifies the same name
        assert [s["auth"] for s in api.seen] == ["Bearer t", "Bearer t"]
    finally:
        await api.stop()


async def test_current_context_and_a_named_context(api: Api, tmp_path: Path) -> None:
    doc = kubeconfig(api.url, cluster={"certificate-authority-data": _b64(api.ca_pem)}, user={"token": "first"},
                     context="first")
    doc["users"].append({"name": "other", "user": {"token": "second"}})
    doc["contexts"].append({"name": "second", "context": {"cluster": "c", "user": "other", "namespace": "x"}})
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(doc))
    await _call(await load_credentials(str(path)))
    creds = await load_credentials(str(path), context="second")
    assert "context second" in creds.source
    await _call(creds)
    assert [s["auth"] for s in api.seen] == ["Bearer first", "Bearer second"]
    with pytest.raises(CredentialsError, match="nope"):
        await load_credentials(str(path), context="nope")


async def test_kopf_session_carries_the_same_identity_and_renews_on_401(api: Api, tmp_path: Path) -> None:
    script, runs = _exec_plugin(tmp_path, expires_in=3600)
    path = write_kubeconfig(
        tmp_path / "config", api.url,
        cluster={"certificate-authority-data": _b64(api.ca_pem)},
        user={"client-certificate-data": _b64(api.cert_pem), "client-key-data": _b64(api.key_pem),
              "exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": sys.executable,
                       "args": [str(script)]}},
    )
    creds = await load_credentials(str(path))
    async with aiohttp_session(creds) as session:
        async with session.get(api.url + "/api/v1/pods") as response:
            assert response.status == 200
        api.revoked.add("exec-token-1")
        async with session.get(api.url + "/api/v1/pods") as response:
            assert response.status == 200
            assert json.loads(await response.text())["metadata"]["name"] == "ok"
    assert [(s["auth"], s["client"]) for s in api.seen] == [
        ("Bearer exec-token-1", "turnout-operator"), ("Bearer exec-token-1", "turnout-operator"),
        ("Bearer exec-token-2", "turnout-operator")]
    assert runs.read_text() == "2"


async def test_no_credentials_say_what_was_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(CredentialsError, match=r"no kubeconfig at .*\.kube/config"):
        await load_credentials()
    with pytest.raises(CredentialsError, match=r"missing\.yaml does not exist"):
        await load_credentials(str(tmp_path / "missing.yaml"))


def test_the_environment_proxy_is_used_as_client_go_uses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from turnout.kube.credentials import environment_proxy

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", "internal.test")
    assert environment_proxy("https://api.example.test:6443") == "http://proxy.test:3128"
    assert environment_proxy("https://kube.internal.test:6443") is None
    assert environment_proxy("https://127.0.0.1:6443") is None and environment_proxy("https://localhost") is None
