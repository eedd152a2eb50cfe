"""LoRA adapters through a proxy engine's runtime API, by contract with the SGLang stand-in.

SGLang (docs: LoRA serving) loads adapters at ``/load_lora_adapter`` and applies one per request named in
``lora_path``; the shim forwards its own ``/v1/load_lora_adapter`` there, lists the adapter in
``/v1/models``, and turns ``model: <adapter>`` into SGLang's field.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from shimproc import RunningShim

from turnout.tinymodel.lora import build_tiny_lora

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapter() -> Path:
    return build_tiny_lora(1)


@pytest.fixture(scope="module")
def shim(start_shim_factory, adapter: Path) -> RunningShim:
    return start_shim_factory(served="standin-chat", enable_lora=True, max_loras=1, max_lora_rank=8)


def test_sglang_runtime_adapters_through_the_shim(shim: RunningShim, adapter: Path) -> None:
    r = httpx.post(shim.base_url + "/v1/load_lora_adapter", json={"lora_name": "sql", "lora_path": str(adapter)})
    assert r.status_code == 200, r.text
    assert shim.engine_stats()["adapters"] == {"sql": str(adapter)}
    client = openai.OpenAI(base_url=shim.base_url + "/v1", api_key="none")
    models = {m.id: m.model_extra for m in client.models.list().data}
    assert models["sql"]["parent"] == "standin-chat"
    out = client.chat.completions.create(model="sql", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert out.model == "sql"
    sent = shim.engine_stats()["last_body"]
    assert sent["model"] == "standin-chat" and sent["lora_path"] == "sql"
    # a second adapter with --max-loras 1: the first, idle, is unloaded in the engine first
    assert httpx.post(shim.base_url + "/v1/load_lora_adapter",
                      json={"lora_name": "chat", "lora_path": str(adapter)}).status_code == 200
    assert shim.engine_stats()["adapters"] == {"chat": str(adapter)}
    assert httpx.post(shim.base_url + "/v1/unload_lora_adapter", json={"lora_name": "chat"}).status_code == 200
    assert shim.engine_stats()["adapters"] == {}
    with pytest.raises(openai.NotFoundError, match="'standin-chat'"):
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
