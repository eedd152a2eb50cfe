"""The operator on input only the resolver can judge, and with secrets around: Failed with the reason, no
exception in its log, no secret value in anything it writes.

Runs the real operator (kopf) in-process against the API emulator of tests/controller.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from typing import Any

import pytest
from ctlharness import DEPLOYMENTS, MDS, NODES, NS, cond, cpu_node, events_of, gguf_md

from turnout.api import GATEWAY_KEYS_SECRET
from turnout.controller.rbac import RULES

SECRETS = ("", "v1", "secrets")


def _md(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


# (name, spec, the Resolved condition's reason, words its message must contain)
ONLY_THE_RESOLVER_KNOWS = [
    ("awq-on-cpu", {"model": {"name": "qwen2.5-instruct", "size": 7, "format": "awq", "quantization": "Int4"}},
     "Rejected", ["vllm"]),
    ("no-such-family", {"model": {"name": "no-such-model-family"}}, None, ["no-such-model-family"]),
    ("no-such-size", {"model": {"name": "qwen2.5-instruct", "size": 9876, "format": "gguf"}}, None, ["9876"]),
    ("too-big-for-memory", {"model": {"uri": "hf://org/huge-gguf", "format": "gguf", "size": 400,
                                      "architecture": "LlamaForCausalLM"}}, "Rejected", ["memory"]),
    # refused at admission by a CEL rule too; an object stored before that rule still ends Failed
    ("pvc-climbs-out", {"model": {"uri": "pvc://weights/../../etc/passwd", "format": "gguf", "size": 0.5,
                                  "architecture": "LlamaForCausalLM"}}, "InvalidSpec", ["'..' is not allowed"]),
]


async def test_what_only_the_resolver_can_judge_fails_with_the_reason_and_no_exception(
        fake, operator_run, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await fake.put_object(NODES, cpu_node())
    await operator_run.start()
    for name, spec, _, _ in ONLY_THE_RESOLVER_KNOWS:
        await fake.put_object(MDS, _md(name, spec))
    await fake.put_object(MDS, gguf_md("good"))
    for name, _, reason, words in ONLY_THE_RESOLVER_KNOWS:
        failed = await fake.wait_for(
            lambda n=name: (o := fake.get(MDS, NS, n)) and (o.get("status") or {}).get("phase") == "Failed" and o,
            what=f"{name} Failed")
        resolved = cond(failed, "Resolved")
        assert resolved["status"] == "False", (name, resolved)
        if reason:
            assert resolved["reason"] == reason, (name, resolved)
        text = resolved["message"] + json.dumps(failed["status"].get("rejected", []))
        assert all(w in text for w in words), (name, text)
        assert fake.get(DEPLOYMENTS, NS, name) is None
    # the good one still deploys, and the operator logged no traceback or error for the bad ones
    await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "good"), what="the good Deployment")
    await operator_run.stop()
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [(r.name, r.getMessage()) for r in bad]
    assert "Traceback" not in caplog.text


async def test_no_secret_value_reaches_status_events_its_log_or_any_object_it_writes(
        fake, operator_run, caplog: pytest.LogCaptureFixture) -> None:
    """The operator reads only the Secret an ``apiKeySecretRef`` names (to publish the key's SHA-256 for the
    gateway); the HF token and env Secrets stay references the Deployment maps. No value — raw or base64 —
    reaches a status, an Event, its log or any object it writes; the one Secret it writes holds digests."""
    caplog.set_level(logging.DEBUG)
    api_key, hf_token = b"sk-canary-7f3a9c1e", b"hf_canary_5d2b8e4f"
    secrets = {"api": {"key": api_key}, "hf": {"token": hf_token}}
    for name, data in secrets.items():
        await fake.put_object(SECRETS, {"metadata": {"name": name, "namespace": NS}, "type": "Opaque",
                                        "data": {k: base64.b64encode(v).decode() for k, v in data.items()}})
    rules = [r for r in RULES if r.resource.startswith("secrets")]
    assert {v for r in rules for v in r.verbs} <= {"get", "create", "patch"}, rules  # no list, watch or delete
    assert all(r.resource_names == (GATEWAY_KEYS_SECRET,) for r in rules if "patch" in r.verbs), rules
    await fake.put_object(NODES, cpu_node())
    await operator_run.start()
    md = gguf_md("keyed")
    md["spec"]["apiKeySecretRef"] = {"name": "api", "key": "key"}
    md["spec"]["hfTokenSecretRef"] = {"name": "hf", "key": "token"}
    md["spec"]["env"] = [{"name": "EXTRA", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}]
    await fake.put_object(MDS, md)
    dep = await fake.wait_for(lambda: fake.get(DEPLOYMENTS, NS, "keyed"), what="the Deployment")
    await fake.wait_for(lambda: (fake.get(MDS, NS, "keyed").get("status") or {}).get("phase") == "Deploying")
    # A new deployment posts no Event; a new template does (RolloutStarted), so Events are covered too.
    await fake.modify(MDS, (NS, "keyed"), lambda o: {**o, "spec": {**o["spec"], "servedModelName": "keyed-2"}})
    await fake.wait_for(lambda: events_of(fake, "keyed"), what="an Event")
    keys = await fake.wait_for(lambda: fake.get(SECRETS, NS, GATEWAY_KEYS_SECRET), what="the published digests")
    await operator_run.stop()

    assert keys["data"] == {"keyed": base64.b64encode(hashlib.sha256(api_key).hexdigest().encode()).decode()}
    touched = {(r.method, r.name) for r in fake.requests if r.resource is not None and r.resource.plural == "secrets"}
    assert {name for _, name in touched} <= {"api", GATEWAY_KEYS_SECRET}, touched  # never the HF token's
    canaries = [v for data in secrets.values() for raw in data.values()
                for v in (raw.decode(), base64.b64encode(raw).decode())]
    written = [o for res in fake.store if res != SECRETS for o in fake.objects(res)]
    written.append(keys)
    text = json.dumps(written) + caplog.text
    assert not [c for c in canaries if c in text]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert "--api-key-file" in container["command"]
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert env["EXTRA"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert "value" not in env["HF_TOKEN"] and "value" not in env["EXTRA"]


async def test_an_api_call_that_times_out_is_retryable_not_fatal(fake) -> None:
    """A hung API server (no answer within the client's timeout) is a TransientApiError, which the work queue
    retries with back-off (tests/controller: test_work_queue_deduplicates_and_retries_with_backoff)."""
    from kubeconfigs import credentials_for
    from turnout.kube import KubeClient, TransientApiError

    gate = fake.hold("GET", "nodes")
    client = KubeClient(await credentials_for(str(fake.url).rstrip("/")), timeout=0.5)
    try:
        with pytest.raises(TransientApiError) as timed_out:
            await client.request("GET", "/api/v1/nodes")
        assert timed_out.value.status == 0 and "Timeout" in timed_out.value.reason
    finally:
        gate.set()
        del fake.gates[("GET", "nodes")]
    # the same call succeeds once the server answers again
    assert "items" in await client.request("GET", "/api/v1/nodes")
    await client.close()
