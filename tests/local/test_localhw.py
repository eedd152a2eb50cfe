"""Hardware detection for local mode, with faked probes for each class, and what the resolver picks."""

from __future__ import annotations

import pytest

from turnout.api import ModelDeploymentSpec
from turnout.hardware import parse_nodes
from turnout.localhw import Probes, detect_node
from turnout.resolver import resolve

NVIDIA_SMI = "NVIDIA H100 80GB HBM3, 81559, 9.0\nNVIDIA H100 80GB HBM3, 81559, 9.0\n"
NPU_SMI = "NPU ID : 0\nChip Name : 910B3\nNPU ID : 1\n"


def probes(
    system: str = "Linux",
    machine: str = "x86_64",
    commands: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> Probes:
    commands = commands or {}
    return Probes(
        run=lambda argv: commands.get(argv[0]),
        system=lambda: system,
        machine=lambda: machine,
        cpu_count=lambda: 8,
        memory_bytes=lambda: 64 * 2**30,
        env=env or {},
    )


def test_nvidia_from_nvidia_smi() -> None:
    node = parse_nodes([detect_node(probes(commands={"nvidia-smi": NVIDIA_SMI}))]).nodes[0]
    assert (node.accelerator, node.devices, node.device_memory_mib) == ("nvidia", 2, 81559)
    assert node.product == "NVIDIA-H100-80GB-HBM3" and node.compute_capability == (9, 0)


def test_ascend_from_npu_smi() -> None:
    node = parse_nodes([detect_node(probes(commands={"npu-smi": NPU_SMI}))]).nodes[0]
    assert (node.accelerator, node.devices, node.product) == ("ascend", 2, "Ascend910B")


def test_apple_silicon_is_metal() -> None:
    node = parse_nodes([detect_node(probes(system="Darwin", machine="arm64"))]).nodes[0]
    assert node.accelerator == "metal" and node.device_memory_mib == 65536


def test_intel_mac_and_plain_linux_are_cpu() -> None:
    for p in (probes(system="Darwin", machine="x86_64"), probes()):
        node = parse_nodes([detect_node(p)]).nodes[0]
        assert node.accelerator == "cpu" and node.memory_mib == 65536


def test_force_cpu_ignores_gpus() -> None:
    p = probes(commands={"nvidia-smi": NVIDIA_SMI}, env={"TURNOUT_FORCE_CPU": "1"})
    assert parse_nodes([detect_node(p)]).nodes[0].accelerator == "cpu"


def test_broken_nvidia_smi_output_falls_back() -> None:
    node = parse_nodes([detect_node(probes(commands={"nvidia-smi": "garbage"}))]).nodes[0]
    assert node.accelerator == "nvidia" and node.device_memory_mib is None


@pytest.mark.parametrize(
    ("p", "engine", "accelerator"),
    [
        (probes(commands={"nvidia-smi": NVIDIA_SMI}), "vllm", "nvidia"),
        (probes(commands={"npu-smi": NPU_SMI}), "vllm", "ascend"),
        (probes(system="Darwin", machine="arm64"), "mlx", "metal"),
        (probes(), "llama.cpp", "cpu"),
    ],
    ids=["nvidia", "ascend", "metal", "cpu"],
)
def test_resolver_decision_per_local_class(p: Probes, engine: str, accelerator: str) -> None:
    spec = ModelDeploymentSpec.model_validate({"model": {"name": "qwen2.5-instruct", "size": 7}})
    plan = resolve(spec, parse_nodes([detect_node(p)]))
    assert (plan.engine, plan.accelerator) == (engine, accelerator)
