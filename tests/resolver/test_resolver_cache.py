"""The resolver cache: owned by the caller, it hits for the same hardware and config and never answers stale."""

from __future__ import annotations

from typing import Any

from nodefactory import cpu, four_classes, nvidia

from turnout.api import ModelDeploymentSpec
from turnout.config import OperatorConfig
from turnout.hardware import Hardware, parse_nodes
from turnout.resolver import Plan, Rejection, ResolverCache, resolve
from turnout.resolver import core as resolver_core

SPECS = [
    {"model": {"name": "qwen2.5-instruct", "size": 7}},
    {"model": {"name": "qwen2.5-instruct", "size": 7, "format": "gguf"}},
    {"model": {"name": "qwen2.5-instruct", "size": 72, "format": "pytorch"}},
    {"model": {"name": "qwen2.5-instruct", "size": 7}, "engine": "sglang"},
    {"model": {"name": "qwen2.5-instruct"}, "accelerator": {"type": "cpu"}},
    {"model": {"name": "qwen2.5-instruct", "size": 7}, "nodeSelector": {"kubernetes.io/hostname": "nowhere"}},
    {"model": {"uri": "hf://example/exotic-7b", "architecture": "ExoticForCausalLM", "size": 7}},
    {"model": {"name": "bge-large-en-v1.5"}},
]


def spec(doc: dict[str, Any]) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(doc)


def fresh(s: ModelDeploymentSpec, hw: Hardware, config: OperatorConfig) -> Plan | Rejection:
    return resolve(s, hw, config)


def test_the_same_hardware_and_config_hit() -> None:
    hw, config, cache = parse_nodes(four_classes()), OperatorConfig(), ResolverCache()
    s = spec(SPECS[0])
    first = resolve(s, hw, config, cache=cache)
    assert isinstance(first, Plan) and cache.misses > 0 and len(cache) > 0
    misses, hits = cache.misses, cache.hits
    again = resolve(s, hw, config, cache=cache)
    assert again == first
    assert cache.misses == misses, "a second resolve of the same spec works nothing out again"
    assert cache.hits > hits


def test_other_hardware_or_config_never_get_stale_answers() -> None:
    gpu_and_cpu, cpu_only = parse_nodes([nvidia(), cpu()]), parse_nodes([cpu()])
    default, transformers_only = OperatorConfig(), OperatorConfig(auto_engines=("transformers",))
    cache = ResolverCache()
    s = spec(SPECS[1])  # gguf: llama.cpp on the GPU where there is one, on CPU otherwise
    rounds = [(gpu_and_cpu, default), (cpu_only, default), (cpu_only, transformers_only), (gpu_and_cpu, default)]
    seen = []
    for hw, config in rounds:
        got = resolve(s, hw, config, cache=cache)
        assert got == fresh(s, hw, config)
        seen.append((got.engine, getattr(got, "accelerator", None)))
    assert seen[0] == ("llama.cpp", "nvidia") and seen[1] == ("llama.cpp", "cpu")
    assert seen[2] == (None, None)  # gguf weights and only transformers allowed: rejected, not the cached plan
    assert seen[3] == seen[0]


def test_one_cache_over_many_specs_and_clusters_answers_as_no_cache_does() -> None:
    clusters = [parse_nodes(four_classes()), parse_nodes([cpu()]), parse_nodes([nvidia(gpus=8), cpu()])]
    config, cache = OperatorConfig(), ResolverCache()
    for hw in [*clusters, clusters[0]]:
        for doc in SPECS:
            s = spec(doc)
            assert resolve(s, hw, config, cache=cache) == fresh(s, hw, config), doc


def test_a_full_table_starts_over_and_still_answers() -> None:
    hw, config, cache = parse_nodes(four_classes()), OperatorConfig(), ResolverCache(limit=2)
    for doc in SPECS:
        s = spec(doc)
        assert resolve(s, hw, config, cache=cache) == fresh(s, hw, config)
    assert len(cache) <= 2 * 8  # at most `limit` entries in each of its tables


def test_the_resolver_keeps_no_memo_of_its_own() -> None:
    # What resolve() works out lives in the caller's cache: no module-level memo tables or lru_caches in core
    # (the default config is one constant object, built on first use).
    for name, value in vars(resolver_core).items():
        assert not (isinstance(value, dict) and "CACHE" in name), name
        if getattr(value, "__module__", None) == resolver_core.__name__ and hasattr(value, "cache_info"):
            assert name == "_default_config", f"{name} is memoized globally"
