"""Secrets and config maps reach the process; the env map; the CLI (API use vs RBAC: test_bootstrap.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from agentfake import CONFIGMAPS, SECRETS, AgentFake
from agentharness import ADDRESS, NODES, NS, PODS, condition, container_status, delete_pod, pod, running_and_ready
from agentharness import standin_pod as make_pod

from turnout.agent import ConfigError, EnvMap


def get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://{ADDRESS}:{port}{path}", timeout=10) as resp:
        return json.loads(resp.read())


async def test_secrets_and_config_maps_reach_the_process(fake: AgentFake, agents, free_port: int) -> None:
    run = await agents().start()
    spec = make_pod("keyed", free_port, container={
        "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "tokens", "key": "hf"}}},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}}],
        "volumeMounts": [{"name": "api-key", "mountPath": "/var/run/turnout/api-key", "readOnly": True}],
        "args": ["--ready-after", "0"],
    }, volumes=[{"name": "api-key", "secret": {"secretName": "tokens", "items": [{"key": "api", "path": "api"}]}}])
    spec["spec"]["containers"][0]["env"].append({"name": "KEY_FILE", "value": "/var/run/turnout/api-key/api"})
    await fake.put_object(PODS, spec)
    # The secret does not exist yet: kubelet's CreateContainerConfigError, then it starts once it appears.
    await fake.wait_for(lambda: container_status(fake, "keyed").get("state", {}).get("waiting", {}).get("reason")
                        == "CreateContainerConfigError", what="CreateContainerConfigError")
    assert "tokens" in container_status(fake, "keyed")["state"]["waiting"]["message"]
    # Refused at first (the Node authorizer has not seen the pod bound yet): retried like a missing one.
    fake.fail("GET", "secrets", 403, times=1)
    await fake.put_object(SECRETS, {"metadata": {"name": "tokens", "namespace": NS}, "data": {
        "hf": base64.b64encode(b"hf_secret").decode(), "api": base64.b64encode(b"sk-local").decode()}})
    await fake.put_object(CONFIGMAPS, {"metadata": {"name": "settings", "namespace": NS}, "data": {"mode": "fast"}})
    await fake.wait_for(lambda: "forbidden to this node" in container_status(fake, "keyed").get("state", {})
                        .get("waiting", {}).get("message", ""), timeout=30, what="the 403 reported, not fatal")
    await fake.wait_for(lambda: running_and_ready(fake, "keyed"), timeout=30, what="Ready once the secret exists")
    env = get_json(free_port, "/env")
    assert env["HF_TOKEN"] == "hf_secret" and env["MODE"] == "fast"
    key_file = Path(env["KEY_FILE"])
    assert key_file.read_text() == "sk-local" and str(key_file).startswith(run.config.state_dir)
    assert key_file.stat().st_mode & 0o777 == 0o600

    await delete_pod(fake, "keyed")
    await fake.wait_for(lambda: pod(fake, "keyed") is None, what="removed")
    await run.stop(stop_pods=True)


def test_env_map_file(tmp_path: Path) -> None:
    venv = tmp_path / "mlx"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    shim = venv / "bin" / "turnout-shim"
    shim.write_text("#!/bin/sh\n")
    shim.chmod(0o755)
    path = tmp_path / "env-map.yaml"
    path.write_text(yaml.safe_dump({"images": {"ghcr.io/turnout-dev/mlx-metal:*": str(shim)}}))
    env_map = EnvMap.load(path)
    mlx = env_map.lookup("ghcr.io/turnout-dev/mlx-metal:0.1.0")
    assert mlx is not None and mlx.bin_dir == str(venv / "bin") and mlx.venv == str(venv)
    assert mlx.resolve("turnout-shim", "/usr/bin") == str(shim)
    # Other turnout images fall back to this interpreter's environment; foreign images map to nothing.
    assert env_map.lookup("ghcr.io/turnout-dev/llamacpp-metal:0.1.0").root == sys.prefix
    assert env_map.lookup("docker.io/library/nginx:1") is None
    path.write_text(yaml.safe_dump({"images": {"x/*": str(tmp_path / "missing")}}))
    with pytest.raises(ConfigError, match="does not exist"):
        EnvMap.load(path)


async def test_python_m_turnout_agent(fake: AgentFake, tmp_path: Path) -> None:
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
        "--label", "zone=desk", "--stop-pods-on-exit", stderr=asyncio.subprocess.PIPE)
    try:
        await fake.wait_for(lambda: fake.get(NODES, None, "cli-node"), timeout=60, what="the CLI's node")
        node = fake.get(NODES, None, "cli-node")
        assert node["metadata"]["labels"]["zone"] == "desk"
        assert condition(node, "Ready")["status"] == "True"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert condition(fake.get(NODES, None, "cli-node"), "Ready")["status"] == "False"

    bad = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout.agent", "--node-name", "x", "--kubeconfig", str(tmp_path / "nope"),
        stderr=asyncio.subprocess.PIPE)
    _, err = await bad.communicate()
    assert bad.returncode == 2 and b"kubeconfig" in err and b"does not exist" in err
