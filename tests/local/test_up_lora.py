"""``turnout up`` serves the adapters of its files: the shim starts with them, the local gateway routes them."""

from __future__ import annotations

import sys

import pytest

from turnout import local
from turnout.api import AdapterSpec, ModelDeployment
from turnout.gateway.source import StaticModel, StaticSource
from turnout.localhw import Probes
from turnout.shimargs import LoraModule, ShimArgs


def _md(max_loaded: int = 2) -> ModelDeployment:
    return ModelDeployment.model_validate({
        "apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "chat"},
        "spec": {"model": {"uri": "builtin://tiny-llama"}, "lora": {"maxLoaded": max_loaded},
                 "adapters": [{"name": "sql", "uri": "file:///adapters/sql"}, {"name": "poems", "uri": "hf://o/p"}]}})


def test_the_local_shim_starts_with_the_adapters_of_the_file() -> None:
    md = _md()
    plan = local.plan_locally(md, probes=Probes(run=lambda argv: None, system=lambda: "Linux", env={}))
    args = local.shim_command(plan, md, "127.0.0.1", 8123, "/models/tiny")
    assert args.enable_lora and args.max_lora_rank == 16
    assert args.lora_modules == (LoraModule("sql", "file:///adapters/sql"), LoraModule("poems", "hf://o/p"))
    assert ShimArgs.parse(args.to_argv()[1:]) == args
    fetched = local.shim_command(plan, md, "127.0.0.1", 8123, "/models/tiny", {"sql": "/cache/sql"})
    assert fetched.lora_modules == (LoraModule("sql", "/cache/sql"), LoraModule("poems", "hf://o/p"))
    # One process serves every adapter of the file: it holds as many as there are, maxLoaded or not.
    md = _md(max_loaded=1)
    assert local.shim_command(plan, md, "127.0.0.1", 8123, "/models/tiny").max_loras == 2


async def test_the_local_gateway_lists_and_routes_the_adapters() -> None:
    source = StaticSource([StaticModel("chat", "127.0.0.1", 8123, adapters={"sql": "file:///adapters/sql"}),
                           StaticModel("other", "127.0.0.1", 8124)])
    await source.start()
    try:
        sql, chat = source.registry.get("sql"), source.registry.get("chat")
        assert sql is not None and chat is not None
        assert (sql.parent, sql.root) == ("chat", "file:///adapters/sql")
        assert [ep.key for ep in sql.endpoints] == ["127.0.0.1:8123"] and sql.endpoints[0] is chat.endpoints[0]
        assert [m.served for m in source.registry.models()] == ["chat", "other", "sql"]
    finally:
        await source.close()
    assert source.registry.get("sql") is None


def test_adapters_are_fetched_like_the_model(tmp_path, monkeypatch) -> None:
    """file:// as the folder's path (the shim loads adapters from folders); a source that cannot be fetched
    names the adapter and the fix."""
    monkeypatch.setenv("TURNOUT_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    md = ModelDeployment.model_validate({
        "apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "chat"},
        "spec": {"model": {"uri": "builtin://tiny-llama"}, "lora": {},
                 "adapters": [{"name": "sql", "uri": f"file://{tmp_path}"}]}})
    assert local.fetch_adapters(md, sys.stderr) == {"sql": str(tmp_path)}
    missing = md.model_copy(update={"spec": md.spec.model_copy(update={"adapters": [
        AdapterSpec(name="gone", uri="hf://example/not-cached-lora")]})})
    with pytest.raises(local.LocalError, match="fetching the adapter gone: hf://example/not-cached-lora"):
        local.fetch_adapters(missing, sys.stderr)
