"""Sizing the hardware: tensor parallelism to fit, replicas over nodes, never CPU by surprise.

Over the node lists in examples/nodes/: one 8 × H100 node, two (with and without LeaderWorkerSet),
one node of 4 × T4, one Ascend 910B node, a CPU-only cluster and the mixed cluster.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import yaml
from nodefactory import ascend, cpu, nvidia

from turnout.api import ModelDeploymentSpec
from turnout.catalog import load_catalog
from turnout.hardware import ClusterFeatures, Hardware, parse_nodes
from turnout.resolver import Plan, Rejection, resolve

NODES = Path(__file__).resolve().parents[2] / "examples" / "nodes"
LWS = ClusterFeatures(leader_worker_set=True)


@functools.cache
def cluster(name: str, lws: bool = False) -> Hardware:
    return parse_nodes(yaml.safe_load((NODES / f"{name}.yaml").read_text())["items"], LWS if lws else None)


def run(model: dict[str, Any], hw: Hardware, **spec: Any) -> Plan | Rejection:
    return resolve(ModelDeploymentSpec.model_validate({"model": model, **spec}), hw)


QWEN72 = {"name": "qwen2.5-instruct", "size": 72, "format": "pytorch"}
LLAMA405 = {"name": "llama-3.1-instruct", "size": 405, "format": "pytorch"}
DEEPSEEK671 = {"name": "deepseek-v3", "size": 671, "format": "pytorch"}


def test_72b_on_one_8xh100_node_is_tensor_parallel_4() -> None:
    plan = run(QWEN72, cluster("h100-1x8"))
    assert isinstance(plan, Plan), plan.to_dict()
    assert (plan.engine, plan.accelerator, plan.tensor_parallel_size) == ("vllm", "nvidia", 4)
    assert plan.placement.devices == 4 and plan.placement.nodes_per_replica == 1
    assert plan.reason.startswith("vllm on 4 × NVIDIA-H100-80GB-HBM3: needs ~162 GiB of 4 × 71.7 GiB")
    assert plan.model.attention_heads == 64
    assert plan.status_fields() == {
        "tensorParallelSize": 4, "pipelineParallelSize": 1, "nodesPerReplica": 1, "devicesPerNode": 4}


def test_the_smallest_size_that_fits_and_divides_the_heads() -> None:
    hw = cluster("h100-1x8")
    assert run({"name": "qwen2.5-instruct", "size": 7, "format": "pytorch"}, hw).tensor_parallel_size == 1
    # 28 heads: 8 does not divide them, 4 does; one 24 GB GPU is too small, 2 are not.
    small = parse_nodes([nvidia("l4", product="NVIDIA-L4", memory_mib=23034, cc=(8, 9), gpus=8)])
    plan = run({"name": "qwen2.5-instruct", "size": 32, "format": "pytorch"}, small)
    assert plan.tensor_parallel_size == 4  # ~76 GiB: 4 × 20.2 GiB, 40 heads
    heads14 = run({"uri": "hf://x/y", "size": 30, "attentionHeads": 14, "architecture": "Qwen2ForCausalLM"}, small)
    assert heads14.engine == "transformers" and heads14.placement.devices == 4  # it shards no heads
    why = {r.engine: r.reason for r in heads14.rejected}["vllm"]
    assert "tensor parallel must divide the 14 attention heads of hf://x/y 30B: 1, 2, 7, 14" in why


def test_the_t4_node_serves_every_14b_pytorch_model_on_its_gpus() -> None:
    hw = cluster("t4")
    catalog = load_catalog()
    seen = 0
    for family in catalog.families("llm"):
        if not any(s.format == "pytorch" and s.size_b == 14 and s.hub == "huggingface" for s in family.specs):
            continue
        plan = run({"name": family.name, "size": 14, "format": "pytorch"}, hw)
        assert isinstance(plan, Plan), (family.name, plan.to_dict())
        assert plan.accelerator == "nvidia" and plan.placement.devices == 4, (family.name, plan.reason)
        seen += 1
    assert seen >= 5
    qwen = run({"name": "qwen2.5-instruct", "size": 14, "format": "pytorch"}, hw)
    assert qwen.engine == "vllm" and qwen.tensor_parallel_size == 4
    assert "4 × Tesla-T4: needs ~32.3 GiB of 4 × 13.5 GiB" in qwen.reason


def test_405b_over_two_nodes_needs_leaderworkerset() -> None:
    rejected = run(LLAMA405, cluster("h100-2x8"))
    assert isinstance(rejected, Rejection)
    assert (
        "needs ~906 GiB for 405B pytorch/none: 2 nodes of 8 × NVIDIA-H100-80GB-HBM3 (2 × 8 × 71.7 GiB); "
        "install LeaderWorkerSet (leaderworkerset.x-k8s.io/v1) to serve it" in rejected.message
    )
    plan = run(LLAMA405, cluster("h100-2x8", lws=True))
    assert isinstance(plan, Plan), plan.to_dict()
    assert plan.multi_node and plan.placement.nodes_per_replica == 2 and plan.placement.devices == 8
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (8, 2)
    assert dict(plan.placement.node_selector) == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert plan.reason.startswith("vllm on 2 nodes × 8 × NVIDIA-H100-80GB-HBM3: needs ~906 GiB of 2 × 8 × 71.7 GiB")
    assert set(plan.placement.nodes) == {"hgx-h100-1", "hgx-h100-2"}


def test_sglang_spans_nodes_with_one_tensor_parallel_group() -> None:
    plan = run(LLAMA405, cluster("h100-2x8", lws=True), engine="sglang")
    assert isinstance(plan, Plan), plan.to_dict()
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.placement.nodes_per_replica) == (16, 1, 2)


def test_more_nodes_than_the_cluster_has_says_how_many() -> None:
    for name in ("h100-1x8", "h100-2x8"):
        result = run(DEEPSEEK671, cluster(name, lws=True))
        assert isinstance(result, Rejection)
        have = 1 if name == "h100-1x8" else 2
        assert f"3 nodes of 8 × NVIDIA-H100-80GB-HBM3 (3 × 8 × 71.7 GiB); the cluster has {have}" in result.message
    one = run(LLAMA405, cluster("h100-1x8", lws=True))
    assert "2 nodes of 8 × NVIDIA-H100-80GB-HBM3 (2 × 8 × 71.7 GiB); the cluster has 1" in one.message


def test_engines_that_stay_on_one_node_say_so() -> None:
    reasons = {r.engine: r.reason for r in run(LLAMA405, cluster("h100-2x8")).rejected}
    assert "it needs 13 such devices on one node, and transformers runs on one node" in reasons["transformers"]


def test_an_explicit_count_is_honoured_and_refused_with_numbers() -> None:
    hw = cluster("h100-1x8")
    eight = run(QWEN72, hw, accelerator={"count": 8})
    assert eight.tensor_parallel_size == 8 and eight.placement.devices == 8
    two = run(QWEN72, hw, accelerator={"count": 2})
    assert isinstance(two, Rejection)
    why = {r.engine: r.reason for r in two.rejected}["vllm"]
    assert "accelerator.count 2 is too small: needs ~162 GiB for 72B pytorch/none" in why
    assert "2 × NVIDIA-H100-80GB-HBM3 offer 2 × 71.7 GiB = 143 GiB; it needs at least 3" in why
    odd = run({"name": "qwen2.5-instruct", "size": 7, "format": "pytorch"}, hw, accelerator={"count": 8})
    assert "accelerator.count 8 does not divide the 28 attention heads" in {
        r.engine: r.reason for r in odd.rejected}["vllm"]
    assert odd.engine == "transformers"  # device_map over 8 GPUs shards no heads
    sixteen = run(LLAMA405, cluster("h100-2x8", lws=True), accelerator={"count": 16})
    assert sixteen.placement.nodes_per_replica == 2 and sixteen.tensor_parallel_size == 8


def test_ascend_910b_reads_64gb_from_the_chip_label() -> None:
    hw = cluster("ascend-910b")
    (node,) = hw.nodes
    assert (node.device_memory_mib, node.product, node.memory_note) == (65536, "Ascend910B3", None)
    assert node.product_label == ("node.kubernetes.io/npu.chip.name", "910B3")
    plan = run(QWEN72, hw)
    assert isinstance(plan, Plan), plan.to_dict()
    assert (plan.engine, plan.accelerator, plan.tensor_parallel_size) == ("vllm", "ascend", 4)
    assert "4 × Ascend910B3: needs ~162 GiB of 4 × 57.6 GiB" in plan.reason
    assert plan.placement.resource == "huawei.com/Ascend910"


def test_an_unknown_ascend_chip_keeps_a_conservative_default_and_says_so() -> None:
    node = ascend("npu-x", model="Ascend910")
    node["metadata"]["labels"]["node.kubernetes.io/npu.chip.name"] = "910Z9"
    plan = run({"name": "qwen2.5-instruct", "size": 7, "format": "pytorch"}, parse_nodes([node]))
    assert isinstance(plan, Plan)
    assert plan.placement.usable_per_device_mib == int(32768 * 0.9)
    assert any("910Z9" in n and "assumed 32 GiB" in n for n in plan.notes), plan.notes


def test_cpu_only_cluster_plans_on_cpu() -> None:
    hw = cluster("cpu-only")
    gguf = run({"name": "qwen2.5-instruct", "size": 1.5, "format": "gguf"}, hw)
    assert (gguf.engine, gguf.accelerator) == ("llama.cpp", "cpu")
    torch = run({"name": "qwen2.5-instruct", "size": 0.5, "format": "pytorch"}, hw)
    assert (torch.engine, torch.accelerator) == ("transformers", "cpu")


def test_mixed_cluster_sizes_on_the_gpu_that_holds_it() -> None:
    hw = cluster("mixed")
    plan = run(QWEN72, hw)
    assert (plan.accelerator, plan.placement.product, plan.tensor_parallel_size) == (
        "nvidia", "NVIDIA-H100-80GB-HBM3", 4)
    small = run({"name": "qwen2.5-instruct", "size": 7, "format": "awq"}, hw)
    assert dict(small.placement.node_selector) == {}  # every GPU node holds it: let the scheduler pick
    assert set(small.placement.nodes) == {"gpu-a10g-1", "gpu-h100-1"}
    mid = run({"name": "qwen2.5-instruct", "size": 14, "format": "pytorch"}, hw)
    assert dict(mid.placement.node_selector) == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def test_auto_never_falls_back_to_a_gpu_nodes_cpu() -> None:
    """The bug: a model too large for the GPUs used to go to transformers on the GPU node's CPU."""
    one_gpu = parse_nodes([nvidia(product="NVIDIA-A10G", memory_mib=23028, gpus=1), cpu(memory="256Gi")])
    result = run({"name": "qwen2.5-instruct", "size": 72, "format": "gguf"}, one_gpu)
    assert isinstance(result, Rejection)
    assert "auto does not fall back to CPU where accelerators exist" in result.message
    assert "llama.cpp on nvidia: needs ~49.3 GiB for 72B gguf/" in result.message
    assert "it needs 3 such devices on one node" in result.message
    explicit = run({"name": "qwen2.5-instruct", "size": 72, "format": "gguf"}, one_gpu, accelerator={"type": "cpu"})
    assert (explicit.engine, explicit.accelerator) == ("llama.cpp", "cpu")
    selected = run({"name": "qwen2.5-instruct", "size": 72, "format": "gguf"}, one_gpu,
                   nodeSelector={"kubernetes.io/os": "linux"}, accelerator={"type": "auto"})
    assert isinstance(selected, Rejection)  # the selector still matches the GPU node


def test_a_node_selector_without_accelerators_allows_cpu() -> None:
    gpu = nvidia()
    plain = cpu()
    plain["metadata"]["labels"]["pool"] = "cpu"
    plan = run({"name": "qwen2.5-instruct", "size": 7, "format": "gguf"}, parse_nodes([gpu, plain]),
               nodeSelector={"pool": "cpu"})
    assert (plan.engine, plan.accelerator) == ("llama.cpp", "cpu")


def test_size_not_given_prefers_one_device_before_more() -> None:
    plan = run({"name": "qwen2.5-instruct", "format": "pytorch"}, cluster("h100-1x8"))
    assert plan.model.size_b == 14 and plan.tensor_parallel_size == 1
    big_only = parse_nodes([nvidia(product="NVIDIA-T4", memory_mib=15360, cc=(7, 5), gpus=4)])
    plan = run({"name": "llama-3.1-instruct", "format": "pytorch"}, big_only)
    assert plan.model.size_b == 8 and plan.tensor_parallel_size == 2  # no 8B fits one T4; two do


@functools.cache
def every_spec() -> tuple[ModelDeploymentSpec, ...]:
    """One spec per (family, size, format, quantization) of the catalog, as benchmarks/bench_resolver.py plans."""
    out = []
    for family in load_catalog():
        for spec in family.specs:
            for quant in spec.quantizations:
                model: dict[str, Any] = {"name": family.name, "format": spec.format, "quantization": quant}
                if spec.size_b is not None:
                    model["size"] = spec.size_b
                try:
                    out.append(ModelDeploymentSpec.model_validate({"model": model}))
                except ValueError:
                    continue
    return tuple(out)


ACCELERATOR_CLUSTERS = [("h100-1x8", False), ("h100-2x8", False), ("h100-2x8", True), ("t4", False),
                        ("ascend-910b", False), ("mixed", False)]


@pytest.mark.parametrize(("name", "lws"), ACCELERATOR_CLUSTERS, ids=[f"{n}{'+lws' * lws}" for n, lws in
                                                                        ACCELERATOR_CLUSTERS])
def test_no_catalog_spec_lands_on_cpu_on_an_accelerator_cluster(name: str, lws: bool) -> None:
    hw = cluster(name, lws)
    on_cpu = []
    for spec in every_spec():
        result = resolve(spec, hw)
        if isinstance(result, Plan) and result.accelerator == "cpu":
            on_cpu.append((spec.model.name, spec.model.size, spec.model.format, spec.model.quantization))
        if isinstance(result, Rejection):
            assert result.message
    assert on_cpu == []
