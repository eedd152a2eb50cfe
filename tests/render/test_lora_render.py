"""LoRA in the rendered pods: spec.lora sets the engine's flags; spec.adapters never touches the pod template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from turnout.api import ModelDeployment
from turnout.cli.plan import load_hardware
from turnout.hardware import ClusterFeatures
from turnout.render import render
from turnout.resolver import Plan, resolve
from turnout.shimargs import LoraModule, ShimArgs

NODES = Path(__file__).resolve().parents[2] / "examples" / "nodes"


def _md(spec: dict[str, Any]) -> ModelDeployment:
    return ModelDeployment.model_validate({"metadata": {"name": "chat", "namespace": "default", "uid": "u1"},
                                           "spec": spec})


def _rendered(spec: dict[str, Any], nodes: str) -> str:
    md = _md(spec)
    plan = resolve(md.spec, load_hardware(str(NODES / nodes), ClusterFeatures()))
    assert isinstance(plan, Plan), plan
    return yaml.safe_dump_all(render(plan, md), sort_keys=True)


ADAPTERS = [{"name": "sql", "uri": "hf://acme/sql-lora"}, {"name": "poems", "uri": "s3://bucket/poems"}]


@pytest.mark.parametrize(("model", "nodes"), [
    ({"name": "qwen2.5-instruct", "size": 7}, "h100-1x8.yaml"),
    ({"uri": "builtin://tiny-llama", "size": 0.001}, "cpu-only.yaml"),
])
def test_adapters_change_no_rendered_byte(model: dict[str, Any], nodes: str) -> None:
    """Adding the first adapter, or removing the last, renders the same children: no pod restarts."""
    base = {"model": model, "lora": {"maxLoaded": 2, "maxRank": 32}}
    without = _rendered(base, nodes)
    assert _rendered({**base, "adapters": ADAPTERS}, nodes) == without
    assert _rendered({**base, "adapters": ADAPTERS[:1]}, nodes) == without
    assert _rendered({**base, "adapters": []}, nodes) == without


def test_an_engine_that_loads_adapters_only_at_start_gets_them_on_its_command_line() -> None:
    """llama.cpp: the adapters are --lora-modules (the shim converts them when it starts), so changing them rolls
    the pods; max-loras is at least their number."""
    base = {"model": {"uri": "builtin://tiny-llama.gguf", "size": 0.001}, "lora": {"maxLoaded": 1}}
    md = _md({**base, "adapters": ADAPTERS})
    plan = resolve(md.spec, load_hardware(str(NODES / "cpu-only.yaml"), ClusterFeatures()))
    assert isinstance(plan, Plan) and plan.engine == "llama.cpp"
    dep = next(o for o in render(plan, md) if o["kind"] == "Deployment")
    parsed = ShimArgs.parse(dep["spec"]["template"]["spec"]["containers"][0]["command"][1:])
    assert parsed.lora_modules == (LoraModule("sql", "hf://acme/sql-lora"), LoraModule("poems", "s3://bucket/poems"))
    assert parsed.max_loras == 2
    assert _rendered({**base, "adapters": ADAPTERS}, "cpu-only.yaml") != _rendered(base, "cpu-only.yaml")


def test_lora_renders_the_engine_flags() -> None:
    md = _md({"model": {"name": "qwen2.5-instruct", "size": 7}, "engine": "vllm",
              "lora": {"maxLoaded": 3, "maxRank": 64}})
    plan = resolve(md.spec, load_hardware(str(NODES / "h100-1x8.yaml"), ClusterFeatures()))
    assert isinstance(plan, Plan)
    dep = next(o for o in render(plan, md) if o["kind"] == "Deployment")
    argv = dep["spec"]["template"]["spec"]["containers"][0]["command"]
    assert argv[argv.index("--enable-lora"):][:5] == ["--enable-lora", "--max-loras", "3", "--max-lora-rank", "64"]
    parsed = ShimArgs.parse(argv[1:])
    assert (parsed.enable_lora, parsed.max_loras, parsed.max_lora_rank) == (True, 3, 64)
    no_lora = _md({"model": {"name": "qwen2.5-instruct", "size": 7}, "engine": "vllm"})
    dep = next(o for o in render(plan, no_lora) if o["kind"] == "Deployment")
    assert "--enable-lora" not in dep["spec"]["template"]["spec"]["containers"][0]["command"]


def test_initial_lora_modules_round_trip() -> None:
    """``turnout up`` starts its shims with the adapters of its files: NAME=URI after --lora-modules."""
    args = ShimArgs(engine="transformers", model="builtin://tiny-llama", served_model_name="m", enable_lora=True,
                    max_loras=2, lora_modules=(LoraModule("sql", "file:///a/sql"), LoraModule("poems", "hf://o/p")))
    argv = args.to_argv()
    assert argv[argv.index("--lora-modules"):][:3] == ["--lora-modules", "sql=file:///a/sql", "poems=hf://o/p"]
    assert ShimArgs.parse(argv[1:]) == args
