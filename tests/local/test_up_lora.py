"""``turnout up`` serves the adapters of its files: the shim starts with them, the local gateway routes them."""

from __future__ import annotations

from turnout import local
from turnout.api import ModelDeployment
from turnout.gateway.source import StaticModel, StaticSource
from turnout.localhw import Probes


def _md() -> ModelDeployment:
    return ModelDeployment.model_validate({
        "apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "chat"},
        "spec": {"model": {"uri": "builtin://tiny-llama"}, "lora": {"maxLoaded": 2},
                 "adapters": [{"name": "sql", "uri": "file:///adapters/sql"}, {"name": "poems", "uri": "hf://o/p"}]}})


def test_the_local_shim_starts_with_the_adapters_of_the_file() -> None:
    md = _md()
    plan = local.plan_locally(md, probes=Probes(run=lambda argv: None, system=lambda: "Linux", env={}))
    args = local.shim_command(plan, md, "127.0.0.1", 8123, "/models/tiny")
    assert (args.enable_lora, args.max_loras) == (True, 2)
    assert args.lora_modules == {"sql": "file:///adapters/sql", "poems": "hf://o/p"}
    argv = args.to_argv()
    assert argv[argv.index("--lora-modules") + 1] == "poems=hf://o/p"


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
