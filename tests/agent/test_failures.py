"""An unexpected failure in any agent task fails the agent: Node not Ready (AgentFailed), exit 1, pods adopted later."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import urllib.request
from pathlib import Path

import yaml
from agentfake import AgentFake
from agentharness import (
    ADDRESS,
    NODE,
    NODES,
    NS,
    PODS,
    condition,
    container_status,
    pid_gone,
    running_and_ready,
    standin_pod,
)

from turnout.agent.tasks import AgentFailed
from turnout.kube import MalformedWatchEvent


def get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://{ADDRESS}:{port}{path}", timeout=10) as resp:
        return json.loads(resp.read())


def node_ready(fake: AgentFake, node: str = NODE) -> dict:
    return condition(fake.get(NODES, None, node), "Ready")


async def watching_pods(fake: AgentFake) -> None:
    await fake.wait_for(lambda: fake.watchers.get(PODS), what="the agent's pod watch")


async def test_a_line_that_is_not_json_on_the_pod_watch_fails_the_agent_and_the_restart_adopts_its_pod(
        fake: AgentFake, agents, free_port: int) -> None:
    run = await agents().start()
    await fake.put_object(PODS, standin_pod("web", free_port))
    await fake.wait_for(lambda: running_and_ready(fake, "web"), what="Running and Ready")
    server = get_json(free_port, "/pids")["pid"]
    started = container_status(fake, "web")["state"]["running"]["startedAt"]
    await watching_pods(fake)

    fake.send_on_watches(PODS, b"<html>502 Bad Gateway</html>\n")  # a proxy's page in the middle of the stream
    error = await run.failed()
    assert isinstance(error, AgentFailed) and error.task == "pod watch"
    assert isinstance(error.error, MalformedWatchEvent)
    ready = node_ready(fake)
    assert ready["status"] == "False" and ready["reason"] == "AgentFailed"
    assert "pod watch" in ready["message"] and "MalformedWatchEvent" in ready["message"]
    assert not pid_gone(server)  # the pod keeps running while the agent is down

    await agents().start()  # launchd or systemd starts it again
    await fake.wait_for(lambda: node_ready(fake).get("status") == "True", what="the node Ready again")
    await fake.wait_for(lambda: running_and_ready(fake, "web"), what="Ready after adoption")
    assert get_json(free_port, "/pids")["pid"] == server
    cs = container_status(fake, "web")
    assert cs["restartCount"] == 0 and cs["state"]["running"]["startedAt"] == started


async def test_a_pod_event_the_agent_cannot_process_fails_it(fake: AgentFake, agents) -> None:
    run = await agents().start()
    await watching_pods(fake)
    # A pod without metadata.uid: no API server serves one, so the agent has no rule for it.
    fake.send_on_watches(PODS, {"type": "ADDED", "object": {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "odd", "namespace": NS, "resourceVersion": "1"},
        "spec": {"nodeName": NODE, "containers": []}}})
    error = await run.failed()
    assert isinstance(error, AgentFailed) and error.task == "pod watch" and isinstance(error.error, KeyError)
    ready = node_ready(fake)
    assert ready["status"] == "False" and ready["reason"] == "AgentFailed" and "KeyError" in ready["message"]


async def test_a_failing_pod_worker_fails_the_agent(fake: AgentFake, agents) -> None:
    run = await agents().start()
    pod = standin_pod("bad-port", 0)
    pod["spec"]["containers"][0]["ports"] = [{"containerPort": "http"}]  # the API server would refuse it
    await fake.put_object(PODS, pod)
    error = await run.failed()
    assert isinstance(error, AgentFailed) and error.task == f"pod {NS}/bad-port"
    assert isinstance(error.error, ValueError)
    ready = node_ready(fake)
    assert ready["reason"] == "AgentFailed" and f"pod {NS}/bad-port" in ready["message"]


async def test_python_m_turnout_agent_exits_1_when_it_fails(fake: AgentFake, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": str(fake.url).rstrip("/")}}],
        "users": [{"name": "me", "user": {"token": "t"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me"}}],
    }))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout.agent", "--node-name", "cli-node", "--accelerator", "cpu",
        "--address", ADDRESS, "--kubeconfig", str(kubeconfig), "--state-dir", str(tmp_path / "state"),
        stderr=asyncio.subprocess.PIPE)
    try:
        await fake.wait_for(lambda: node_ready(fake, "cli-node").get("status") == "True", timeout=60,
                            what="the CLI's node Ready")
        await watching_pods(fake)
        fake.send_on_watches(PODS, b"not json\n")
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
    text = err.decode()
    assert proc.returncode == 1, text
    assert "pod watch failed" in text and "Traceback" in text and "MalformedWatchEvent" in text
    assert node_ready(fake, "cli-node")["reason"] == "AgentFailed"
