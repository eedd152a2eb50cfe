"""One node of every hardware class, for contract tests that need every plan."""

from __future__ import annotations

from typing import Any


def every_class() -> list[dict[str, Any]]:
    def node(name: str, labels: dict[str, str], alloc: dict[str, str], taints: list | None = None) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints or []},
            "status": {"allocatable": alloc},
        }

    return [
        node(
            "gpu",
            {
                "nvidia.com/gpu.product": "NVIDIA-H100",
                "nvidia.com/gpu.memory": "81559",
                "nvidia.com/gpu.compute.major": "9",
                "nvidia.com/gpu.compute.minor": "0",
            },
            {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "8"},
        ),
        node(
            "npu", {"accelerator": "huawei-Ascend910B"}, {"cpu": "64", "memory": "512Gi", "huawei.com/Ascend910B": "8"}
        ),
        node(
            "mac",
            {"turnout.dev/accelerator": "metal", "turnout.dev/memory": "192Gi"},
            {"cpu": "24", "memory": "192Gi", "turnout.dev/metal": "1"},
            [{"key": "turnout.dev/agent", "value": "true", "effect": "NoSchedule"}],
        ),
        node("cpu", {}, {"cpu": "32", "memory": "256Gi"}),
    ]
