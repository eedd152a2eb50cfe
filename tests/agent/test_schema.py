"""What the agent writes (Node, Lease, pod status) validates against the Kubernetes OpenAPI schema (strict)."""

from __future__ import annotations

import sys

import kubernetes_validate
from agentfake import AgentFake
from agentharness import LEASES, NODE, NODES, NS, container_status, mac_probes, pod, running_and_ready, standin_pod

from turnout.agent.node import LEASE_NAMESPACE

VERSION = kubernetes_validate.latest_version()


def _valid(obj: dict) -> None:
    kubernetes_validate.validate(obj, VERSION, strict=True)


async def test_written_objects_match_the_api_schema(fake: AgentFake, agents, free_port: int) -> None:
    await agents(accelerator="metal", probes=mac_probes()).start()
    await fake.put_object(("", "v1", "pods"), standin_pod("ok", free_port))
    crash = [sys.executable, "-c", "raise SystemExit('no model here')"]
    await fake.put_object(("", "v1", "pods"), standin_pod("crash", 1, command=crash))
    await fake.wait_for(lambda: running_and_ready(fake, "ok"), what="ok Ready")
    await fake.wait_for(lambda: container_status(fake, "crash").get("state", {}).get("waiting", {}).get("reason")
                        == "CrashLoopBackOff", what="crash in back-off")
    _valid(fake.get(NODES, None, NODE))
    _valid(fake.get(LEASES, LEASE_NAMESPACE, NODE))
    for name in ("ok", "crash"):
        _valid(pod(fake, name))
    assert container_status(fake, "crash")["lastState"]["terminated"]["message"] == "no model here"
    assert pod(fake, "ok")["metadata"]["namespace"] == NS
