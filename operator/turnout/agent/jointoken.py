"""``turnout agent join-token``: a bootstrap token for one host and the bootstrap kubeconfig that carries it.

Run by an admin with their own kubeconfig. The token is a ``bootstrap.kubernetes.io/token`` Secret in
``kube-system`` (``bootstrap-token-<id>``) labelled ``turnout.dev/host=<node>``, authenticating as
``system:bootstrap:<id>`` in the group :data:`~turnout.agent.rbac.BOOTSTRAP_GROUP`; an unexpired one
already there for that host (e.g. the chart's) is reused. The bootstrap kubeconfig names the admin's
server, CA and ``tls-server-name`` with the token as its user: the host agent trades it for its node
certificate (:mod:`turnout.agent.bootstrap`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import re
import secrets
import sys
from pathlib import Path
from typing import Any

import yaml

from turnout.agent.bootstrap import write_private
from turnout.agent.rbac import BOOTSTRAP_BINDINGS, BOOTSTRAP_GROUP
from turnout.kube import ApiError, Credentials, CredentialsError, KubeClient, load_credentials

TOKEN_NAMESPACE = "kube-system"
TOKEN_TYPE = "bootstrap.kubernetes.io/token"
HOST_LABEL = "turnout.dev/host"
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
#: A token that expires sooner than this is not handed out again.
REUSE_MARGIN = datetime.timedelta(minutes=10)
_DURATION = re.compile(r"(\d+)([smhd])")


class JoinTokenError(RuntimeError):
    """The token could not be made; the message says why."""


def parse_ttl(text: str) -> datetime.timedelta | None:
    """``24h``, ``90m``, ``1h30m``, ``7d``; ``0`` for a token that never expires."""
    if text.strip() == "0":
        return None
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise JoinTokenError(f"--ttl {text!r}: expected a duration such as 24h, 90m or 1h30m (0: no expiry)")
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return datetime.timedelta(seconds=sum(int(n) * units[u] for n, u in parts))


def new_token() -> tuple[str, str]:
    """A token id (6) and secret (16), from ``[a-z0-9]`` as the bootstrap token format requires."""
    return ("".join(secrets.choice(_ALPHABET) for _ in range(6)),
            "".join(secrets.choice(_ALPHABET) for _ in range(16)))


def _stamp(when: datetime.datetime) -> str:
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def token_secret(node_name: str, token_id: str, token_secret_: str,
                 expiration: datetime.datetime | None) -> dict[str, Any]:
    data = {
        "token-id": token_id,
        "token-secret": token_secret_,
        "usage-bootstrap-authentication": "true",
        "auth-extra-groups": BOOTSTRAP_GROUP,
        "description": f"turnout host agent {node_name}: trade for its node certificate",
    }
    if expiration is not None:
        data["expiration"] = _stamp(expiration)
    return {
        "apiVersion": "v1", "kind": "Secret", "type": TOKEN_TYPE,
        "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": TOKEN_NAMESPACE,
                     "labels": {HOST_LABEL: node_name}},
        "stringData": data,
    }


def usable_token(secret: dict[str, Any], now: datetime.datetime) -> tuple[str, str | None] | None:
    """``(id.secret, expiration)`` of a bootstrap token Secret that still authenticates a while, else None."""
    if secret.get("type") != TOKEN_TYPE:
        return None
    try:
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    except ValueError:
        return None
    if data.get("usage-bootstrap-authentication") != "true" or BOOTSTRAP_GROUP not in \
            data.get("auth-extra-groups", "").split(","):
        return None
    token_id, token_secret_ = data.get("token-id", ""), data.get("token-secret", "")
    if not (re.fullmatch(r"[a-z0-9]{6}", token_id) and re.fullmatch(r"[a-z0-9]{16}", token_secret_)):
        return None
    expiration = data.get("expiration")
    if expiration:
        try:
            when = datetime.datetime.fromisoformat(expiration.replace("Z", "+00:00"))
        except ValueError:
            return None
        if when <= now + REUSE_MARGIN:
            return None
    return f"{token_id}.{token_secret_}", expiration


async def join_token(kube: KubeClient, node_name: str, ttl: datetime.timedelta | None) -> tuple[str, str | None, bool]:
    """The host's token: ``(token, expiration or None, reused)``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    listing = await kube.request("GET", f"/api/v1/namespaces/{TOKEN_NAMESPACE}/secrets",
                                 params={"labelSelector": f"{HOST_LABEL}={node_name}"})
    for secret in listing.get("items") or []:
        found = usable_token(secret, now)
        if found is not None:
            return found[0], found[1], True
    token_id, token_secret_ = new_token()
    expiration = now + ttl if ttl is not None else None
    await kube.create(f"/api/v1/namespaces/{TOKEN_NAMESPACE}/secrets",
                      token_secret(node_name, token_id, token_secret_, expiration))
    return f"{token_id}.{token_secret_}", _stamp(expiration) if expiration else None, False


def bootstrap_kubeconfig(creds: Credentials, token: str, node_name: str, server: str | None = None,
                         tls_server_name: str | None = None) -> dict[str, Any]:
    """A kubeconfig for the admin's cluster (or ``server``, verified as ``tls_server_name``) whose user is the token."""
    cfg = creds.configuration
    cluster: dict[str, Any] = {"server": server or creds.server}
    if cfg.ssl_ca_cert:
        cluster["certificate-authority-data"] = base64.b64encode(Path(cfg.ssl_ca_cert).read_bytes()).decode()
    if tls_server_name or cfg.tls_server_name:
        cluster["tls-server-name"] = tls_server_name or cfg.tls_server_name
    if not cfg.verify_ssl:
        cluster["insecure-skip-tls-verify"] = True
    user = f"bootstrap-{node_name}"
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "bootstrap",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "bootstrap", "context": {"cluster": "cluster", "user": user}}],
    }


async def missing_bindings(kube: KubeClient) -> list[str]:
    """The bootstrapper ClusterRoleBindings (by role) not granted to the token's groups; [] when unknown."""
    try:
        listing = await kube.request("GET", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings")
    except ApiError:
        return []  # not allowed to look: say nothing
    granted = {(b.get("roleRef", {}).get("name"), s.get("name")) for b in listing.get("items") or []
               for s in b.get("subjects") or [] if s.get("kind") == "Group"}
    return [role for role, group, _ in BOOTSTRAP_BINDINGS if (role, group) not in granted]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node-name", required=True, help="the host's node name (as its agent's --node-name)")
    parser.add_argument("--ttl", default="24h", help="how long the token authenticates (default 24h; 0: forever)")
    parser.add_argument("-o", "--output", help="write the bootstrap kubeconfig here, mode 0600 (default: stdout)")
    parser.add_argument("--server", help="the API server URL the host reaches (default: your kubeconfig's)")
    parser.add_argument("--tls-server-name", help="the name to verify the server's certificate for, when --server "
                                                  "is an address the certificate does not name")
    parser.add_argument("--kubeconfig", help="the admin kubeconfig (default: $KUBECONFIG, then ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")


async def _run(args: argparse.Namespace) -> int:
    ttl = parse_ttl(args.ttl)
    creds = await load_credentials(args.kubeconfig, context=args.context)
    async with KubeClient(creds, user_agent="turnout-join-token") as kube:
        token, expiration, reused = await join_token(kube, args.node_name, ttl)
        missing = await missing_bindings(kube)
    config = bootstrap_kubeconfig(creds, token, args.node_name, args.server, args.tls_server_name)
    doc = yaml.safe_dump(config, sort_keys=False)
    if args.output:
        write_private(Path(args.output), doc)
    else:
        sys.stdout.write(doc)
    token_id = token.split(".", 1)[0]
    print(f"{'reused' if reused else 'created'} bootstrap token {token_id} for node {args.node_name} "
          f"({TOKEN_NAMESPACE}/bootstrap-token-{token_id}, {'expires ' + expiration if expiration else 'no expiry'})"
          + (f"; bootstrap kubeconfig written to {args.output}" if args.output else ""), file=sys.stderr)
    if missing:
        print(f"warning: no ClusterRoleBinding grants {', '.join(missing)} to the bootstrap token's groups: the "
              "agent's certificate request will not be created or approved; install the chart with "
              "hostAgents.names set (it renders them), or see docs/host-agent.md", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except (JoinTokenError, CredentialsError, ApiError, OSError) as exc:
        print(f"turnout agent join-token: error: {exc}", file=sys.stderr)
        return 2
