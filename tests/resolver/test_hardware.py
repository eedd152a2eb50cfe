"""Node objects -> hardware classes."""

from __future__ import annotations

import pytest
from nodefactory import ascend, cpu, metal, nvidia

from turnout.hardware import ClusterFeatures, parse_nodes, parse_quantity


def test_each_class_is_recognised() -> None:
    hw = parse_nodes([nvidia(gpus=4), ascend(), metal(), cpu()])
    by_name = {n.name: n for n in hw.nodes}
    gpu = by_name["gpu-1"]
    assert (gpu.accelerator, gpu.devices, gpu.device_memory_mib) == ("nvidia", 4, 81920)
    assert gpu.product == "NVIDIA-A100-SXM4-80GB" and gpu.compute_capability == (8, 0)
    assert gpu.resource == "nvidia.com/gpu"
    npu = by_name["npu-1"]
    assert (npu.accelerator, npu.devices, npu.resource) == ("ascend", 8, "huawei.com/Ascend910B")
    assert npu.device_memory_mib == 65536
    mac = by_name["mac-1"]
    assert (mac.accelerator, mac.device_memory_mib, mac.arch) == ("metal", 65536, "arm64")
    assert by_name["cpu-1"].accelerator == "cpu" and by_name["cpu-1"].memory_mib == 65536


def test_ascend_310p_and_label_only_ascend() -> None:
    node = ascend(model="Ascend310P", npus=2)
    info = parse_nodes([node]).nodes[0]
    assert info.product == "Ascend310P" and info.devices == 2


def test_unschedulable_and_not_ready_nodes_do_not_count() -> None:
    cordoned = nvidia("cordoned", unschedulable=True)
    not_ready = cpu("sick")
    not_ready["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    unknown = cpu("unknown")
    unknown["status"]["conditions"] = [{"type": "Ready", "status": "Unknown"}]
    hw = parse_nodes([cordoned, not_ready, unknown, cpu("ok")])
    assert [n.name for n in hw.nodes] == ["ok"]


def test_nodes_tainted_not_ready_or_unreachable_do_not_count() -> None:
    # A node that just registered: Ready in its own status, but the API server's NodeTaint admission plugin
    # put node.kubernetes.io/not-ready on it until the node-lifecycle controller has seen it.
    joining = nvidia("joining")
    joining["spec"]["taints"] = [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]
    lost = cpu("lost")
    lost.setdefault("spec", {})["taints"] = [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]
    hw = parse_nodes([joining, lost, cpu("ok")])
    assert [n.name for n in hw.nodes] == ["ok"]


def test_zero_gpus_allocatable_is_a_cpu_node() -> None:
    hw = parse_nodes([nvidia(gpus=0)])
    assert hw.nodes[0].accelerator == "cpu"


def test_v1_list_and_garbage_are_accepted() -> None:
    hw = parse_nodes({"apiVersion": "v1", "kind": "List", "items": [cpu(), "junk", {"metadata": {}}]})
    assert [n.name for n in hw.nodes] == ["cpu-1"]


def test_quantities() -> None:
    assert parse_quantity("16Gi") == 16 * 2**30
    assert parse_quantity("500m") == 0.5
    assert parse_quantity("8") == 8
    assert parse_quantity("1.5G") == 1.5e9
    assert parse_quantity("lots") == 0


def _ascend_node(resource: str, labels: dict[str, str]) -> dict:
    return {
        "metadata": {"name": "npu", "labels": labels},
        "status": {"allocatable": {"cpu": "64", "memory": "512Gi", resource: "8"}},
    }


@pytest.mark.parametrize(
    ("resource", "labels", "mib", "product", "note"),
    [
        # MindCluster names every 910 chip huawei.com/Ascend910; the chip label says which.
        ("huawei.com/Ascend910", {"node.kubernetes.io/npu.chip.name": "910B3"}, 65536, "Ascend910B3", None),
        ("huawei.com/Ascend910", {"node.kubernetes.io/npu.chip.name": "910B4"}, 32768, "Ascend910B4", None),
        ("huawei.com/Ascend910", {"node.kubernetes.io/npu.chip.name": "910ProB"}, 32768, "Ascend910ProB", None),
        ("huawei.com/Ascend310P", {"node.kubernetes.io/npu.chip.name": "310P3"}, 24576, "Ascend310P3", None),
        ("huawei.com/Ascend910", {"accelerator-type": "module-910b-8"}, 32768, "Ascend910", "says a 910B server"),
        ("huawei.com/Ascend910", {}, 32768, "Ascend910", "assumed 32 GiB"),
        ("huawei.com/Ascend910B", {}, 65536, "Ascend910B", None),
        ("huawei.com/Ascend910", {"node.kubernetes.io/npu.chip.name": "910Z9"}, 32768, "Ascend910Z9", "not in"),
        ("huawei.com/Ascend950", {}, 32768, "Ascend950", "not in turnout's table"),
    ],
)
def test_ascend_memory_from_the_device_plugin_labels(
    resource: str, labels: dict[str, str], mib: int, product: str, note: str | None
) -> None:
    (info,) = parse_nodes([_ascend_node(resource, labels)]).nodes
    assert (info.accelerator, info.device_memory_mib, info.product) == ("ascend", mib, product)
    assert (note is None) == (info.memory_note is None)
    if note:
        assert note in info.memory_note


def test_ascend_selector_label_prefers_the_chip() -> None:
    (chip,) = parse_nodes([_ascend_node("huawei.com/Ascend910", {
        "accelerator": "huawei-Ascend910", "node.kubernetes.io/npu.chip.name": "910B3"})]).nodes
    assert chip.product_label == ("node.kubernetes.io/npu.chip.name", "910B3")
    (plain,) = parse_nodes([_ascend_node("huawei.com/Ascend910", {"accelerator": "huawei-Ascend910"})]).nodes
    assert plain.product_label == ("accelerator", "huawei-Ascend910")


def test_cluster_features_from_api_versions() -> None:
    assert ClusterFeatures.from_api_versions(["v1", "apps/v1", "leaderworkerset.x-k8s.io/v1"]).leader_worker_set
    assert not ClusterFeatures.from_api_versions(["v1", "apps/v1"]).leader_worker_set
    assert parse_nodes([cpu()], ClusterFeatures(leader_worker_set=True)).features.leader_worker_set
    assert parse_nodes([cpu()]) != parse_nodes([cpu()], ClusterFeatures(leader_worker_set=True))
