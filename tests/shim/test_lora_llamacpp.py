"""LoRA adapters on llama.cpp: a PEFT adapter converted to GGUF answers as the merged model does.

The tiny LoRA is given at start (``--lora-modules``): llama.cpp loads adapters only when it starts, so a
new adapter at run time answers 501 with what to do, while the start adapters can be unloaded and loaded
again through the runtime API. The reference is the tiny model with the adapter merged in by PEFT
(``merge_and_unload``), written to GGUF the way the tiny model's own GGUF is.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from shimproc import ask_greedy, serve

from turnout.shim.backends._gguf_lora import ConversionError, convert
from turnout.shim.backends.llamacpp import LlamaCppBackend
from turnout.shimargs import LoraModule, ShimArgs
from turnout.tinymodel.lora import build_tiny_lora, write_merged_gguf

PROMPTS = ["Hello", "What is a cat?", "Tell me about the sea"]


def _args(model: Path, **kw: Any) -> ShimArgs:
    return ShimArgs(engine="llama.cpp", model=str(model), served_model_name="tiny",
                    engine_args={"threads": 1, "n_ctx": 512}, **kw)


_ask = partial(ask_greedy, max_tokens=16)


@pytest.fixture(scope="module")
def lora_shim(tiny_model: Any, adapters: list[Path], free_port_factory: Any) -> Iterator[str]:
    modules = (LoraModule("a0", str(adapters[0])), LoraModule("a1", f"file://{adapters[1]}"),
               LoraModule("builtin", "builtin://tiny-lora"))
    args = _args(tiny_model.gguf_path, enable_lora=True, max_loras=3, lora_modules=modules)
    with serve(LlamaCppBackend(args), args, free_port_factory()) as base:
        yield base


@pytest.fixture(scope="module")
def merged_answers(tiny_model: Any, adapters: list[Path], free_port_factory: Any,
                   tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    gguf = write_merged_gguf(tiny_model, adapters[0], tmp_path_factory.mktemp("merged") / "merged.gguf")
    args = _args(gguf)
    with serve(LlamaCppBackend(args), args, free_port_factory()) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="none")
        return [_ask(client, "tiny", p) for p in PROMPTS]


def test_converted_adapter_answers_as_the_merged_model(lora_shim: str, merged_answers: list[str]) -> None:
    client = openai.OpenAI(base_url=lora_shim + "/v1", api_key="none")
    assert [m.id for m in client.models.list().data] == ["tiny", "a0", "a1", "builtin"]
    base_answers = [_ask(client, "tiny", p) for p in PROMPTS]
    lora_answers = [_ask(client, "a0", p) for p in PROMPTS]
    assert lora_answers == merged_answers
    assert lora_answers != base_answers
    # side by side: each request keeps its own adapter
    work = [(m, p) for m in ("tiny", "a0", "a1") for p in PROMPTS]
    alone = {mp: _ask(client, *mp) for mp in work}
    with ThreadPoolExecutor(len(work)) as pool:
        assert list(pool.map(lambda mp: _ask(client, *mp), work)) == [alone[mp] for mp in work]


def test_runtime_load_of_a_new_adapter_says_restart(lora_shim: str, adapters: list[Path], tmp_path: Path) -> None:
    r = httpx.post(lora_shim + "/v1/load_lora_adapter", json={"lora_name": "new", "lora_path": str(adapters[1])})
    assert r.status_code == 501
    assert r.json()["error"]["code"] == "lora_needs_restart" and "--lora-modules" in r.json()["error"]["message"]


def test_start_adapters_unload_and_load_again(lora_shim: str, adapters: list[Path]) -> None:
    client = openai.OpenAI(base_url=lora_shim + "/v1", api_key="none")
    before = _ask(client, "a1", PROMPTS[0])
    assert httpx.post(lora_shim + "/v1/unload_lora_adapter", json={"lora_name": "a1"}).status_code == 200
    with pytest.raises(openai.NotFoundError):
        _ask(client, "a1", PROMPTS[0])
    r = httpx.post(lora_shim + "/v1/load_lora_adapter", json={"lora_name": "a1", "lora_path": str(adapters[1])})
    assert r.status_code == 200, r.text
    assert _ask(client, "a1", PROMPTS[0]) == before


def test_conversion_refuses_what_llamacpp_cannot_apply(tiny_model: Any, tmp_path: Path) -> None:
    import json
    import shutil

    folder = tmp_path / "dora"
    shutil.copytree(build_tiny_lora(1), folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ConversionError, match="DoRA"):
        convert(folder, tiny_model.gguf_path, tmp_path / "out.gguf")
