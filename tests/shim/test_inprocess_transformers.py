"""The transformers backend on the tiny model: generation, streaming, batching, cancellation.

Tests call the backend directly (one backend per module, its scheduler thread
shared) and then through the real app on a real uvicorn server with the
official ``openai`` client.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
import torch
from batchspy import BatchSpy
from shimproc import serve

from turnout.shim.backends.base import State, Stream
from turnout.shim.backends.transformers import TransformersBackend, usable_cpus
from turnout.shimargs import ShimArgs
from turnout.wire.errors import OpenAIError

#: async tests share the module's event loop with the module-scoped backend
in_module_loop = pytest.mark.asyncio(loop_scope="module")

HELLO = [{"role": "user", "content": "Hello"}]


def _args(tiny_model: Any, **kw: Any) -> ShimArgs:
    return ShimArgs(engine="transformers", model=str(tiny_model.hf_dir), served_model_name="tiny", **kw)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend(tiny_model: Any) -> Any:
    b = TransformersBackend(_args(tiny_model))
    assert b.health().state is State.LOADING
    await b.start()
    assert b.health().state is State.READY
    yield b
    await b.stop()


def _reference(backend: TransformersBackend, ids: list[int], max_new_tokens: int) -> str:
    """Greedy text from plain ``model.generate`` for the same prompt tokens."""
    with torch.inference_mode():
        out = backend.model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    return backend.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)


def _prompt_ids(backend: TransformersBackend, messages: list[dict[str, str]]) -> list[int]:
    text = backend.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(backend.tokenizer(text, add_special_tokens=False).input_ids)


def _events(item: bytes | dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks in one streamed item: SSE bytes holding one or more ``data:`` events."""
    assert isinstance(item, bytes) and item.startswith(b"data: ") and item.endswith(b"\n\n")
    return [json.loads(event[len(b"data: "):]) for event in item[:-2].split(b"\n\n")]


async def _next(stream: Stream) -> list[dict[str, Any]]:
    return _events(await stream.chunks.__anext__())  # type: ignore[operator]


async def _drain(stream: Stream) -> list[dict[str, Any]]:
    return [chunk async for item in stream.chunks for chunk in _events(item)]


@in_module_loop
async def test_chat_greedy_matches_plain_generate(backend: TransformersBackend) -> None:
    r = await backend.chat({"model": "tiny", "messages": HELLO, "max_tokens": 24, "temperature": 0})
    assert r["object"] == "chat.completion" and r["model"] == "tiny"
    choice = r["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == _reference(backend, _prompt_ids(backend, HELLO), 24)
    ids = _prompt_ids(backend, HELLO)
    assert r["usage"]["prompt_tokens"] == len(ids)
    assert r["usage"]["total_tokens"] == len(ids) + r["usage"]["completion_tokens"]
    assert choice["finish_reason"] in ("stop", "length")


@in_module_loop
async def test_stream_matches_non_stream(backend: TransformersBackend) -> None:
    body = {"messages": HELLO, "max_tokens": 24, "temperature": 0}
    whole = await backend.chat(body)
    stream = await backend.chat({**body, "stream": True, "stream_options": {"include_usage": True}})
    assert isinstance(stream, Stream)
    chunks = await _drain(stream)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [f["choices"][0]["finish_reason"] for f in finals] == [whole["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert stream.usage.completion_tokens == whole["usage"]["completion_tokens"]
    assert len({c["id"] for c in chunks}) == 1


@pytest.mark.parametrize("text", ["", "plain", 'quote " back \\ slash', "new\nline\ttab", "é ünï \u2028 \U0001f30a",
                                  "\x00\x1f ctl", "\ufffd"])
@pytest.mark.parametrize("chat", [True, False])
def test_sse_text_template_is_byte_identical(text: str, chat: bool) -> None:
    from turnout.shim.backends import _openai as oai

    def build(index: int, t: str) -> dict[str, Any]:
        if chat:
            return oai.chat_chunk("chatcmpl-x", 7, "tiny", index, {"content": t})
        return oai.completion_chunk("cmpl-x", 7, "tiny", index, t)

    template = oai.SseText(build)
    for index in (0, 3, 0):
        # what the app writes for a dict chunk (app._dumps)
        expected = b"data: " + json.dumps(build(index, text), ensure_ascii=False, separators=(",", ":")).encode()
        assert template.event(index, text) == expected + b"\n\n"


@in_module_loop
async def test_a_consumer_behind_gets_queued_steps_in_one_item(backend: TransformersBackend) -> None:
    scheduler = backend.scheduler
    assert scheduler is not None
    await scheduler.wait_idle()
    body = {"messages": HELLO, "max_tokens": 12, "temperature": 0, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    whole = await backend.chat(body)
    stream = await backend.chat({**body, "stream": True})
    await scheduler.wait_idle()  # every step is queued before the first read
    items = [item async for item in stream.chunks]
    assert len(items) == 1
    chunks = _events(items[0])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert stream.usage.completion_tokens == 12


@in_module_loop
async def test_an_error_after_text_comes_after_that_text() -> None:
    from turnout.shim.backends import _openai as oai
    from turnout.shim.backends._batching import GenerationRequest
    from turnout.shim.backends.transformers import _Chunks
    from turnout.wire.sse import Usage

    request = GenerationRequest("cmpl-e", 3)
    stream = Stream(chunks=None, usage=Usage(prompt_tokens=3))  # type: ignore[arg-type]

    def build(index: int, t: str) -> dict[str, Any]:
        return oai.completion_chunk("cmpl-e", 1, "tiny", index, t)

    chunks = _Chunks(request, 1, stream, list, oai.SseText(build),
                     lambda i, r: oai.completion_chunk("cmpl-e", 1, "tiny", i, "", r), None)
    request.queue.put_nowait([("delta", 0, "a")])
    request.queue.put_nowait([("delta", 0, "b")])
    failure = OpenAIError("generation failed: boom", status=500)
    request.queue.put_nowait([("error", failure)])
    assert [c["choices"][0]["text"] for c in _events(await chunks.__anext__())] == ["a", "b"]
    with pytest.raises(OpenAIError) as raised:
        await chunks.__anext__()
    assert raised.value is failure and request.cancelled
    with pytest.raises(StopAsyncIteration):
        await chunks.__anext__()


@in_module_loop
async def test_max_tokens_gives_length(backend: TransformersBackend) -> None:
    r = await backend.chat({"messages": HELLO, "max_completion_tokens": 9, "temperature": 0, "ignore_eos": True})
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["usage"]["completion_tokens"] == 9


@in_module_loop
async def test_completions_prompts_n_and_echo(backend: TransformersBackend) -> None:
    prompts = ["The harbour town", "A computer is a machine"]
    r = await backend.completions({"prompt": prompts, "n": 2, "max_tokens": 8, "temperature": 0, "echo": True})
    assert r["object"] == "text_completion"
    assert [c["index"] for c in r["choices"]] == [0, 1, 2, 3]
    for c in r["choices"]:
        prompt = prompts[c["index"] // 2]
        assert c["text"].startswith(prompt)
        ids = list(backend.tokenizer(prompt).input_ids)
        assert c["text"][len(prompt) :] == _reference(backend, ids, 8)[: len(c["text"]) - len(prompt)]
    assert r["usage"]["prompt_tokens"] == sum(len(backend.tokenizer(p).input_ids) for p in prompts)


@in_module_loop
async def test_completions_stream_with_token_ids(backend: TransformersBackend) -> None:
    ids = list(backend.tokenizer("The harbour town").input_ids)
    whole = await backend.completions({"prompt": ids, "max_tokens": 8, "temperature": 0})
    chunks = await _drain(await backend.completions({"prompt": ids, "max_tokens": 8, "temperature": 0, "stream": True}))
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


@in_module_loop
async def test_stop_string_truncates_in_both_modes(backend: TransformersBackend) -> None:
    body = {"messages": HELLO, "max_tokens": 30, "temperature": 0, "ignore_eos": True}
    full = (await backend.chat(body))["choices"][0]["message"]["content"]
    assert len(full) > 6
    stop = full[3:6]
    cut = full[: full.index(stop)]
    r = await backend.chat({**body, "stop": [stop, "never-appears"]})
    assert r["choices"][0]["message"]["content"] == cut
    assert r["choices"][0]["finish_reason"] == "stop"
    chunks = await _drain(await backend.chat({**body, "stop": stop, "stream": True}))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == cut
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@in_module_loop
async def test_seed_makes_sampling_repeatable(backend: TransformersBackend) -> None:
    body = {"messages": HELLO, "max_tokens": 24, "temperature": 1.0, "ignore_eos": True}

    async def texts(seed: int) -> list[str]:
        r = await backend.chat({**body, "seed": seed, "n": 2})
        return [c["message"]["content"] for c in r["choices"]]

    first = await texts(7)
    assert await texts(7) == first
    others = [await texts(s) for s in (8, 9, 10)]
    assert any(o != first for o in others)


@in_module_loop
async def test_top_k_one_and_tiny_top_p_are_greedy(backend: TransformersBackend) -> None:
    body = {"messages": HELLO, "max_tokens": 16, "ignore_eos": True}
    greedy = (await backend.chat({**body, "temperature": 0}))["choices"][0]["message"]["content"]
    top_k = await backend.chat({**body, "temperature": 1.5, "top_k": 1})
    top_p = await backend.chat({**body, "temperature": 1.5, "top_p": 1e-6})
    assert top_k["choices"][0]["message"]["content"] == greedy
    assert top_p["choices"][0]["message"]["content"] == greedy


@in_module_loop
async def test_concurrent_requests_share_decode_steps(backend: TransformersBackend) -> None:
    scheduler = backend.scheduler
    assert scheduler is not None
    await scheduler.wait_idle()
    prompts = ["The harbour town", "A computer is", "Rivers begin as small", "Hello! How"]
    bodies = [{"prompt": p, "max_tokens": 12, "temperature": 0, "ignore_eos": True} for p in prompts]
    solo = [(await backend.completions(b))["choices"][0]["text"] for b in bodies]
    with BatchSpy(scheduler) as spy:
        with spy.hold():
            tasks = [asyncio.ensure_future(backend.completions(b)) for b in bodies]
            while scheduler.pending_count() < len(bodies):
                await asyncio.sleep(0.01)
        results = await asyncio.gather(*tasks)
    # batched (left-padded, different prompt lengths) output equals one-at-a-time output
    assert [r["choices"][0]["text"] for r in results] == solo
    assert all(spy.max_batch(r["id"]) == len(bodies) for r in results)


@in_module_loop
async def test_request_joins_a_running_batch(backend: TransformersBackend) -> None:
    scheduler = backend.scheduler
    assert scheduler is not None
    await scheduler.wait_idle()
    long_body = {"messages": HELLO, "max_tokens": 64, "temperature": 0, "ignore_eos": True}
    late_body = {"prompt": "The library on the hill had", "max_tokens": 10, "temperature": 0, "ignore_eos": True}
    long_solo = (await backend.chat(long_body))["choices"][0]["message"]["content"]
    late_solo = (await backend.completions(late_body))["choices"][0]["text"]
    with BatchSpy(scheduler) as spy:
        stream = await backend.chat({**long_body, "stream": True})
        first, *more = await _next(stream)
        while spy.requests[first["id"]].record.generated_tokens < 3:
            await asyncio.sleep(0.005)
        late = await backend.completions(late_body)
        rest = await _drain(stream)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in [first, *more, *rest])
    assert text == long_solo
    assert late["choices"][0]["text"] == late_solo
    assert spy.max_batch(late["id"]) == 2 and spy.max_batch(first["id"]) == 2


@in_module_loop
async def test_closing_a_stream_stops_generation(backend: TransformersBackend) -> None:
    scheduler = backend.scheduler
    assert scheduler is not None
    with BatchSpy(scheduler) as spy:
        stream = await backend.chat(
            {"messages": HELLO, "max_tokens": 1500, "temperature": 0, "ignore_eos": True, "stream": True}
        )
        seen = [(await _next(stream))[0] for _ in range(3)]
        await stream.chunks.aclose()
        await scheduler.wait_idle()
    record = spy.requests[seen[0]["id"]].record
    assert record.cancelled and record.done
    assert spy.tokens_after_cancel(seen[0]["id"]) <= 1  # stopped at the next step
    assert record.generated_tokens < 1500


@in_module_loop
async def test_cancelling_a_waiting_call_stops_generation(backend: TransformersBackend) -> None:
    scheduler = backend.scheduler
    assert scheduler is not None
    await scheduler.wait_idle()
    with BatchSpy(scheduler) as spy:
        task = asyncio.ensure_future(
            backend.chat({"messages": HELLO, "max_tokens": 1500, "temperature": 0, "ignore_eos": True})
        )
        while not spy.requests or spy.latest().record.generated_tokens < 2:
            await asyncio.sleep(0.005)
        request = spy.latest()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await scheduler.wait_idle()
    assert request.record.cancelled and request.record.done and spy.tokens_after_cancel(request.id) <= 1
    assert request.record.generated_tokens < 1500


@in_module_loop
async def test_prompt_longer_than_context_is_400(backend: TransformersBackend) -> None:
    long = " ".join(["harbour"] * (backend.max_model_len + 10))
    with pytest.raises(OpenAIError) as err:
        await backend.chat({"messages": [{"role": "user", "content": long}]})
    assert err.value.status == 400 and err.value.code == "context_length_exceeded"
    assert err.value.param == "messages"
    with pytest.raises(OpenAIError) as err:
        await backend.completions({"prompt": "Hello", "max_tokens": backend.max_model_len})
    assert err.value.status == 400 and err.value.param == "max_tokens"


@in_module_loop
async def test_unsupported_features_are_400(backend: TransformersBackend) -> None:
    with pytest.raises(OpenAIError) as err:
        await backend.chat({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})
    assert err.value.status == 400 and err.value.param == "messages"


@in_module_loop
async def test_full_queue_is_429(backend: TransformersBackend) -> None:
    scheduler = backend.scheduler
    assert scheduler is not None
    await scheduler.wait_idle()
    saved = scheduler.max_queue
    scheduler.max_queue = 1
    try:
        with BatchSpy(scheduler) as spy, spy.hold():
            waiting = asyncio.ensure_future(backend.completions({"prompt": "Hello", "max_tokens": 2}))
            while scheduler.pending_count() < 1:
                await asyncio.sleep(0.01)
            with pytest.raises(OpenAIError) as err:
                await backend.completions({"prompt": "Hello", "max_tokens": 2})
            assert err.value.status == 429 and err.value.code == "queue_full"
    finally:
        scheduler.max_queue = saved
    assert (await waiting)["choices"][0]["finish_reason"] in ("stop", "length")


@in_module_loop
async def test_min_tokens_matches_generate_min_new_tokens(backend: TransformersBackend) -> None:
    ids = _prompt_ids(backend, HELLO)
    with torch.inference_mode():
        out = backend.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=40, min_new_tokens=40, do_sample=False)
    expected = backend.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    body = {"messages": HELLO, "max_tokens": 40, "min_tokens": 40, "temperature": 0}
    r = await backend.chat(body)
    assert r["choices"][0]["message"]["content"] == expected
    assert r["usage"]["completion_tokens"] == 40 and r["choices"][0]["finish_reason"] == "length"
    # streamed: one content chunk per generated token when every token is text
    chunks = await _drain(await backend.chat({**body, "stream": True}))
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert "".join(d or "" for d in deltas) == expected
    for bad in (-1, 41, "3", True):
        with pytest.raises(OpenAIError) as err:
            await backend.chat({**body, "min_tokens": bad})
        assert err.value.status == 400 and err.value.param == "min_tokens"


@in_module_loop
async def test_unpadded_batch_matches_solo(backend: TransformersBackend) -> None:
    """Rows with equal prompt lengths decode without an attention mask; the text must not change."""
    scheduler = backend.scheduler
    assert scheduler is not None
    await scheduler.wait_idle()
    body = {"prompt": "The harbour town", "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    solo = (await backend.completions(body))["choices"][0]["text"]
    with BatchSpy(scheduler) as spy:
        with spy.hold():
            tasks = [asyncio.ensure_future(backend.completions(body)) for _ in range(3)]
            while scheduler.pending_count() < 3:
                await asyncio.sleep(0.01)
        results = await asyncio.gather(*tasks)
    assert [r["choices"][0]["text"] for r in results] == [solo] * 3
    assert all(spy.max_batch(r["id"]) == 3 for r in results)


@in_module_loop
async def test_llama_takes_the_checked_shortcuts(backend: TransformersBackend) -> None:
    """Warm-up switched on the direct base-model call and the ready 4D mask: both gave the plain
    forward's exact logits (the greedy tests above then check whole answers against generate)."""
    scheduler = backend.scheduler
    assert scheduler is not None
    assert scheduler._direct is not None and scheduler._mask4d
    assert scheduler.torch_threads == backend.threads == max(1, usable_cpus() - 1)


def test_threads_engine_arg(tiny_model: Any) -> None:
    assert TransformersBackend(_args(tiny_model, engine_args={"threads": 3})).threads == 3
    for bad in (0, -2, "2", 1.5, True):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            TransformersBackend(_args(tiny_model, engine_args={"threads": bad}))


def test_unknown_engine_arg_fails_at_construction(tiny_model: Any) -> None:
    with pytest.raises(ValueError, match="unknown engine args for transformers: max_len"):
        TransformersBackend(_args(tiny_model, engine_args={"max_len": 5}))


# ---- through the real app, real uvicorn, official openai client -------------------------------


@pytest.fixture(scope="module")
def app_server(tiny_model: Any, free_port_factory: Any) -> Iterator[tuple[str, TransformersBackend]]:
    args = _args(tiny_model)
    backend = TransformersBackend(args)  # the app's lifespan starts and stops it
    with serve(backend, args, free_port_factory()) as base:
        yield base, backend


def test_openai_client_chat_stream_and_completions(app_server: tuple[str, TransformersBackend]) -> None:
    base, _ = app_server
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
    chat = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=16, temperature=0)
    assert chat.model == "tiny" and chat.choices[0].message.content
    stream = client.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    done = client.completions.create(
        model="tiny", prompt="The harbour town", max_tokens=8, temperature=0, n=2, stop=["never"]
    )
    assert [c.index for c in done.choices] == [0, 1] and done.choices[0].text == done.choices[1].text
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "harbour " * 5000}])
    assert err.value.body["code"] == "context_length_exceeded"  # type: ignore[index]


def test_openai_client_concurrent_streams_are_batched(app_server: tuple[str, TransformersBackend]) -> None:
    base, backend = app_server
    scheduler = backend.scheduler
    assert scheduler is not None
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
    prompts = ["The harbour town", "A computer is", "Rivers begin as", "To make a cup of tea"]
    solo = [
        client.completions.create(model="tiny", prompt=p, max_tokens=10, temperature=0).choices[0].text for p in prompts
    ]
    results: dict[int, tuple[str, str]] = {}

    def run(i: int) -> None:
        stream = client.completions.create(model="tiny", prompt=prompts[i], max_tokens=10, temperature=0, stream=True)
        chunks = list(stream)
        results[i] = (chunks[0].id, "".join(c.choices[0].text for c in chunks if c.choices))

    with BatchSpy(scheduler) as spy:
        with spy.hold():
            threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 60
            while scheduler.pending_count() < len(prompts):
                assert time.monotonic() < deadline, "the requests never reached the scheduler"
                time.sleep(0.01)
        for t in threads:
            t.join(timeout=60)
    assert [results[i][1] for i in range(len(prompts))] == solo
    assert all(spy.max_batch(rid) == len(prompts) for rid, _ in results.values())


def test_client_disconnect_stops_generation(app_server: tuple[str, TransformersBackend]) -> None:
    base, backend = app_server
    scheduler = backend.scheduler
    assert scheduler is not None
    body = {
        "model": "tiny",
        "messages": HELLO,
        "max_tokens": 1500,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    with BatchSpy(scheduler) as spy:
        with (
            httpx.Client(base_url=base, timeout=60) as http,
            http.stream("POST", "/v1/chat/completions", json=body) as resp,
        ):
            assert resp.status_code == 200
            lines = resp.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            rid = httpx.Response(200, content=first[len("data: ") :]).json()["id"]
            for _ in range(3):
                next(lines)
        # the connection is closed here, mid-stream
        deadline = time.monotonic() + 60
        record = spy.requests[rid].record
        while not record.done:
            assert time.monotonic() < deadline, "generation did not stop after the client went away"
            time.sleep(0.01)
    assert record.cancelled and record.generated_tokens < 1500


# ---- other architectures: absolute positions, ALiBi, sliding-window caches -------------------------------

ARCHITECTURES = {
    # learned absolute positions: left padding must not shift them
    "gpt2": ({"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 512}, True),
    # ALiBi, no position_ids argument at all
    "bloom": ({"hidden_size": 64, "n_layer": 2, "n_head": 2}, True),
    # a sliding-window layer: rows cannot be merged, new requests wait for the batch to drain
    "gemma3_text": (
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention"],
            "max_position_embeddings": 512,
        },
        False,
    ),
}


@in_module_loop
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
async def test_other_architectures_batch_correctly(arch: str, tiny_model: Any, tmp_path: Any) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    extra, joins = ARCHITECTURES[arch]
    tok = AutoTokenizer.from_pretrained(tiny_model.hf_dir)
    # a wide weight init spreads the logits, so greedy choices are not near-ties
    config = AutoConfig.for_model(
        arch,
        vocab_size=len(tok),
        initializer_range=0.5,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **extra,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    b = TransformersBackend(ShimArgs(engine="transformers", model=str(tmp_path), served_model_name="x"))
    await b.start()
    try:
        scheduler = b.scheduler
        assert scheduler is not None
        prompts = ["The harbour town woke early and", "A computer", "Rivers begin as small streams in", "Hello"]
        bodies = [{"prompt": p, "max_tokens": 10, "temperature": 0, "ignore_eos": True} for p in prompts]
        solo = [(await b.completions(body))["choices"][0]["text"] for body in bodies]
        with BatchSpy(scheduler) as spy:
            with spy.hold():
                tasks = [asyncio.ensure_future(b.completions(body)) for body in bodies]
                while scheduler.pending_count() < len(bodies):
                    await asyncio.sleep(0.01)
            assert [r["choices"][0]["text"] for r in await asyncio.gather(*tasks)] == solo
            stream = await b.completions({**bodies[0], "max_tokens": 40, "stream": True})
            first = (await _next(stream))[0]
            while spy.requests[first["id"]].record.generated_tokens < 3:
                await asyncio.sleep(0.005)
            late = await b.completions(bodies[2])
            await _drain(stream)
        assert late["choices"][0]["text"] == solo[2]
        assert scheduler._can_join is joins
        assert joins or not scheduler._mask4d  # one 4D mask cannot serve sliding-window layers
        assert spy.max_batch(late["id"]) == (2 if joins else 1)
    finally:
        await b.stop()
