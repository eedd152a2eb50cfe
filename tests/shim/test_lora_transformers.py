"""LoRA adapters on the transformers engine, through the real app and the official openai client.

A tiny random LoRA of the tiny Llama (PEFT, non-zero B) changes the greedy answer; served as an adapter
it must answer exactly what the merged model (PEFT ``merge_and_unload``) answers, alone and in a batch
mixed with the base model and another adapter. Adapters are loaded and unloaded at run time through
``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from shimproc import metric_value, serve

from turnout.shim.backends.transformers import TransformersBackend
from turnout.shimargs import ShimArgs
from turnout.tinymodel.lora import build_tiny_lora, write_merged

PROMPTS = ["Hello", "What is a cat?", "Tell me about the sea"]
MAX_TOKENS = 16


def _args(path: Path, **kw: Any) -> ShimArgs:
    return ShimArgs(engine="transformers", model=str(path), served_model_name="tiny",
                    engine_args={"threads": 1}, **kw)


@pytest.fixture(scope="module")
def adapters() -> list[Path]:
    return [build_tiny_lora(seed) for seed in (1, 2, 3)]


@pytest.fixture(scope="module")
def lora_shim(tiny_model: Any, free_port_factory: Any) -> Iterator[str]:
    args = _args(tiny_model.hf_dir, enable_lora=True, max_loras=2, max_lora_rank=8)
    with serve(TransformersBackend(args), args, free_port_factory()) as base:
        yield base


@pytest.fixture(scope="module")
def merged_answers(tiny_model: Any, adapters: list[Path], free_port_factory: Any,
                   tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Greedy answers of the model with adapter 0 merged in, served by the same engine."""
    folder = write_merged(tiny_model, adapters[0], tmp_path_factory.mktemp("merged") / "hf")
    args = _args(folder)
    with serve(TransformersBackend(args), args, free_port_factory()) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="none")
        return {"tiny": [_ask(client, "tiny", p) for p in PROMPTS]}


def _ask(client: openai.OpenAI, model: str, prompt: str) -> str:
    out = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                         max_tokens=MAX_TOKENS, temperature=0)
    assert out.model == model
    return out.choices[0].message.content or ""


def _load(base: str, name: str, path: Path | str) -> httpx.Response:
    return httpx.post(base + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}, timeout=60)


def _unload(base: str, name: str) -> httpx.Response:
    return httpx.post(base + "/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)


def test_adapter_answers_as_the_merged_model_and_differs_from_the_base(
        lora_shim: str, adapters: list[Path], merged_answers: dict[str, list[str]]) -> None:
    client = openai.OpenAI(base_url=lora_shim + "/v1", api_key="none")
    base_answers = [_ask(client, "tiny", p) for p in PROMPTS]
    assert _load(lora_shim, "a0", adapters[0]).status_code == 200
    try:
        models = {m.id: m for m in client.models.list().data}
        assert models["a0"].model_extra["parent"] == "tiny"
        assert models["a0"].model_extra["root"] == str(adapters[0])
        lora_answers = [_ask(client, "a0", p) for p in PROMPTS]
        assert lora_answers == merged_answers["tiny"]
        assert lora_answers != base_answers
        # the base model is unchanged by the adapter being loaded
        assert [_ask(client, "tiny", p) for p in PROMPTS] == base_answers
    finally:
        _unload(lora_shim, "a0")


def test_mixed_batches_give_each_row_its_own_adapter(lora_shim: str, adapters: list[Path]) -> None:
    client = openai.OpenAI(base_url=lora_shim + "/v1", api_key="none")
    assert _load(lora_shim, "a0", adapters[0]).status_code == 200
    assert _load(lora_shim, "a1", adapters[1]).status_code == 200
    try:
        work = [(m, p) for m in ("tiny", "a0", "a1") for p in PROMPTS]
        alone = {(m, p): _ask(client, m, p) for m, p in work}
        assert len({tuple(alone[(m, p)] for p in PROMPTS) for m in ("tiny", "a0", "a1")}) == 3
        with ThreadPoolExecutor(len(work)) as pool:
            together = list(pool.map(lambda mp: _ask(client, *mp), work * 2))
        assert together == [alone[mp] for mp in work * 2]
        text = httpx.get(lora_shim + "/metrics").text
        assert metric_value(text, "turnout_requests_total", endpoint="/v1/chat/completions", status="200",
                            adapter="a1") >= 2 * len(PROMPTS)
        assert metric_value(text, "turnout_completion_tokens_total", endpoint="/v1/chat/completions",
                            adapter="a0") > 0
    finally:
        _unload(lora_shim, "a0")
        _unload(lora_shim, "a1")


def test_unloaded_adapter_is_gone_and_unknown_models_name_the_known(lora_shim: str, adapters: list[Path]) -> None:
    client = openai.OpenAI(base_url=lora_shim + "/v1", api_key="none")
    assert _load(lora_shim, "gone", adapters[0]).status_code == 200
    assert _ask(client, "gone", "Hello")
    assert _unload(lora_shim, "gone").status_code == 200
    assert [m.id for m in client.models.list().data] == ["tiny"]
    with pytest.raises(openai.NotFoundError) as err:
        _ask(client, "gone", "Hello")
    assert "'gone' does not exist" in str(err.value) and "'tiny'" in str(err.value)
    again = _unload(lora_shim, "gone")
    assert again.status_code == 404 and again.json()["error"]["code"] == "adapter_not_found"


def test_loading_past_max_loras_unloads_the_least_recently_used(lora_shim: str, adapters: list[Path]) -> None:
    client = openai.OpenAI(base_url=lora_shim + "/v1", api_key="none")
    try:
        for i, path in enumerate(adapters[:2]):
            assert _load(lora_shim, f"lru{i}", path).status_code == 200
        _ask(client, "lru0", "Hello")  # lru1 is now the least recently used
        assert _load(lora_shim, "lru2", adapters[2]).status_code == 200
        assert sorted(m.id for m in client.models.list().data) == ["lru0", "lru2", "tiny"]
        assert _ask(client, "lru2", "Hello")
    finally:
        for name in ("lru0", "lru1", "lru2"):
            _unload(lora_shim, name)


def test_bad_adapters_are_refused_with_the_reason(lora_shim: str, tiny_model: Any, tmp_path: Path) -> None:
    not_adapter = _load(lora_shim, "x", tiny_model.hf_dir)
    assert not_adapter.status_code == 400 and "adapter_config.json" in not_adapter.json()["error"]["message"]
    missing = _load(lora_shim, "x", tmp_path / "nowhere")
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "lora_path"
    same_name = _load(lora_shim, "tiny", build_tiny_lora(1))
    assert same_name.status_code == 400 and same_name.json()["error"]["param"] == "lora_name"
    dora = tmp_path / "dora"
    shutil.copytree(build_tiny_lora(1), dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    refused = _load(lora_shim, "x", dora)
    assert refused.status_code == 400 and "DoRA" in refused.json()["error"]["message"]
    assert [m.id for m in openai.OpenAI(base_url=lora_shim + "/v1", api_key="none").models.list().data] == ["tiny"]
    bad_body = httpx.post(lora_shim + "/v1/load_lora_adapter", json={"lora_name": "x"})
    assert bad_body.status_code == 400 and "lora_path" in bad_body.json()["error"]["message"]


def test_rank_above_max_lora_rank_is_refused(tiny_model: Any, free_port_factory: Any) -> None:
    args = _args(tiny_model.hf_dir, enable_lora=True, max_loras=1, max_lora_rank=4)
    with serve(TransformersBackend(args), args, free_port_factory()) as base:
        r = _load(base, "big", build_tiny_lora(1))
        assert r.status_code == 400 and "--max-lora-rank 4" in r.json()["error"]["message"]


def test_without_enable_lora_loading_is_refused(tiny_model: Any, free_port_factory: Any) -> None:
    args = _args(tiny_model.hf_dir)
    with serve(TransformersBackend(args), args, free_port_factory()) as base:
        r = _load(base, "a", build_tiny_lora(1))
        assert r.status_code == 400 and r.json()["error"]["code"] == "lora_not_enabled"


def test_lora_modules_are_loaded_at_start(tiny_model: Any, adapters: list[Path], free_port_factory: Any,
                                          merged_answers: dict[str, list[str]]) -> None:
    args = ShimArgs.parse(["--engine", "transformers", "--model", str(tiny_model.hf_dir), "--served-model-name",
                           "tiny", "--engine-args", '{"threads": 1}', "--enable-lora", "--max-loras", "2",
                           "--lora-modules", f"first={adapters[0]}"])
    with serve(TransformersBackend(args), args, free_port_factory()) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="none")
        assert [m.id for m in client.models.list().data] == ["tiny", "first"]
        assert _ask(client, "first", PROMPTS[0]) == merged_answers["tiny"][0]


def test_unload_waits_for_the_requests_using_the_adapter_and_busy_slots_are_not_taken(
        lora_shim: str, adapters: list[Path]) -> None:
    import threading

    client = openai.OpenAI(base_url=lora_shim + "/v1", api_key="none")
    for i in range(2):
        assert _load(lora_shim, f"busy{i}", adapters[i]).status_code == 200
    ask = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 300, "temperature": 0,
           "extra_body": {"ignore_eos": True}}
    expected = client.chat.completions.create(model="busy0", **ask).choices[0].message.content
    started = [threading.Event(), threading.Event()]
    texts = ["", ""]

    def stream(i: int) -> None:
        for chunk in client.chat.completions.create(model=f"busy{i}", stream=True, **ask):
            started[i].set()
            if chunk.choices and chunk.choices[0].delta.content:
                texts[i] += chunk.choices[0].delta.content

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        assert all(e.wait(60) for e in started)
        # both slots (--max-loras 2) serve a request: a third adapter must not unload either
        full = _load(lora_shim, "third", adapters[2])
        assert full.status_code == 429 and full.json()["error"]["code"] == "adapter_slots_busy"
        # an unload waits until the stream using the adapter has ended: the adapter applied to its last token
        assert _unload(lora_shim, "busy0").status_code == 200
    finally:
        for t in threads:
            t.join(120)
        _unload(lora_shim, "busy0")
        _unload(lora_shim, "busy1")
    assert texts[0] == expected


def test_lora_path_may_be_a_source_uri_the_shim_fetches(lora_shim: str) -> None:
    client = openai.OpenAI(base_url=lora_shim + "/v1", api_key="none")
    try:
        assert _load(lora_shim, "builtin", "builtin://tiny-lora").status_code == 200
        card = {m.id: m for m in client.models.list().data}["builtin"]
        assert card.model_extra["root"] == "builtin://tiny-lora"
        assert _ask(client, "builtin", "Hello")
        unknown = _load(lora_shim, "x", "builtin://tiny-lor")
        assert unknown.status_code == 400 and "did you mean builtin://tiny-lora" in unknown.json()["error"]["message"]
    finally:
        _unload(lora_shim, "builtin")
