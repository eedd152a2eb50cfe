"""Node objects for resolver tests, shaped like the API server's."""

from __future__ import annotations

from typing import Any


def _node(name: str, labels: dict[str, str], alloc: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", **labels}},
        "spec": spec,
        "status": {"allocatable": alloc, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def nvidia(
    name: str = "gpu-1",
    product: str = "NVIDIA-A100-SXM4-80GB",
    memory_mib: int | None = 81920,
    cc: tuple[int, int] | None = (8, 0),
    gpus: int = 1,
    **spec: Any,
) -> dict[str, Any]:
    labels = {"nvidia.com/gpu.product": product}
    if memory_mib is not None:
        labels["nvidia.com/gpu.memory"] = str(memory_mib)
    if cc is not None:
        labels["nvidia.com/gpu.compute.major"], labels["nvidia.com/gpu.compute.minor"] = map(str, cc)
    return _node(name, labels, {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": str(gpus)}, **spec)


def ascend(name: str = "npu-1", model: str = "Ascend910B", npus: int = 8) -> dict[str, Any]:
    return _node(
        name, {"accelerator": f"huawei-{model}"}, {"cpu": "64", "memory": "512Gi", f"huawei.com/{model}": str(npus)}
    )


def metal(name: str = "mac-1", memory: str = "64Gi") -> dict[str, Any]:
    return _node(
        name,
        {"turnout.dev/accelerator": "metal", "turnout.dev/memory": memory, "kubernetes.io/arch": "arm64"},
        {"cpu": "12", "memory": memory, "turnout.dev/metal": "1"},
        taints=[{"key": "turnout.dev/agent", "value": "true", "effect": "NoSchedule"}],
    )


def cpu(name: str = "cpu-1", memory: str = "64Gi") -> dict[str, Any]:
    return _node(name, {}, {"cpu": "16", "memory": memory})


def four_classes() -> list[dict[str, Any]]:
    return [nvidia(), ascend(), metal(), cpu()]
