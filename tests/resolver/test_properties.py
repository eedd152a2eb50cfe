"""Properties: the resolver never raises, and is a pure, deterministic function."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nodefactory import ascend, cpu, metal, nvidia

from turnout.api import ModelDeploymentSpec
from turnout.catalog import load_catalog
from turnout.hardware import parse_nodes
from turnout.resolver import Plan, Rejection, resolve

CATALOG_NAMES = load_catalog().names()
FORMATS = ["pytorch", "gptq", "awq", "fp4", "fp8", "bnb", "gguf", "ggufv2", "mlx"]
QUANTS = ["none", "Int4", "Int8", "Int3", "Q4_K_M", "q8_0", "4bit", "8bit", "fp8", "bf16", "weird"]

names = st.one_of(st.sampled_from(CATALOG_NAMES), st.text(min_size=1, max_size=30))
models = st.fixed_dictionaries(
    {},
    optional={
        "name": names,
        "uri": st.sampled_from(["hf://a/b", "hf://a/b-GGUF/b-Q4_K_M.gguf", "file:///m", "pvc://c/p", "s3://b/k-awq"]),
        "size": st.floats(min_value=0.01, max_value=2000),
        "format": st.sampled_from(FORMATS),
        "quantization": st.sampled_from(QUANTS),
        "architecture": st.sampled_from(["LlamaForCausalLM", "Qwen2ForCausalLM", "NopeForCausalLM"]),
        "type": st.sampled_from(["llm", "embedding", "rerank"]),
    },
).filter(lambda m: "name" in m or "uri" in m)
specs = st.fixed_dictionaries(
    {"model": models},
    optional={
        "engine": st.sampled_from(["auto", "vllm", "sglang", "llama.cpp", "transformers", "mlx"]),
        "accelerator": st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(["auto", "nvidia", "ascend", "metal", "cpu"]),
                "count": st.integers(1, 16),
                "product": st.sampled_from(["NVIDIA-A10G", "NVIDIA-H100"]),
            },
        ),
        "nodeSelector": st.dictionaries(st.sampled_from(["zone", "kubernetes.io/os"]), st.sampled_from(["a", "linux"])),
        "tolerations": st.lists(st.fixed_dictionaries({"operator": st.just("Exists")}), max_size=1),
    },
)
node = st.one_of(
    st.builds(
        nvidia,
        name=st.sampled_from(["g1", "g2"]),
        product=st.sampled_from(["NVIDIA-A10G", "NVIDIA-H100"]),
        memory_mib=st.one_of(st.none(), st.integers(1024, 200_000)),
        cc=st.one_of(st.none(), st.tuples(st.integers(6, 10), st.integers(0, 9))),
        gpus=st.integers(0, 8),
    ),
    st.builds(
        ascend, name=st.sampled_from(["n1", "n2"]), model=st.sampled_from(["Ascend910", "Ascend910B", "Ascend310P"])
    ),
    st.builds(metal, name=st.sampled_from(["m1"]), memory=st.sampled_from(["8Gi", "192Gi"])),
    st.builds(cpu, name=st.sampled_from(["c1", "c2"]), memory=st.sampled_from(["1Gi", "64Gi", "2Ti"])),
)


def _valid(spec: dict) -> ModelDeploymentSpec | None:
    try:
        return ModelDeploymentSpec.model_validate(spec)
    except ValueError:
        return None  # the API (CRD + validators) rejects it before the resolver sees it


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(spec=specs, nodes=st.lists(node, max_size=5))
def test_resolver_never_raises_and_is_deterministic(spec: dict, nodes: list) -> None:
    parsed = _valid(spec)
    if parsed is None:
        return
    hw = parse_nodes(nodes)
    result = resolve(parsed, hw)
    assert isinstance(result, Plan | Rejection)
    assert {r.engine for r in result.rejected} | ({result.engine} if result.engine else set()) == {
        "vllm",
        "sglang",
        "llama.cpp",
        "transformers",
        "mlx",
    }
    assert all(r.reason for r in result.rejected)
    assert resolve(parsed, hw).to_dict() == result.to_dict()
    if isinstance(result, Plan):
        assert result.image and result.engine in result.candidates
        if parsed.engine != "auto":
            assert result.engine == parsed.engine
        if parsed.accelerator.type != "auto":
            assert result.accelerator == parsed.accelerator.type


def test_resolver_imports_no_clients_or_servers() -> None:
    """Importing and running the resolver pulls in no Kubernetes client, kopf, or server code.

    (Standard-library socket/subprocess come in through pydantic; the import-linter contract
    below forbids the resolver importing them itself.)
    """
    code = (
        "import sys\n"
        "from turnout.resolver import resolve\n"
        "from turnout.render import render\n"
        "from turnout.hardware import parse_nodes\n"
        "from turnout.api import ModelDeploymentSpec\n"
        "resolve(ModelDeploymentSpec.model_validate({'model': {'name': 'qwen2.5-instruct'}}), parse_nodes([]))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'kopf', 'kubernetes', 'aiohttp', 'httpx', 'requests', 'fastapi', 'uvicorn'} "
        "or m.startswith(('turnout.controller', 'turnout.shim.app')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_import_linter_contract_holds() -> None:
    lint = subprocess.run([sys.executable, "-m", "importlinter.cli"], capture_output=True, text=True)
    if "No module named" in lint.stderr:
        lint = subprocess.run(["lint-imports"], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
