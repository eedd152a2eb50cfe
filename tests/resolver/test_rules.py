"""Table-driven tests: every engine rule and every rejection reason of the resolver."""

from __future__ import annotations

from typing import Any

import pytest
from nodefactory import ascend, cpu, four_classes, metal, nvidia

from turnout.api import ModelDeploymentSpec
from turnout.config import OperatorConfig
from turnout.hardware import parse_nodes
from turnout.resolver import Plan, Rejection, resolve


def run(spec: dict[str, Any], nodes: list[dict[str, Any]], **config: Any) -> Plan | Rejection:
    return resolve(ModelDeploymentSpec.model_validate(spec), parse_nodes(nodes), OperatorConfig(**config))


def reasons(result: Plan | Rejection) -> dict[str, str]:
    return {r.engine: r.reason for r in result.rejected}


QWEN7 = {"name": "qwen2.5-instruct", "size": 7}
EXOTIC = {"uri": "hf://example/exotic-7b", "architecture": "ExoticForCausalLM", "size": 7}

PLANS = [
    # id, spec, nodes, engine, accelerator, image fragment
    ("nvidia-pytorch-vllm", {"model": {**QWEN7, "format": "pytorch"}}, [nvidia()], "vllm", "nvidia", "vllm-cuda"),
    ("nvidia-awq-vllm", {"model": {**QWEN7, "format": "awq"}}, [nvidia()], "vllm", "nvidia", "vllm-cuda"),
    (
        "nvidia-gptq-vllm",
        {"model": {**QWEN7, "format": "gptq", "quantization": "Int8"}},
        [nvidia()],
        "vllm",
        "nvidia",
        "vllm-cuda",
    ),
    ("nvidia-unlisted-arch-transformers", {"model": EXOTIC}, [nvidia()], "transformers", "nvidia", "transformers-cuda"),
    (
        "nvidia-gguf-llamacpp-cuda",
        {"model": {**QWEN7, "format": "gguf"}},
        [nvidia()],
        "llama.cpp",
        "nvidia",
        "llamacpp-cuda",
    ),
    (
        "nvidia-sglang-requested",
        {"model": {**QWEN7, "format": "pytorch"}, "engine": "sglang"},
        [nvidia()],
        "sglang",
        "nvidia",
        "sglang-cuda",
    ),
    (
        "nvidia-fp8-hopper",
        {"model": {"name": "qwen3", "size": 8, "format": "fp8"}},
        [nvidia(product="NVIDIA-H100", cc=(9, 0))],
        "vllm",
        "nvidia",
        "vllm-cuda",
    ),
    ("ascend-vllm", {"model": {**QWEN7, "format": "pytorch"}}, [ascend()], "vllm", "ascend", "vllm-ascend"),
    ("ascend-unlisted-arch-transformers", {"model": EXOTIC}, [ascend()], "transformers", "ascend", "transformers-npu"),
    ("metal-mlx", {"model": {**QWEN7, "format": "mlx"}}, [metal()], "mlx", "metal", "mlx-metal"),
    ("metal-gguf-llamacpp", {"model": {**QWEN7, "format": "gguf"}}, [metal()], "llama.cpp", "metal", "llamacpp-metal"),
    (
        "metal-pytorch-transformers",
        {"model": {**QWEN7, "format": "pytorch"}},
        [metal()],
        "transformers",
        "metal",
        "transformers-metal",
    ),
    ("metal-prefers-mlx-format", {"model": QWEN7}, [metal()], "mlx", "metal", "mlx-metal"),
    ("cpu-gguf-llamacpp", {"model": {**QWEN7, "format": "gguf"}}, [cpu()], "llama.cpp", "cpu", "llamacpp-cpu"),
    (
        "cpu-pytorch-transformers",
        {"model": {**QWEN7, "format": "pytorch"}},
        [cpu()],
        "transformers",
        "cpu",
        "transformers-cpu",
    ),
    ("cpu-prefers-gguf", {"model": QWEN7}, [cpu()], "llama.cpp", "cpu", "llamacpp-cpu"),
    ("auto-prefers-nvidia", {"model": {**QWEN7, "format": "pytorch"}}, four_classes(), "vllm", "nvidia", "vllm-cuda"),
    (
        "auto-ascend-before-metal",
        {"model": {**QWEN7, "format": "pytorch"}},
        [ascend(), metal(), cpu()],
        "vllm",
        "ascend",
        "vllm-ascend",
    ),
    (
        "auto-metal-before-cpu",
        {"model": {**QWEN7, "format": "gguf"}},
        [metal(), cpu()],
        "llama.cpp",
        "metal",
        "llamacpp-metal",
    ),
    (
        "explicit-cpu-beside-a-small-gpu",
        {"model": {"name": "qwen2.5-instruct", "size": 72, "format": "gguf"}, "accelerator": {"type": "cpu"}},
        [nvidia(product="NVIDIA-A10G", memory_mib=23028), cpu(memory="256Gi")],
        "llama.cpp",
        "cpu",
        "llamacpp-cpu",
    ),
    ("embedding-transformers", {"model": {"name": "bge-large-en"}}, [cpu()], "transformers", "cpu", "transformers-cpu"),
    (
        "embedding-vllm-when-asked",
        {"model": {"name": "bge-large-en"}, "engine": "vllm"},
        [nvidia()],
        "vllm",
        "nvidia",
        "vllm-cuda",
    ),
    (
        "embedding-gguf-llamacpp",
        {"model": {"uri": "hf://x/emb/emb-Q8_0.gguf", "type": "embedding"}},
        [cpu()],
        "llama.cpp",
        "cpu",
        "llamacpp-cpu",
    ),
    (
        "rerank-transformers",
        {"model": {"name": "bge-reranker-large"}},
        [cpu()],
        "transformers",
        "cpu",
        "transformers-cpu",
    ),
]


@pytest.mark.parametrize(
    ("spec", "nodes", "engine", "accelerator", "image"), [p[1:] for p in PLANS], ids=[p[0] for p in PLANS]
)
def test_engine_choice(spec: dict, nodes: list, engine: str, accelerator: str, image: str) -> None:
    result = run(spec, nodes)
    assert isinstance(result, Plan), result.to_dict()
    assert (result.engine, result.accelerator) == (engine, accelerator)
    assert image in result.image
    assert {r.engine for r in result.rejected} | {engine} == {"vllm", "sglang", "llama.cpp", "transformers", "mlx"}


def test_sglang_only_when_enabled() -> None:
    spec = {"model": {**QWEN7, "format": "pytorch"}}
    assert run(spec, [nvidia()]).engine == "vllm"
    assert "not enabled for engine: auto" in reasons(run(spec, [nvidia()]))["sglang"]
    enabled = run(spec, [nvidia()], auto_engines=("sglang", "transformers"))
    assert enabled.engine == "sglang"


REJECTIONS = [
    # id, spec, nodes, {engine: fragment of its reason}
    (
        "mlx-not-on-nvidia",
        {"model": {**QWEN7, "format": "mlx"}},
        [nvidia()],
        {
            "mlx": "needs a metal node; none can take",
            "vllm": "does not serve mlx",
            "transformers": "does not serve mlx",
        },
    ),
    (
        "awq-not-on-cpu",
        {"model": {**QWEN7, "format": "awq"}},
        [cpu()],
        {
            "transformers": "awq weights need a CUDA GPU",
            "llama.cpp": "serves gguf weights, not awq",
            "vllm": "needs an nvidia/ascend node; none can take its pods",
        },
    ),
    (
        "awq-not-on-ascend",
        {"model": {**QWEN7, "format": "awq"}},
        [ascend()],
        {"vllm": "vllm-ascend serves pytorch weights", "transformers": "need a CUDA GPU"},
    ),
    (
        "fp8-needs-ada",
        {"model": {"name": "qwen3", "size": 8, "format": "fp8"}},
        [nvidia(cc=(8, 0))],
        {"vllm": "compute capability >= 8.9", "transformers": "does not serve fp8"},
    ),
    (
        "fp8-unlabelled-cc",
        {"model": {"name": "qwen3", "size": 8, "format": "fp8"}},
        [nvidia(cc=None)],
        {"vllm": "does not label it"},
    ),
    (
        "too-big",
        {"model": {"name": "qwen2.5-instruct", "size": 72, "format": "pytorch"}, "accelerator": {"type": "nvidia"}},
        [nvidia()],
        {"vllm": "needs ~", "transformers": "offers"},
    ),
    (
        "too-many-gpus",
        {"model": {**QWEN7, "format": "pytorch"}, "accelerator": {"type": "nvidia", "count": 4}},
        [nvidia(gpus=2)],
        {"vllm": "needs 4 devices on one node; the most any node has is 2"},
    ),
    (
        "auto-never-falls-back-to-cpu",
        {"model": {"name": "qwen2.5-instruct", "size": 72, "format": "gguf"}},
        [nvidia(product="NVIDIA-A10G", memory_mib=23028), cpu(memory="256Gi")],
        {
            "llama.cpp": "nvidia: needs ~49.3 GiB for 72B gguf/",
            "transformers": "cpu: auto does not fall back to CPU where accelerators exist",
        },
    ),
    (
        "missing-product",
        {"model": {**QWEN7, "format": "pytorch"}, "accelerator": {"type": "nvidia", "product": "NVIDIA-B200"}},
        [nvidia()],
        {"vllm": "no nvidia node has product NVIDIA-B200 (found: NVIDIA-A100-SXM4-80GB)"},
    ),
    (
        "no-nodes",
        {"model": {**QWEN7, "format": "gguf"}},
        [],
        {"llama.cpp": "needs an nvidia/metal/cpu node; none can take"},
    ),
    (
        "explicit-engine-never-switches",
        {"model": {**QWEN7, "format": "pytorch"}, "engine": "mlx"},
        [metal()],
        {"mlx": "mlx serves mlx weights, not pytorch", "transformers": "not requested (engine: mlx)"},
    ),
    (
        "explicit-transformers-awq-on-cpu",
        {"model": {**QWEN7, "format": "awq"}, "engine": "transformers"},
        [cpu()],
        {"transformers": "need a CUDA GPU"},
    ),
    ("unknown-model", {"model": {"name": "qwen2.5-instuct"}}, [cpu()], {"vllm": "did you mean qwen2.5-instruct"}),
    (
        "no-such-spec",
        {"model": {"name": "qwen2.5-instruct", "size": 3.3}},
        [cpu()],
        {"llama.cpp": "has no spec with size 3.3B"},
    ),
    (
        "tainted-gpu-not-for-cpu-pods",
        {"model": {**QWEN7, "format": "gguf"}, "accelerator": {"type": "cpu"}},
        [nvidia(taints=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])],
        {"llama.cpp": "needs a cpu node; none can take its pods"},
    ),
    (
        "node-selector-filters",
        {"model": {**QWEN7, "format": "gguf"}, "nodeSelector": {"zone": "b"}},
        [cpu()],
        {"llama.cpp": "none can take its pods"},
    ),
]


@pytest.mark.parametrize(("spec", "nodes", "expected"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS])
def test_rejection_reasons(spec: dict, nodes: list, expected: dict[str, str]) -> None:
    result = run(spec, nodes)
    assert isinstance(result, Rejection), result.to_dict()
    got = reasons(result)
    assert set(got) == {"vllm", "sglang", "llama.cpp", "transformers", "mlx"}
    for engine, fragment in expected.items():
        assert fragment in got[engine], (engine, got[engine])
    assert result.message


def test_missing_image_is_a_reason() -> None:
    images = OperatorConfig().images
    without = {e: {a: i for a, i in per.items() if (e, a) != ("vllm", "nvidia")} for e, per in images.items()}
    result = run({"model": {**QWEN7, "format": "pytorch"}}, [nvidia()], images=without)
    assert result.engine == "transformers"
    assert "no vllm image for nvidia" in reasons(result)["vllm"]


def test_memory_rejection_says_the_numbers() -> None:
    result = run(
        {"model": {"name": "qwen2.5-instruct", "size": 72, "format": "pytorch"}, "accelerator": {"type": "nvidia"}},
        [nvidia()],
    )
    reason = reasons(result)["vllm"]
    assert "72B pytorch/none" in reason and "GiB" in reason and "NVIDIA-A100-SXM4-80GB" in reason


def test_tensor_parallel_size_is_the_device_count() -> None:
    plan = run(
        {
            "model": {"name": "qwen2.5-instruct", "size": 72, "format": "pytorch"},
            "accelerator": {"type": "nvidia", "count": 4},
        },
        [nvidia(gpus=8)],
    )
    assert isinstance(plan, Plan)
    assert plan.tensor_parallel_size == 4 and plan.placement.devices == 4


def test_size_choice_largest_on_gpu_smallest_on_cpu() -> None:
    gpu = run({"model": {"name": "qwen2.5-instruct", "format": "pytorch"}}, [nvidia(memory_mib=24576)])
    assert gpu.model.size_b == 7 and any("largest that fits" in n for n in gpu.notes)
    small = run({"model": {"name": "qwen2.5-instruct", "format": "gguf"}}, [cpu()])
    assert small.model.size_b == 0.5 and any("smallest" in n for n in small.notes)


def test_gguf_quantization_preference_on_cpu() -> None:
    plan = run({"model": {**QWEN7, "format": "gguf"}}, [cpu()])
    assert plan.model.quantization.lower() == "q4_k_m"


def test_best_fit_product_selector_keeps_big_gpus_free() -> None:
    nodes = [
        nvidia("small", product="NVIDIA-L4", memory_mib=23034, cc=(8, 9)),
        nvidia("big", product="NVIDIA-H100", memory_mib=81559, cc=(9, 0)),
        nvidia("tiny", product="NVIDIA-T4", memory_mib=15360, cc=(7, 5)),
    ]
    plan = run({"model": {**QWEN7, "format": "pytorch"}}, nodes)
    assert dict(plan.placement.node_selector) == {"nvidia.com/gpu.product": "NVIDIA-L4"}


def test_metal_plan_tolerates_the_agent_taint() -> None:
    plan = run({"model": {**QWEN7, "format": "mlx"}}, [metal()])
    assert dict(plan.placement.node_selector) == {"turnout.dev/accelerator": "metal"}
    assert {"key": "turnout.dev/agent", "operator": "Exists", "effect": "NoSchedule"} in [
        dict(t) for t in plan.placement.tolerations
    ]
    assert plan.device == "mps"


def test_unknown_size_skips_fit_with_a_note() -> None:
    plan = run({"model": {"uri": "hf://org/some-model"}}, [cpu()])
    assert isinstance(plan, Plan) and plan.engine == "transformers"
    assert any("size unknown" in n for n in plan.notes)


def test_unknown_architecture_keeps_auto_off_vllm_but_explicit_vllm_allowed() -> None:
    auto = run({"model": {"uri": "hf://org/some-model", "size": 7}}, [nvidia()])
    assert auto.engine == "transformers"
    assert "architecture unknown" in reasons(auto)["vllm"]
    explicit = run({"model": {"uri": "hf://org/some-model", "size": 7}, "engine": "vllm"}, [nvidia()])
    assert explicit.engine == "vllm"


def test_uri_format_inference() -> None:
    plan = run({"model": {"uri": "hf://org/m-GGUF/m-Q5_K_M.gguf", "size": 1}}, [cpu()])
    assert (plan.model.format, plan.model.quantization) == ("gguf", "Q5_K_M")
    awq = run(
        {"model": {"uri": "hf://Qwen/Qwen2.5-7B-Instruct-AWQ", "name": "qwen2.5-instruct", "size": 7}}, [nvidia()]
    )
    assert awq.model.format == "awq" and awq.model.architecture == "Qwen2ForCausalLM"


def test_same_input_same_plan() -> None:
    spec = {"model": {"name": "qwen2.5-instruct"}}
    assert run(spec, four_classes()).to_dict() == run(spec, list(reversed(four_classes()))).to_dict()


def test_candidates_list_every_engine_that_could_serve() -> None:
    plan = run({"model": {**QWEN7, "format": "pytorch"}}, [nvidia()])
    assert plan.candidates[0] == "vllm" and "transformers" in plan.candidates
    assert "could serve it too" in reasons(plan)["transformers"]


def test_plan_and_rejection_have_one_shape() -> None:
    from turnout.resolver.plan import CHOSEN_FIELDS

    plan = run({"model": {**QWEN7, "format": "gguf"}}, [cpu()]).to_dict()
    rejection = run({"model": {**QWEN7, "format": "pytorch"}, "engine": "sglang"}, [cpu()]).to_dict()
    assert tuple(plan)[: len(CHOSEN_FIELDS)] == CHOSEN_FIELDS
    assert list(rejection) == [*CHOSEN_FIELDS, "reason", "candidates", "rejected"]
    assert all(rejection[k] is None for k in CHOSEN_FIELDS) and rejection["candidates"] == []
