"""Publish the API keys the gateway checks, hashed, so that the gateway never reads a user's Secret.

For every ModelDeployment with ``spec.apiKeySecretRef`` the operator reads that key (``get`` on the named
Secret) and server-side applies, per namespace, the Secret ``turnout-gateway-keys``
(:data:`turnout.api.GATEWAY_KEYS_SECRET`): ``data[<ModelDeployment name>]`` is the hex SHA-256 of the key.
The gateway's RBAC is ``get`` on that one name. A ModelDeployment whose ref is removed, or which is deleted,
loses its entry with the next apply (server-side apply drops the fields this manager no longer sends).

When: at once after any ModelDeployment event, and every ``interval`` seconds (``--key-refresh-interval``,
default 10), so a rotated key is published within that bound. Secrets are re-read, not watched: a watch would
need ``list``/``watch`` on every Secret and keep them all in the operator's memory.

A key that cannot be used (Secret or key missing, empty, not base64) removes the entry — the gateway then
answers 503 for the model, never lets a request through — and posts a Warning Event ``ApiKeyMissing`` on the
ModelDeployment naming the Secret and key (once per distinct problem). A read that fails transiently keeps
the digest published before.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import suppress
from typing import Any

from turnout.aio import wait_for
from turnout.api import GATEWAY_KEYS_SECRET, key_digest
from turnout.kube import ApiError, KubeClient, TransientApiError, api_path
from turnout.render.manifests import MANAGED_BY, MANAGED_BY_LABEL

logger = logging.getLogger("turnout.controller.keys")

#: seconds between two reads of every referenced key (the rotation bound)
KEY_INTERVAL = 10.0
MISSING = "ApiKeyMissing"

PostEvent = Callable[[Mapping[str, Any], str, str, str], Awaitable[None]]


class KeyProblem(Exception):
    """The key a ModelDeployment names cannot be used; the message says which Secret and key, and why."""


def read_key(secret: Mapping[str, Any] | None, where: str, key: str) -> bytes:
    """The key ``key`` of a Secret object (``where``: how to name it), decoded and stripped."""
    if secret is None:
        raise KeyProblem(f"{where} does not exist")
    raw = (secret.get("data") or {}).get(key)
    if not isinstance(raw, str):
        raise KeyProblem(f"{where} has no key {key!r}")
    try:
        value = base64.b64decode(raw, validate=True).strip()
    except (binascii.Error, ValueError):
        raise KeyProblem(f"{where} key {key!r} is not valid base64") from None
    if not value:
        raise KeyProblem(f"{where} key {key!r} is empty")
    return value


def keys_secret(namespace: str, digests: Mapping[str, str]) -> dict[str, Any]:
    """The Secret the gateway reads in ``namespace``: ModelDeployment name -> hex SHA-256 of its key."""
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": GATEWAY_KEYS_SECRET, "namespace": namespace, "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
        "data": {name: base64.b64encode(digest.encode()).decode() for name, digest in sorted(digests.items())},
    }


class KeyPublisher:
    """Keeps ``turnout-gateway-keys`` in each namespace equal to the digests of the keys its deployments name."""

    def __init__(self, client: KubeClient, deployments: Callable[[], Iterable[Mapping[str, Any]]],
                 post_event: PostEvent, *, interval: float = KEY_INTERVAL) -> None:
        self.client = client
        self.deployments = deployments
        self.post_event = post_event
        self.interval = interval
        self._published: dict[str, dict[str, str]] = {}  # namespace -> what the last apply wrote
        self._problems: dict[tuple[str, str], str] = {}  # (namespace, name) -> the problem last posted
        self._poked = asyncio.Event()

    def poke(self, md: Mapping[str, Any] | None = None) -> None:
        """A ModelDeployment changed: publish again now, if it names a key or had a digest published (a
        deployment that does neither changes nothing here: a burst of them costs no pass over all)."""
        if md is not None:
            meta = md.get("metadata") or {}
            named = isinstance((md.get("spec") or {}).get("apiKeySecretRef"), dict)
            if not named and meta.get("name") not in self._published.get(meta.get("namespace") or "", {}):
                return
        self._poked.set()

    async def run(self) -> None:
        """Publish after every poke and every ``interval`` seconds, until cancelled."""
        while True:
            self._poked.clear()
            try:
                await self.publish()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("publishing the gateway's API key digests failed; trying again")
            with suppress(TimeoutError):
                await wait_for(self._poked.wait(), self.interval)

    async def publish(self) -> None:
        """Read every referenced key once and apply each namespace's digests where they changed."""
        wanted: dict[str, list[Mapping[str, Any]]] = {}
        for md in self.deployments():
            ref = (md.get("spec") or {}).get("apiKeySecretRef")
            if isinstance(ref, dict) and ref.get("name"):
                wanted.setdefault(md["metadata"]["namespace"], []).append(md)
        for namespace in sorted(set(wanted) | {ns for ns, digests in self._published.items() if digests}):
            digests = await self._digests(namespace, wanted.get(namespace, []))
            if digests == self._published.get(namespace):
                continue
            try:
                await self.client.apply(keys_secret(namespace, digests))
            except ApiError as exc:
                logger.warning("cannot publish the API key digests in %s: %s", namespace, exc)
                continue
            self._published[namespace] = digests
            logger.info("published %d API key digest(s) in %s/%s", len(digests), namespace, GATEWAY_KEYS_SECRET)
        gone = {(md["metadata"]["namespace"], md["metadata"]["name"]) for mds in wanted.values() for md in mds}
        for key in set(self._problems) - gone:
            del self._problems[key]

    async def _digests(self, namespace: str, mds: list[Mapping[str, Any]]) -> dict[str, str]:
        before = self._published.get(namespace, {})
        secrets: dict[str, Mapping[str, Any] | None] = {}
        out: dict[str, str] = {}
        for md in mds:
            name = md["metadata"]["name"]
            ref = md["spec"]["apiKeySecretRef"]
            secret_name, key = str(ref["name"]), str(ref.get("key") or "api-key")
            try:
                if secret_name not in secrets:
                    secrets[secret_name] = await self.client.get(api_path("v1", "secrets", namespace, secret_name))
                out[name] = key_digest(read_key(secrets[secret_name], f"Secret {namespace}/{secret_name}", key))
                self._problems.pop((namespace, name), None)
            except TransientApiError as exc:
                logger.warning("cannot read Secret %s/%s for %s: %s; keeping the digest published before",
                               namespace, secret_name, name, exc)
                if name in before:
                    out[name] = before[name]
            except (ApiError, KeyProblem) as exc:
                problem = str(exc) if isinstance(exc, KeyProblem) else \
                    f"cannot read Secret {namespace}/{secret_name}: {exc.status} {exc.reason}"
                if self._problems.get((namespace, name)) != problem:
                    self._problems[(namespace, name)] = problem
                    await self.post_event(md, "Warning", MISSING,
                                          f"apiKeySecretRef: {problem}; the gateway answers 503 for this model "
                                          "until the key is there")
        return out
