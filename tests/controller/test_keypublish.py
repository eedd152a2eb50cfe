"""The operator publishes the SHA-256 of every apiKeySecretRef key to turnout-gateway-keys, and follows it."""

from __future__ import annotations

import base64
import hashlib

from ctlharness import MDS, NS, cpu_node, events_of, gguf_md

from turnout.controller import Options

NODES = ("", "v1", "nodes")
SECRETS = ("", "v1", "secrets")
KEYS = "turnout-gateway-keys"


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def digest(key: bytes) -> str:
    return b64(hashlib.sha256(key).hexdigest().encode())


def keyed_md(name: str, secret: str, key: str | None = None) -> dict:
    md = gguf_md(name)
    md["spec"]["apiKeySecretRef"] = {"name": secret, **({"key": key} if key else {})}
    return md


def published(fake) -> dict[str, str] | None:
    secret = fake.get(SECRETS, NS, KEYS)
    return None if secret is None else dict(secret.get("data") or {})


async def test_digests_published_rotated_and_removed(fake, operator_run) -> None:
    await fake.put_object(NODES, cpu_node())
    await fake.put_object(SECRETS, {"metadata": {"name": "user-keys", "namespace": NS}, "type": "Opaque",
                                    "data": {"api-key": b64(b"alpha\n"), "other": b64(b"beta")}})
    operator_run.options = Options(all_namespaces=True, metrics_port=0, health_port=0, key_interval=0.3)
    await operator_run.start()
    await fake.put_object(MDS, keyed_md("a", "user-keys"))
    await fake.put_object(MDS, keyed_md("b", "user-keys", "other"))
    await fake.put_object(MDS, gguf_md("open"))
    await fake.wait_for(lambda: published(fake) == {"a": digest(b"alpha"), "b": digest(b"beta")},
                        what="both digests published")
    secret = fake.get(SECRETS, NS, KEYS)
    assert secret["type"] == "Opaque"
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "turnout"

    # Rotation: only the user's Secret changes (no ModelDeployment event); the periodic re-read follows it.
    await fake.modify(SECRETS, (NS, "user-keys"), lambda o: {**o, "data": {**o["data"], "api-key": b64(b"gamma")}})
    await fake.wait_for(lambda: (published(fake) or {}).get("a") == digest(b"gamma"), timeout=5,
                        what="the rotated key's digest")

    # The ref removed, then the deployment deleted: their entries go.
    await fake.modify(MDS, (NS, "b"), lambda o: {**o, "spec": {k: v for k, v in o["spec"].items()
                                                               if k != "apiKeySecretRef"}})
    await fake.wait_for(lambda: published(fake) == {"a": digest(b"gamma")}, what="b's entry removed")
    await fake.remove(MDS, (NS, "a"))
    await fake.wait_for(lambda: published(fake) == {}, what="a's entry removed")
    await operator_run.stop()


async def test_a_missing_secret_or_key_is_said_once_and_published_when_it_comes(fake, operator_run) -> None:
    await fake.put_object(NODES, cpu_node())
    operator_run.options = Options(all_namespaces=True, metrics_port=0, health_port=0, key_interval=0.2)
    await operator_run.start()
    await fake.put_object(MDS, keyed_md("lost", "absent"))
    await fake.put_object(MDS, keyed_md("nokey", "present", "token"))
    await fake.put_object(SECRETS, {"metadata": {"name": "present", "namespace": NS}, "data": {"api-key": b64(b"x")}})

    def missing(name: str) -> list[str]:
        return [e["message"] for e in events_of(fake, name) if e["reason"] == "ApiKeyMissing"]

    await fake.wait_for(lambda: missing("lost") and missing("nokey"), what="ApiKeyMissing Events")
    assert missing("lost")[0].startswith(f"apiKeySecretRef: Secret {NS}/absent does not exist")
    assert "the gateway answers 503" in missing("lost")[0]
    assert f"Secret {NS}/present has no key 'token'" in missing("nokey")[0]
    assert published(fake) == {}, "nothing published for a key that cannot be read"
    await fake.wait_for(lambda: len([r for r in fake.requests if r.resource is not None
                                     and r.resource.plural == "secrets" and r.name == "absent"]) >= 4,
                        what="several re-reads")
    assert len(missing("lost")) == 1, "said once, not at every re-read"

    await fake.put_object(SECRETS, {"metadata": {"name": "absent", "namespace": NS}, "data": {"api-key": b64(b"k")}})
    await fake.wait_for(lambda: published(fake) == {"lost": digest(b"k")}, what="published once the Secret exists")
    await operator_run.stop()
