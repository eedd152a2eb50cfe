"""The agent's node identity, the kubelet's way: TLS bootstrapping, then certificate renewal.

With a *bootstrap kubeconfig* (its user a bootstrap token, from ``turnout agent join-token`` or the
chart) and no valid node credential yet, the agent makes an EC P-256 key, submits a
``certificates.k8s.io/v1`` CertificateSigningRequest for ``CN=system:node:<name>, O=system:nodes``
to the ``kubernetes.io/kube-apiserver-client-kubelet`` signer, and waits until the cluster's controller manager
approves (the ``nodeclient`` auto-approval bound to the token's group) and signs it. Certificate and
key live in one file, mode 0600, under ``<state-dir>/pki/`` behind the symlink
``turnout-agent-client-current.pem`` (as kubelet's ``kubelet-client-current.pem``); the node
kubeconfig written to ``--kubeconfig`` names that file, so later starts need no token.

:func:`renew_forever` renews at a jittered 70-90 % of the certificate's lifetime with a CSR sent as
the node itself (the ``selfnodeclient`` auto-approval for group ``system:nodes``);
:class:`turnout.kube.KubeClient` notices the changed file and reconnects with it, no restart.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from turnout.aio import wait_for
from turnout.kube import ApiError, Credentials, CredentialsError, KubeClient, TransientApiError, load_credentials

log = logging.getLogger("turnout.agent.bootstrap")

CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
USAGES = ("digital signature", "client auth")
NODES_GROUP = "system:nodes"
CURRENT = "turnout-agent-client-current.pem"
#: What a CSR that is neither approved nor denied after the timeout most likely lacks.
PENDING_HINT = (
    "is the controller manager's csrapproving controller running (with csrsigning), and are the bootstrapper "
    "ClusterRoleBindings there (system:certificates.k8s.io:certificatesigningrequests:nodeclient for the "
    "bootstrap token's group, ...:selfnodeclient for system:nodes; the chart's hostAgents.names renders them)? "
    "An admin can also approve it: kubectl certificate approve {name}")


class BootstrapError(RuntimeError):
    """The node could not get (or renew) its certificate; the message says what to do."""


def node_user(node_name: str) -> str:
    return f"system:node:{node_name}"


def new_request(node_name: str) -> tuple[bytes, bytes]:
    """A fresh P-256 key (PKCS#8 PEM) and a PEM CSR for the node's identity."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, NODES_GROUP),
                         x509.NameAttribute(NameOID.COMMON_NAME, node_user(node_name))])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def csr_object(csr_pem: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(csr_pem).hexdigest()[:16]
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": f"node-csr-{digest}-"},
        "spec": {"request": base64.b64encode(csr_pem).decode(), "signerName": SIGNER, "usages": list(USAGES)},
    }


def issued(csr: dict[str, Any]) -> bytes | None:
    """The signed certificate (PEM), None while pending; :class:`BootstrapError` when denied or failed."""
    name = csr.get("metadata", {}).get("name", "")
    status = csr.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") in ("Denied", "Failed") and cond.get("status", "True") == "True":
            raise BootstrapError(f"certificate signing request {name} was {cond['type'].lower()}: "
                                 f"{cond.get('reason', '')}: {cond.get('message', '')}".rstrip(": "))
    approved = any(c.get("type") == "Approved" and c.get("status", "True") == "True"
                   for c in status.get("conditions") or [])
    if approved and status.get("certificate"):
        return base64.b64decode(status["certificate"])
    return None


async def request_certificate(kube: KubeClient, node_name: str, *, timeout: float) -> tuple[bytes, bytes]:
    """Submit a CSR with ``kube``'s identity and wait for its certificate: (certificate PEM, key PEM)."""
    key_pem, csr_pem = new_request(node_name)
    created = await kube.create(CSR_PATH, csr_object(csr_pem))
    name = created["metadata"]["name"]
    log.info("submitted certificate signing request %s for %s", name, node_user(node_name))
    try:
        cert = await wait_for(_wait(kube, name), timeout)
    except asyncio.TimeoutError:
        raise BootstrapError(f"certificate signing request {name} is still pending after {timeout:.0f}s: "
                             + PENDING_HINT.format(name=name)) from None
    return cert, key_pem


async def _wait(kube: KubeClient, name: str) -> bytes:
    """List, then watch, the one CSR until it is signed (re-listing when the watch ends)."""
    selector = {"fieldSelector": f"metadata.name={name}"}
    while True:
        try:
            listing = await kube.request("GET", CSR_PATH, params=selector)
            for item in listing.get("items") or []:
                cert = issued(item)
                if cert is not None:
                    return cert
            rv = listing.get("metadata", {}).get("resourceVersion", "")
            async for event in kube.watch(CSR_PATH, {**selector, "resourceVersion": rv}, timeout_seconds=60):
                if event.get("type") in ("ADDED", "MODIFIED"):
                    cert = issued(event["object"])
                    if cert is not None:
                        return cert
                elif event.get("type") == "DELETED":
                    raise BootstrapError(f"certificate signing request {name} was deleted before it was signed")
        except TransientApiError as exc:
            log.debug("waiting for %s: %s", name, exc)
            await asyncio.sleep(1.0)


def certificate(path: Path) -> x509.Certificate | None:
    """The first certificate in a PEM file, None when missing or unreadable."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def lifetime(cert: x509.Certificate) -> tuple[datetime.datetime, datetime.datetime]:
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def renewal_time(cert: x509.Certificate, rng: random.Random | None = None) -> datetime.datetime:
    """A jittered 70-90 % into the certificate's lifetime, as kubelet renews."""
    start, end = lifetime(cert)
    return start + (end - start) * (rng or random).uniform(0.7, 0.9)


@dataclass(frozen=True)
class NodeIdentity:
    """Where the node's credential lives and how to get it."""

    node_name: str
    kubeconfig: Path  # the node kubeconfig, written here
    bootstrap_kubeconfig: Path
    pki_dir: Path
    csr_timeout: float = 900.0

    @classmethod
    def of(cls, node_name: str, state_dir: str, bootstrap_kubeconfig: str, kubeconfig: str | None = None,
           csr_timeout: float = 900.0) -> NodeIdentity:
        state = Path(state_dir)
        return cls(node_name, Path(kubeconfig) if kubeconfig else state / "kubeconfig", Path(bootstrap_kubeconfig),
                   state / "pki", csr_timeout)

    @property
    def current(self) -> Path:
        return self.pki_dir / CURRENT

    def valid_certificate(self) -> x509.Certificate | None:
        """The node's current certificate when it is ours, for this node, and not expired."""
        cert = certificate(self.current)
        if cert is None:
            return None
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names or names[0].value != node_user(self.node_name):
            return None
        start, end = lifetime(cert)
        now = datetime.datetime.now(datetime.timezone.utc)
        return cert if start <= now < end else None

    async def credentials(self) -> Credentials:
        """The node's credentials: the stored certificate while valid, else a new one through the bootstrap token."""
        if self.kubeconfig.exists() and not self._is_ours(self.kubeconfig):
            raise BootstrapError(f"--kubeconfig {self.kubeconfig} exists and is not a node kubeconfig this agent "
                                 "wrote (no client certificate in its pki folder); with --bootstrap-kubeconfig, "
                                 "--kubeconfig names where the node kubeconfig is written: choose a new path")
        if self.valid_certificate() is None or not self.kubeconfig.exists():
            await self.bootstrap()
        return await load_credentials(str(self.kubeconfig))

    def _is_ours(self, path: Path) -> bool:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            return False
        users = [u.get("user") or {} for u in doc.get("users") or [] if isinstance(u, dict)]
        return any(Path(str(u.get("client-certificate", ""))) == self.current for u in users)

    async def bootstrap(self) -> None:
        """Get a certificate with the bootstrap kubeconfig's token and write the node kubeconfig."""
        if not self.bootstrap_kubeconfig.is_file():
            raise BootstrapError(f"no valid node certificate in {self.pki_dir} and the bootstrap kubeconfig "
                                 f"{self.bootstrap_kubeconfig} does not exist: make one with "
                                 f"turnout agent join-token --node-name {self.node_name} -o FILE")
        try:
            creds = await load_credentials(str(self.bootstrap_kubeconfig))
        except CredentialsError as exc:
            raise BootstrapError(str(exc)) from exc
        log.info("bootstrapping the node identity %s with %s", node_user(self.node_name), self.bootstrap_kubeconfig)
        async with KubeClient(creds, user_agent="turnout-agent-bootstrap") as kube:
            try:
                cert, key = await request_certificate(kube, self.node_name, timeout=self.csr_timeout)
            except ApiError as exc:
                hint = (" (the bootstrap token is expired, deleted or wrong: make a new bootstrap kubeconfig with "
                        "turnout agent join-token)" if exc.status == 401 else
                        " (the token's group has no system:node-bootstrapper binding)" if exc.status == 403 else "")
                raise BootstrapError(f"cannot request the node certificate: {exc}{hint}") from exc
        self.store(cert, key)
        self.write_kubeconfig()

    def store(self, cert_pem: bytes, key_pem: bytes) -> Path:
        """Write certificate and key to a new 0600 file and point the ``-current`` symlink at it."""
        self.pki_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d-%H-%M-%S-%f")
        target = self.pki_dir / f"turnout-agent-client-{stamp}.pem"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(cert_pem.rstrip(b"\n") + b"\n" + key_pem)
        link = self.pki_dir / f".{CURRENT}.{stamp}"
        link.symlink_to(target.name)
        os.replace(link, self.current)
        for old in sorted(self.pki_dir.glob("turnout-agent-client-2*.pem"))[:-2]:  # keep this and the previous
            old.unlink(missing_ok=True)
        return target

    def write_kubeconfig(self) -> None:
        """The node kubeconfig: the bootstrap kubeconfig's cluster, the node certificate by path."""
        doc = yaml.safe_load(self.bootstrap_kubeconfig.read_text()) or {}
        cluster = _current_cluster(doc, self.bootstrap_kubeconfig)
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "node",
            "clusters": [{"name": "cluster", "cluster": cluster}],
            "users": [{"name": node_user(self.node_name),
                       "user": {"client-certificate": str(self.current), "client-key": str(self.current)}}],
            "contexts": [{"name": "node", "context": {"cluster": "cluster", "user": node_user(self.node_name)}}],
        }
        write_private(self.kubeconfig, yaml.safe_dump(config, sort_keys=False))

    async def renew(self, kube: KubeClient) -> None:
        """One renewal: a CSR sent with the current certificate (or, once it has expired, the bootstrap token)."""
        if self.valid_certificate() is None:
            await self.bootstrap()
            return
        cert, key = await request_certificate(kube, self.node_name, timeout=self.csr_timeout)
        self.store(cert, key)
        log.info("renewed the node certificate of %s", node_user(self.node_name))


def _current_cluster(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    contexts = {c.get("name"): c.get("context") or {} for c in doc.get("contexts") or []}
    clusters = {c.get("name"): c.get("cluster") or {} for c in doc.get("clusters") or []}
    context = contexts.get(doc.get("current-context")) or (next(iter(contexts.values())) if contexts else {})
    cluster = dict(clusters.get(context.get("cluster")) or {})
    if not cluster.get("server"):
        raise BootstrapError(f"bootstrap kubeconfig {path}: its current context names no cluster with a server")
    ca = cluster.get("certificate-authority")
    if ca and not os.path.isabs(ca):  # relative to the bootstrap kubeconfig, which the node kubeconfig is not beside
        cluster["certificate-authority"] = str((path.parent / ca).resolve())
    return cluster


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600) through a temporary file, so readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


async def renew_forever(identity: NodeIdentity, kube: KubeClient, *, retry: float = 30.0) -> None:
    """Renew the node certificate before it expires, for as long as the agent runs."""
    while True:
        cert = identity.valid_certificate()
        now = datetime.datetime.now(datetime.timezone.utc)
        if cert is not None:
            due = renewal_time(cert)
            log.info("node certificate valid until %s; renewing at %s", lifetime(cert)[1].isoformat(),
                     due.isoformat(timespec="seconds"))
            await asyncio.sleep(max(0.0, (due - now).total_seconds()))
        try:
            await identity.renew(kube)
        except (ApiError, BootstrapError, OSError, ValueError) as exc:
            cert = identity.valid_certificate()
            left = (lifetime(cert)[1] - datetime.datetime.now(datetime.timezone.utc)).total_seconds() if cert else 0
            log.warning("node certificate renewal failed (%s); trying again in %.0fs", exc,
                        min(retry, max(1.0, left / 10)))
            await asyncio.sleep(min(retry, max(1.0, left / 10)))
