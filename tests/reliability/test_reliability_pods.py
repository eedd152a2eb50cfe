"""Pods as rendered: shutdown timing that fits the grace period, restricted security, secrets by reference.

``test_manifests.py`` (tests/render) already checks the restricted security context,
the probes and the API key mounted as a file; these tests add what issue 9 asks on top.
"""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
import uvicorn

from turnout.api import ModelDeployment, ModelDeploymentSpec
from turnout.config import OperatorConfig
from turnout.hardware import parse_nodes
from turnout.render import render
from turnout.render.manifests import SHUTDOWN_GRACE_ENV, shutdown_timing
from turnout.resolver import Plan, resolve
from turnout.shim import __main__ as shim_main
from turnout.shimargs import ShimArgs

CPU = parse_nodes([{"metadata": {"name": "c"}, "status": {"allocatable": {"cpu": "8", "memory": "64Gi"}}}])
GPU = parse_nodes([{"metadata": {"name": "g", "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                                                         "nvidia.com/gpu.memory": "81559",
                                                         "nvidia.com/gpu.compute.major": "9"}},
                    "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "8"}}}])
GGUF = {"model": {"name": "qwen2.5-instruct", "size": 0.5, "format": "gguf"}}
SECRET_VALUE = "sk-never-rendered-0123456789"


def _objects(spec: dict[str, Any], config: OperatorConfig | None = None, nodes: Any = CPU) -> list[dict[str, Any]]:
    plan = resolve(ModelDeploymentSpec.model_validate(spec), nodes)
    assert isinstance(plan, Plan), plan
    md = ModelDeployment.model_validate({"metadata": {"name": "m", "namespace": "ns"}, "spec": spec})
    return render(plan, md, config)


def _pod(spec: dict[str, Any], config: OperatorConfig | None = None, nodes: Any = CPU) -> dict[str, Any]:
    dep = next(o for o in _objects(spec, config, nodes) if o["kind"] == "Deployment")
    return dep["spec"]["template"]["spec"]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


# -- SIGTERM: preStop + shim grace fit in terminationGracePeriodSeconds ---------------------


@pytest.mark.parametrize("grace", [1, 2, 3, 4, 7, 10, 20, 30, 60, 120, 600, 3600])
def test_prestop_plus_shim_grace_fit_in_the_termination_grace_period(grace: int) -> None:
    pod = _pod(GGUF, OperatorConfig(termination_grace_seconds=grace))
    container = pod["containers"][0]
    assert pod["terminationGracePeriodSeconds"] == grace
    prestop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    shim_grace = int(_env(container)[SHUTDOWN_GRACE_ENV]["value"])
    assert shim_grace >= 1
    assert prestop + shim_grace <= grace
    assert (prestop, shim_grace) == shutdown_timing(grace)
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod},
        kubernetes_validate.latest_version(), strict=True)


def test_default_config_leaves_endpoints_time_and_a_margin_for_the_engine() -> None:
    pod = _pod(GGUF)
    container = pod["containers"][0]
    assert container["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    shim_grace = int(_env(container)[SHUTDOWN_GRACE_ENV]["value"])
    assert pod["terminationGracePeriodSeconds"] - 5 - shim_grace >= 5  # time to stop the engine before SIGKILL


def test_the_rendered_variable_is_the_one_the_shim_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shim hands the rendered grace to uvicorn as its graceful-shutdown timeout."""
    assert SHUTDOWN_GRACE_ENV == shim_main.GRACE_ENV
    value = _env(_pod(GGUF)["containers"][0])[SHUTDOWN_GRACE_ENV]["value"]
    seen: list[uvicorn.Config] = []

    class Recorder(uvicorn.Server):
        def run(self, sockets: Any = None) -> None:
            seen.append(self.config)

    monkeypatch.setattr(uvicorn, "Server", Recorder)
    monkeypatch.setenv(SHUTDOWN_GRACE_ENV, value)
    args = ShimArgs(engine="sglang", model="/models/x", served_model_name="x", host="127.0.0.1", port=1)
    assert shim_main.main(args.to_argv()[1:]) == 0
    assert seen[0].timeout_graceful_shutdown == int(value)


# -- Pods: restricted, read-only root, writable mounts only for cache, tmp and shm ---------------


@pytest.mark.parametrize("spec,nodes", [
    (GGUF, CPU),
    ({"model": {"name": "qwen2.5-instruct", "size": 7, "format": "awq", "quantization": "Int4"},
      "cache": {"size": "20Gi"}}, GPU),
    ({"model": {"uri": "pvc://weights/qwen/model.gguf", "format": "gguf"}}, CPU),
], ids=["llama.cpp-cpu", "vllm-nvidia", "pvc-source"])
def test_read_only_root_with_writable_mounts_only_for_cache_tmp_and_shm(spec: dict[str, Any], nodes: Any) -> None:
    pod = _pod(spec, nodes=nodes)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert not any("hostPath" in v for v in volumes.values())
    for c in pod["containers"]:
        ctx = c["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]} and "privileged" not in ctx
        writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
        assert writable <= {"/models", "/tmp", "/dev/shm"}, writable
        assert {"/models", "/tmp"} <= writable


# -- Secrets: by reference only ---------------------------------------------------------------


def test_secrets_are_referenced_never_rendered() -> None:
    """API key as a read-only file, HF token as a secretKeyRef; neither value nor a key flag on the command line."""
    spec = {**GGUF, "apiKeySecretRef": {"name": "api", "key": "key"},
            "hfTokenSecretRef": {"name": "hf", "key": "token"}}
    objects = _objects(spec)
    pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert _env(container)["HF_TOKEN"] == {"name": "HF_TOKEN",
                                           "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    argv = container["command"]
    assert "--api-key" not in argv and not any(a.startswith("--api-key=") for a in argv)
    key_file = argv[argv.index("--api-key-file") + 1]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-key")
    assert mount["readOnly"] is True and key_file.startswith(mount["mountPath"] + "/")
    volume = next(v for v in pod["volumes"] if v["name"] == "api-key")
    assert volume["secret"]["defaultMode"] & 0o007 == 0  # not world-readable
    # nothing in any rendered object carries a secret's content, only names and keys
    text = json.dumps(objects)
    assert '"value": "sk-' not in text and SECRET_VALUE not in text
    assert all("value" not in e for e in container["env"] if e["name"] == "HF_TOKEN")
