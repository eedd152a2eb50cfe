"""Every quantization spelling in the catalog reaches the engine rules as one canonical name."""

from __future__ import annotations

import dataclasses

import pytest
from nodefactory import nvidia

from turnout.api import ModelDeploymentSpec
from turnout.catalog import load_catalog
from turnout.hardware import parse_nodes
from turnout.resolver import ENGINES, Plan, resolve
from turnout.resolver.engines import Context
from turnout.resolver.memory import bytes_per_param
from turnout.resolver.models import options_for
from turnout.resolver.quantization import canonical, is_known

# What the spelling stands for: the engine's verdict must be the same for both.
STANDARD = {"none": "none", "Int2": "Int2", "Int3": "Int3", "Int4": "Int4", "Int5": "Int5", "Int6": "Int6",
            "Int8": "Int8", "FP8": "FP8", "FP4": "FP4", "MXFP4": "MXFP4", "MXFP8": "MXFP8", "NVFP4": "NVFP4"}


@pytest.mark.parametrize(
    ("fmt", "spelled", "value"),
    [
        ("gptq", "8bits", "Int8"),
        ("gptq", "4bits", "Int4"),
        ("gptq", "Int4-W4A16", "Int4"),
        ("gptq", "Int8-W8A8", "Int8"),
        ("gptq", "Int8-W8A16", "Int8"),
        ("gptq", "int4", "Int4"),
        ("gptq", "Int4-Int8Mix-Medium", "Int4"),
        ("awq", "AWQ", "Int4"),
        ("awq", "AWQ-Lite", "Int4"),
        ("awq", "4bit", "Int4"),
        ("bnb", "4-bit", "Int4"),
        ("mlx", "6bit", "Int6"),
        ("mlx", "bf16", "none"),
        ("mlx", "8bit-MXFP8", "MXFP8"),
        ("fp8", "none", "FP8"),
        ("pytorch", "fp8", "FP8"),
        ("gguf", "UD-Q4_K_XL", "Q4_K_XL"),
        ("gguf", "i1-IQ2_XXS", "IQ2_XXS"),
        ("gguf", "fp16", "F16"),
    ],
)
def test_xinference_spellings(fmt: str, spelled: str, value: str) -> None:
    assert canonical(fmt, spelled) == value
    assert is_known(fmt, spelled)


def _catalog_options() -> list:
    catalog = load_catalog()
    out = []
    for family in catalog:
        for spec in family.specs:
            if spec.hub != "huggingface":
                continue
            for quant in spec.quantizations:
                source = ModelDeploymentSpec.model_validate(
                    {"model": {"name": family.name, "format": spec.format, "quantization": quant,
                               **({"size": spec.size_b} if spec.size_b is not None else {})}}).model
                out.extend(o for o in options_for(source, catalog)[0] if o.quantization == quant)
    return out


def test_no_catalog_spec_is_refused_for_its_spelling() -> None:
    """Walk the whole catalog: each spelling is known, and every engine judges it as its canonical name."""
    ctx = Context(catalog=load_catalog(), explicit=False)
    options = _catalog_options()
    assert len(options) > 3000
    unknown = sorted({(o.format, o.quantization) for o in options if not is_known(o.format, o.quantization)})
    assert unknown == []
    differ = []
    for option in options:
        value = option.canonical_quantization
        if value is None or option.format == "gguf":
            continue  # llama.cpp takes any GGUF type; no other engine reads gguf
        standard = dataclasses.replace(option, quantization=STANDARD[value])
        for name, engine in ENGINES.items():
            for accel in engine.accelerators:
                # the refusal text may quote the spelling; whether it is served may not differ
                spelled = engine.check_model(option, accel, ctx) is None
                if spelled != (engine.check_model(standard, accel, ctx) is None):
                    differ.append((option.family, option.format, option.quantization, name, accel))
        assert bytes_per_param(option.format, option.quantization) == pytest.approx(
            bytes_per_param(standard.format, standard.quantization), abs=0.2)
    assert differ == []


def test_vllm_serves_the_gptq_specs_xinference_spells_oddly() -> None:
    hw = parse_nodes([nvidia(product="NVIDIA-H100-80GB-HBM3", memory_mib=81559, cc=(9, 0), gpus=8)])
    for name, size, fmt, quant in [
        ("Yi-chat", 34, "gptq", "8bits"),
        ("deepseek-r1-0528-qwen3", 8, "gptq", "Int4-W4A16"),
        ("deepseek-r1-0528-qwen3", 8, "gptq", "Int8-W8A16"),
        ("deepseek-r1-0528-qwen3", 8, "gptq", "Int4-Int8Mix"),
        ("glm-4.5", 106, "awq", "AWQ-FP16Mix"),
    ]:
        spec = ModelDeploymentSpec.model_validate(
            {"model": {"name": name, "size": size, "format": fmt, "quantization": quant}})
        plan = resolve(spec, hw)
        assert isinstance(plan, Plan) and plan.engine == "vllm", (name, quant, plan.to_dict())
        assert plan.model.quantization == quant  # the download keeps the catalog's spelling
