"""Who we are to the API server: credentials loaded by kubernetes_asyncio, kept fresh.

Every form a kubeconfig or a pod gives is the library's to read: embedded
base64 data and file paths for the CA, client certificate and key; ``token``
and ``tokenFile``; ``exec`` credential plugins (EKS, GKE, kubelogin);
``insecure-skip-tls-verify``, ``tls-server-name``, ``proxy-url``; the current
context or a named one; and in-cluster service-account tokens. Around the
loaded configuration this module adds what a long-running process needs:
a token file (``tokenFile``, the projected service-account token) is read
again when it changes, an exec plugin runs again when its token expires or the
server refuses it (401), client certificate files given by path (a node's
rotated ``client-certificate``) are watched so :class:`~turnout.kube.KubeClient`
reconnects with the new certificate (:meth:`Credentials.tls_changed`), and
:meth:`Credentials.authorization` gives the header both the operator's client
and kopf's session send.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config import ConfigException, incluster_config, kube_config

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = "~/.kube/config"
#: An exec plugin's token is renewed this long before it expires.
EXPIRY_MARGIN = datetime.timedelta(seconds=30)


class CredentialsError(Exception):
    """No usable credentials: the message says what was tried and why it failed."""


@dataclass
class TokenFile:
    """A bearer token file, read again when the file changes (checked at most once a second)."""

    path: str
    token: str = ""
    _stamp: tuple[int, int] = (0, 0)
    _checked: float = 0.0

    def read(self, *, force: bool = False) -> str:
        now = time.monotonic()
        if not force and self.token and now - self._checked < 1.0:
            return self.token
        self._checked = now
        try:
            st = os.stat(self.path)  # follows the kubelet's ..data symlink to the current token
            stamp = (st.st_ino, st.st_mtime_ns)
            if force or stamp != self._stamp or not self.token:
                text = Path(self.path).read_text().strip()
                if text:  # a half-written or emptied file keeps the token we have
                    self.token, self._stamp = text, stamp
        except OSError:
            if not self.token:
                raise
        return self.token


@dataclass
class CertFiles:
    """Client certificate and key files, checked for a change at most once a second (renewed in place)."""

    paths: tuple[str, ...]
    _stamp: tuple[tuple[int, int], ...] = ()
    _checked: float = 0.0

    def __post_init__(self) -> None:
        self._stamp = self._read_stamp()

    def _read_stamp(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in self.paths:
            try:
                st = os.stat(path)  # follows a "-current.pem" symlink to the file it names now
            except OSError:
                stamps.append((0, 0))
            else:
                stamps.append((st.st_ino, st.st_mtime_ns))
        return tuple(stamps)

    def changed(self) -> bool:
        """True once after the files changed (a missing file is no change: keep what is loaded)."""
        now = time.monotonic()
        if now - self._checked < 1.0:
            return False
        self._checked = now
        stamp = self._read_stamp()
        if stamp == self._stamp or (0, 0) in stamp:
            return False
        self._stamp = stamp
        return True


@dataclass
class Credentials:
    """A loaded :class:`kubernetes_asyncio.client.Configuration` and how to keep its token fresh."""

    configuration: Configuration
    source: str  # for messages: "kubeconfig /path (context x)" or "in-cluster service account"
    token_file: TokenFile | None = None
    exec_loader: Any = None  # the kubeconfig loader, when the user runs an exec plugin
    namespace: str | None = None  # the pod's namespace, in a cluster
    cert_files: CertFiles | None = None  # client certificate files to watch (given by path, not -data)
    _fresh: bool = field(default=True, repr=False)

    def __post_init__(self) -> None:
        cfg = self.configuration
        if not cfg.proxy:  # no proxy-url: the environment's, as client-go does (HTTPS_PROXY, NO_PROXY)
            cfg.proxy = environment_proxy(str(cfg.host))
        if self.token_file is not None or self.exec_loader is not None:
            self.configuration.refresh_api_key_hook = self._refresh_hook

    @property
    def server(self) -> str:
        return str(self.configuration.host).rstrip("/")

    async def _refresh_hook(self, configuration: Configuration) -> None:
        await self._refresh(force=False)

    async def _refresh(self, *, force: bool) -> None:
        cfg = self.configuration
        if self.token_file is not None:
            cfg.api_key["BearerToken"] = f"Bearer {self.token_file.read(force=force)}"
        if self.exec_loader is not None:
            expiry = getattr(self.exec_loader, "exec_plugin_expiry", None)
            soon = datetime.datetime.now(datetime.timezone.utc) + EXPIRY_MARGIN
            if force or (expiry is not None and _aware(expiry) <= soon):
                if hasattr(self.exec_loader, "exec_plugin_expiry"):
                    del self.exec_loader.exec_plugin_expiry  # the loader reruns the plugin only without one
                await self.exec_loader.load_from_exec_plugin()
                if getattr(self.exec_loader, "token", None):
                    cfg.api_key["BearerToken"] = self.exec_loader.token

    def tls_changed(self) -> bool:
        """True (once) when the client certificate files changed since they were loaded or last reported."""
        return self.cert_files is not None and self.cert_files.changed()

    async def invalidate(self) -> bool:
        """After a 401: read the token again (file or exec plugin). False when there is nothing to renew."""
        if self.token_file is None and self.exec_loader is None:
            return False
        await self._refresh(force=True)
        return True

    async def authorization(self) -> str | None:
        """The ``Authorization`` header value (the token refreshed first when due), or None."""
        cfg = self.configuration
        header = await cfg.get_api_key_with_prefix("BearerToken")
        if header:
            return str(header)
        basic = cfg.get_basic_auth_token()
        return str(basic) if cfg.username and basic else None


def environment_proxy(url: str) -> str | None:
    """The proxy ``$HTTPS_PROXY``/``$HTTP_PROXY`` name for ``url``, unless ``$NO_PROXY`` exempts its host."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not host or loopback or urllib.request.proxy_bypass(host):  # Go's rule: loopback is never proxied
        return None
    return urllib.request.getproxies().get(parts.scheme or "https")


def _aware(value: datetime.datetime) -> datetime.datetime:
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def _in_cluster_available(service_account: Path) -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (service_account / "token").is_file()


async def load_credentials(
    kubeconfig: str | None = None,
    *,
    context: str | None = None,
    service_account: str | os.PathLike[str] = SERVICE_ACCOUNT_DIR,
) -> Credentials:
    """Credentials in the order controllers use: ``kubeconfig``, ``$KUBECONFIG``, in-cluster, ``~/.kube/config``.

    Raises :class:`CredentialsError` with what was tried.
    """
    sa_dir = Path(service_account)
    given = kubeconfig or os.environ.get("KUBECONFIG")
    if not given and _in_cluster_available(sa_dir):
        return _load_in_cluster(sa_dir)
    files = [os.path.expanduser(p) for p in (given or DEFAULT_KUBECONFIG).split(os.pathsep) if p]
    missing = [p for p in files if not os.path.isfile(p)]
    if given and len(missing) == len(files):
        raise CredentialsError(f"kubeconfig {given} does not exist")
    if not given and missing:
        raise CredentialsError(f"no kubeconfig at {files[0]} and not in a pod with a service account: "
                               "pass --kubeconfig, set KUBECONFIG, or run in a pod")
    return await _load_kubeconfig(os.pathsep.join(p for p in files if p not in missing), context)


async def _load_kubeconfig(path: str, context: str | None) -> Credentials:
    cfg = Configuration()
    try:
        loader = await kube_config.load_kube_config(
            config_file=path, context=context, client_configuration=cfg, persist_config=False
        )
    except (ConfigException, KeyError, ValueError, OSError, AssertionError) as exc:
        raise CredentialsError(f"cannot use kubeconfig {path}: {exc or type(exc).__name__}") from exc
    name = context or (loader.current_context or {}).get("name")
    user = getattr(loader, "_user", None)  # the library's parsed user entry: which token source to keep fresh
    user = dict(user.value) if user is not None else {}
    token_file = None
    if user.get("tokenFile") and not user.get("token"):
        base = os.path.dirname(os.path.abspath(path.split(os.pathsep)[0]))
        token_file = TokenFile(os.path.join(base, os.path.expanduser(str(user["tokenFile"]))))
    exec_loader = loader if user.get("exec") else None
    cert_files = None
    if user.get("client-certificate") and not user.get("client-certificate-data") and cfg.cert_file:
        cert_files = CertFiles(tuple(p for p in (cfg.cert_file, cfg.key_file) if p))
    return Credentials(cfg, f"kubeconfig {path} (context {name})", token_file=token_file, exec_loader=exec_loader,
                       cert_files=cert_files)


def _load_in_cluster(sa_dir: Path) -> Credentials:
    cfg = Configuration()
    try:
        incluster_config.InClusterConfigLoader(
            token_filename=str(sa_dir / "token"), cert_filename=str(sa_dir / "ca.crt"), try_refresh_token=False,
        ).load_and_set(cfg)
    except ConfigException as exc:
        raise CredentialsError(f"cannot use the in-cluster service account ({sa_dir}): {exc}") from exc
    ns_file = sa_dir / "namespace"
    namespace = ns_file.read_text().strip() if ns_file.is_file() else None
    return Credentials(cfg, "in-cluster service account", token_file=TokenFile(str(sa_dir / "token")),
                       namespace=namespace)
