"""The agent emulator over TLS, with node identity: what the API server and kube-controller-manager do for a node.

For tests only: a stand-in for parts of the control plane this machine cannot run in the unit tests
(e2e/test_agent_e2e.py runs the real ones). Following their documented contracts:

- **Authentication** (API server): a client certificate signed by the cluster CA is user ``CN`` in
  groups ``O``; a bearer token ``<id>.<secret>`` matching a ``bootstrap.kubernetes.io/token``
  Secret in ``kube-system`` (usage-bootstrap-authentication, not expired) is
  ``system:bootstrap:<id>`` in ``system:bootstrappers`` plus its ``auth-extra-groups`` (a wrong or
  expired one is 401); any other token is an admin. Secrets' ``stringData`` is stored as ``data``.
- **CertificateSigningRequests** (``certificates.k8s.io/v1``, cluster-scoped): the server fills
  ``spec.username`` and ``spec.groups`` from the requester.
- **csrapproving + csrsigning** (kube-controller-manager): a CSR for the
  ``kubernetes.io/kube-apiserver-client-kubelet`` signer with ``CN=system:node:<n>, O=system:nodes``
  and client usages is approved when its requester is that node (``selfnodeclient``) or is in a
  group bound to ``nodeclient`` (:attr:`ClusterFake.nodeclient_groups`); others stay pending. An
  approved CSR is signed by the test CA for :attr:`ClusterFake.signing_seconds`
  (``--cluster-signing-duration``).
- **Node authorizer + NodeRestriction**, for users ``system:node:<n>``: Secrets and ConfigMaps only
  when a pod bound to the node references them; Node writes only to its own Node, which may not
  change its taints nor set ``kubernetes.io``/``k8s.io`` labels outside the kubelet's set; pod
  status and pod deletion only for pods bound to it; Leases only its own.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import ssl
import tempfile
from pathlib import Path
from typing import Any

import attrs
import fakekube
from agentfake import CONFIGMAPS, LEASES, NODES, PODS, SECRETS, AgentFake
from aiohttp.test_utils import RawTestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fakekube import KubeApiError
from kmock._internal import rendering

CSRS = ("certificates.k8s.io", "v1", "certificatesigningrequests")
fakekube.RESOURCES.setdefault(CSRS, ("CertificateSigningRequest", False, True))
SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
#: Labels (or prefixes) NodeRestriction lets a node set in kubernetes.io / k8s.io.
KUBELET_LABELS = {"kubernetes.io/hostname", "kubernetes.io/instance-type", "kubernetes.io/os", "kubernetes.io/arch",
                  "beta.kubernetes.io/instance-type", "beta.kubernetes.io/os", "beta.kubernetes.io/arch",
                  "failure-domain.beta.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/region",
                  "topology.kubernetes.io/zone", "topology.kubernetes.io/region",
                  "node.kubernetes.io/instance-type"}
KUBELET_PREFIXES = ("kubelet.kubernetes.io/", "node.kubernetes.io/")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(obj: Any) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class TestCA:
    """The cluster CA: signs the server's certificate and the nodes' client certificates."""

    def __init__(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = _name("test-cluster-ca")
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = _pem(self.cert)
        self.folder = Path(tempfile.mkdtemp(prefix="turnout-test-ca-"))
        (self.folder / "ca.pem").write_bytes(self.pem)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = self._build(_name("kube-apiserver"), server_key.public_key(), datetime.timedelta(days=1),
                             x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                             san=x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                              x509.DNSName("localhost")]))
        (self.folder / "server.pem").write_bytes(_pem(server) + _pem(server_key))

    def _build(self, subject: x509.Name, public_key: Any, lifetime: datetime.timedelta, usage: Any,
               san: Any = None) -> x509.Certificate:
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(now + lifetime)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(usage, critical=False))
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def sign(self, csr: x509.CertificateSigningRequest, seconds: float) -> bytes:
        usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
        return _pem(self._build(csr.subject, csr.public_key(), datetime.timedelta(seconds=seconds), usage))

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.folder / "ca.pem"))
        ctx.load_cert_chain(str(self.folder / "server.pem"))
        ctx.verify_mode = ssl.CERT_OPTIONAL  # token users send no certificate
        return ctx


class TLSTestServer(RawTestServer):
    """aiohttp's raw test server on TLS."""

    def __init__(self, handler: Any, *, ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._tls = ssl_context

    async def start_server(self, loop: Any = None, **kwargs: Any) -> None:
        await super().start_server(loop=loop, ssl=self._tls, **kwargs)


@attrs.define(frozen=True)
class User:
    name: str
    groups: tuple[str, ...]
    serial: int | None = None  # of the client certificate

    @property
    def node(self) -> str | None:
        return self.name.removeprefix("system:node:") if self.name.startswith("system:node:") else None


@attrs.define(kw_only=True)
class ClusterFake(AgentFake):
    """See the module docstring."""

    ca: TestCA = attrs.field(factory=TestCA)
    signing_seconds: float = 3600.0
    nodeclient_groups: set[str] = attrs.field(factory=lambda: {"system:bootstrappers:turnout"})
    approve: bool = True  # False: as a cluster whose csrapproving controller does not run
    #: (method, path, user) of every API request, in order.
    calls: list[tuple[str, str, User]] = attrs.field(factory=list, init=False)
    #: (method, path, message) of every request the node rules refused.
    refused: list[tuple[str, str, str]] = attrs.field(factory=list, init=False)
    _controllers: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)

    # ----- authentication ---------------------------------------------------------------------

    def authenticate(self, request: rendering.Request) -> User:
        raw = request._raw_request  # kmock keeps the aiohttp request (its TLS transport) here
        tls = raw.transport.get_extra_info("ssl_object") if raw.transport is not None else None
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        if der:
            cert = x509.load_der_x509_certificate(der)
            cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
            return User(str(cn[0].value) if cn else "", (*(str(o.value) for o in orgs), "system:authenticated"),
                        cert.serial_number)
        token = raw.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        token_id, dot, token_secret = token.partition(".")
        if dot and len(token_id) == 6 and len(token_secret) == 16:
            secret = self.get(SECRETS, "kube-system", f"bootstrap-token-{token_id}")
            data = {k: base64.b64decode(v).decode() for k, v in ((secret or {}).get("data") or {}).items()}
            expiration = data.get("expiration")
            expired = expiration and datetime.datetime.fromisoformat(expiration.replace("Z", "+00:00")) <= \
                datetime.datetime.now(datetime.timezone.utc)
            if (secret is None or secret.get("type") != "bootstrap.kubernetes.io/token" or expired
                    or data.get("token-secret") != token_secret
                    or data.get("usage-bootstrap-authentication") != "true"):
                raise KubeApiError(status=401, reason="Unauthorized", message="Unauthorized")
            extra = tuple(g for g in data.get("auth-extra-groups", "").split(",") if g)
            return User(f"system:bootstrap:{token_id}", ("system:bootstrappers", *extra, "system:authenticated"))
        return User("admin", ("system:masters", "system:authenticated"))

    async def _handle(self, request: rendering.Request) -> Any:
        user = self.authenticate(request)
        self.calls.append((str(request.method.value).upper(), request.url.path, user))
        if request.resource is not None and user.node is not None:
            try:
                self._node_authorize(request, user.node)
            except KubeApiError as exc:
                self.refused.append((self.calls[-1][0], self.calls[-1][1], str(exc)))
                raise
        return await super()._handle(request)

    # ----- Node authorizer and NodeRestriction ---------------------------------------------------

    def _forbid(self, node: str, message: str) -> KubeApiError:
        return KubeApiError(status=403, reason="Forbidden", message=f'User "system:node:{node}" cannot: {message}')

    def _node_authorize(self, request: rendering.Request, node: str) -> None:
        res = (request.resource.group or "", request.resource.version or "", request.resource.plural or "")
        method = str(request.method.value).upper()
        if res in (SECRETS, CONFIGMAPS):
            if method != "GET" or not request.name or not self._referenced(node, res, request.namespace, request.name):
                raise self._forbid(node, f"no relationship found between node '{node}' and this object")
        elif res == NODES and method in ("PATCH", "PUT", "DELETE"):
            if request.name != node:
                raise self._forbid(node, f"node {node!r} is not allowed to modify node {request.name!r}")
            body = fakekube._json_body(request) if request.text and method != "DELETE" else {}
            if request.subresource is None and "taints" in (body.get("spec") or {}):
                current = self.get(NODES, None, node) or {}
                if (current.get("spec") or {}).get("taints") != body["spec"]["taints"]:
                    raise self._forbid(node, f"node {node!r} is not allowed to modify taints")
            self._check_labels(node, (body.get("metadata") or {}).get("labels") or {})
        elif res == NODES and method == "POST":
            body = fakekube._json_body(request)
            if (body.get("metadata") or {}).get("name") != node:
                raise self._forbid(node, f"node {node!r} may not create node {body['metadata'].get('name')!r}")
            self._check_labels(node, (body.get("metadata") or {}).get("labels") or {})
        elif res == PODS and (method == "DELETE" or (method == "PATCH" and request.subresource == "status")):
            pod = self.get(PODS, request.namespace, request.name or "")
            if pod is not None and (pod.get("spec") or {}).get("nodeName") != node:
                raise self._forbid(node, f"node {node!r} can only modify pods bound to it")
        elif (res == LEASES and method != "GET") or (res == LEASES and request.name not in (None, node)):
            name = request.name or (fakekube._json_body(request).get("metadata") or {}).get("name")
            if request.namespace != "kube-node-lease" or name != node:
                raise self._forbid(node, f"node {node!r} can only access its own lease")

    def _check_labels(self, node: str, labels: dict[str, Any]) -> None:
        for key in labels:
            domain = key.split("/", 1)[0] if "/" in key else ""
            if not (domain == "kubernetes.io" or domain.endswith((".kubernetes.io", ".k8s.io")) or domain == "k8s.io"):
                continue
            if key not in KUBELET_LABELS and not key.startswith(KUBELET_PREFIXES):
                raise self._forbid(node, f"is not allowed to modify labels: {key}")

    def _referenced(self, node: str, res: Any, namespace: str | None, name: str) -> bool:
        kind = "secret" if res == SECRETS else "configMap"
        for pod in self.objects(PODS, namespace):
            if (pod.get("spec") or {}).get("nodeName") != node:
                continue
            spec = pod["spec"]
            for volume in spec.get("volumes") or []:
                ref = volume.get(kind) or {}
                if ref.get("secretName" if kind == "secret" else "name") == name:
                    return True
            for container in spec.get("containers") or []:
                for env in container.get("env") or []:
                    if ((env.get("valueFrom") or {}).get(f"{kind}KeyRef") or {}).get("name") == name:
                        return True
                for source in container.get("envFrom") or []:
                    if (source.get(f"{kind}Ref") or {}).get("name") == name:
                        return True
        return False

    # ----- objects ---------------------------------------------------------------------------

    async def put_object(self, res: Any, obj: dict[str, Any]) -> dict[str, Any]:
        if res == SECRETS and obj.get("stringData"):
            obj = dict(obj)
            data = dict(obj.get("data") or {})
            data.update({k: base64.b64encode(str(v).encode()).decode() for k, v in obj.pop("stringData").items()})
            obj["data"] = data
        return await super().put_object(res, obj)

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        if self._res(request) != CSRS:
            return await super()._serve_create(request)
        user = self.authenticate(request)
        body = fakekube._json_body(request)
        spec = dict(body.get("spec") or {})
        try:
            x509.load_pem_x509_csr(base64.b64decode(spec.get("request", "")))
        except ValueError as exc:
            raise KubeApiError(status=422, reason="Invalid", message=f"spec.request: Invalid value: {exc}") from None
        if not spec.get("signerName") or not spec.get("usages"):
            raise KubeApiError(status=422, reason="Invalid", message="spec.signerName and spec.usages are required")
        spec.update(username=user.name, groups=list(user.groups))
        created = await self.put_object(CSRS, {**body, "spec": spec, "status": {}})
        task = asyncio.create_task(self._approve_and_sign(created["metadata"]["name"]))
        self._controllers.add(task)
        task.add_done_callback(self._controllers.discard)
        return created

    async def _approve_and_sign(self, name: str) -> None:
        """kube-controller-manager's csrapproving, then csrsigning."""
        await asyncio.sleep(0.05)
        csr_obj = self.get(CSRS, None, name)
        if csr_obj is None or not self.approve:
            return
        spec = csr_obj["spec"]
        csr = x509.load_pem_x509_csr(base64.b64decode(spec["request"]))
        cn = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        orgs = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        node_client = (spec.get("signerName") == SIGNER and len(cn) == 1 and cn[0].startswith("system:node:")
                       and orgs == ["system:nodes"]
                       and set(spec.get("usages") or []) <= {"digital signature", "key encipherment", "client auth"}
                       and "client auth" in spec["usages"])
        if not node_client:
            return
        if spec.get("username") == cn[0]:
            reason = "AutoApproved self node client renewal"
        elif set(spec.get("groups") or []) & self.nodeclient_groups:
            reason = "AutoApproved node client certificate"
        else:
            return
        await self.approve_csr(name, reason)

    async def approve_csr(self, name: str, reason: str = "AdminApproved") -> None:
        def approve(obj: dict[str, Any]) -> dict[str, Any]:
            obj.setdefault("status", {})["conditions"] = [
                {"type": "Approved", "status": "True", "reason": reason, "message": reason,
                 "lastUpdateTime": fakekube._now()}]
            return obj

        obj = await self.modify(CSRS, (None, name), approve, status_only=True)
        csr = x509.load_pem_x509_csr(base64.b64decode(obj["spec"]["request"]))
        cert = self.ca.sign(csr, self.signing_seconds)

        def sign(obj: dict[str, Any]) -> dict[str, Any]:
            obj["status"]["certificate"] = base64.b64encode(cert).decode()
            return obj

        await self.modify(CSRS, (None, name), sign, status_only=True)

    async def deny_csr(self, name: str, message: str) -> None:
        def deny(obj: dict[str, Any]) -> dict[str, Any]:
            obj.setdefault("status", {})["conditions"] = [
                {"type": "Denied", "status": "True", "reason": "AdminDenied", "message": message}]
            return obj

        await self.modify(CSRS, (None, name), deny, status_only=True)

    def users(self, predicate: Any = None) -> list[User]:
        return [user for method, path, user in self.calls if predicate is None or predicate(method, path)]
