"""``turnout up`` serves the adapters of its files: the shim starts with them, the local gateway routes them."""

from __future__ import annotations

from turnout import local
from turnout.api import ModelDeployment
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
