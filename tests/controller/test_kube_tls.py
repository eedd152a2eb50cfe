"""The operator's API client over TLS: CA from data or a file, client certificates from data, tokens."""

from __future__ import annotations

import datetime
import ipaddress
import ssl

import pytest
from aiohttp import web

pytest.importorskip("cryptography")
import kopf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from turnout.controller.kube import KubeClient, PermanentApiError


def _cert(subject: str, issuer_key, issuer_name, key, *, ca: bool, ip: str | None = None):
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
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                        critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _pem(obj) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture
async def tls_server(tmp_path, free_port):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", None, None, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert("127.0.0.1", ca_key, ca.subject, server_key, ca=False, ip="127.0.0.1")
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert("turnout", ca_key, ca.subject, client_key, ca=False)
    (tmp_path / "ca.pem").write_bytes(_pem(ca))
    (tmp_path / "server.pem").write_bytes(_pem(server) + _pem(server_key))

    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        seen.append({"auth": request.headers.get("Authorization", ""), "client": str(bool(peer))})
        if request.path.endswith("/missing/status"):
            return web.json_response({"kind": "Status", "reason": "NotFound", "message": "gone"}, status=404)
        return web.json_response({"metadata": {"name": "ok"}})

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca.pem"))
    ctx.load_cert_chain(str(tmp_path / "server.pem"))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", free_port, ssl_context=ctx).start()
    yield {"url": f"https://127.0.0.1:{free_port}", "ca": _pem(ca), "ca_path": str(tmp_path / "ca.pem"),
           "cert": _pem(client), "key": _pem(client_key), "seen": seen}
    await runner.cleanup()


async def test_client_certificate_from_data_and_ca_from_data(tls_server):
    info = kopf.ConnectionInfo(server=tls_server["url"], ca_data=tls_server["ca"],
                               certificate_data=tls_server["cert"], private_key_data=tls_server["key"])
    client = KubeClient(info)
    try:
        event = await client.create_event("models", {"metadata": {"generateName": "x."}})
        assert event["metadata"]["name"] == "ok"
        with pytest.raises(PermanentApiError):
            await client.patch_status("turnout.dev/v1alpha1", "modeldeployments", "models", "missing", {})
    finally:
        await client.close()
    assert tls_server["seen"][0] == {"auth": "", "client": "True"}


async def test_token_and_ca_file_as_in_a_pod(tls_server):
    client = KubeClient(kopf.ConnectionInfo(server=tls_server["url"], ca_path=tls_server["ca_path"], token="sa-token"))
    try:
        await client.create_event("models", {})
    finally:
        await client.close()
    assert tls_server["seen"][0] == {"auth": "Bearer sa-token", "client": "False"}


async def test_an_unknown_ca_is_refused(tls_server):
    from turnout.controller.kube import TransientApiError

    client = KubeClient(kopf.ConnectionInfo(server=tls_server["url"], token="t"))
    try:
        with pytest.raises(TransientApiError, match=r"(?i)certificate"):
            await client.create_event("models", {})
    finally:
        await client.close()
    assert tls_server["seen"] == []
