"""Real mlx_lm (``mlx[cpu]`` in ``.venv-mlx``) behind the shim, driven with the openai client.

mlx_lm's server has no served-name flag and names its model ``default_model``;
the shim sends that name and rewrites it back to the served name, streams
included.
"""

from __future__ import annotations

import json

import pytest
from shimproc import RunningShim, engine_python_or_skip, sse_events

from turnout.tinymodel import TinyModel

pytestmark = pytest.mark.slow

CHAT = [{"role": "user", "content": "Tell me about the harbour."}]
SERVED = "tiny-mlx"


@pytest.fixture(scope="module")
def shim(start_shim_factory, tiny_model: TinyModel) -> RunningShim:
    python = engine_python_or_skip("TURNOUT_MLX_PYTHON", ".venv-mlx")
    return start_shim_factory(engine="mlx", model=str(tiny_model.hf_dir), served=SERVED,
                              env={"TURNOUT_MLX_PYTHON": python}, wait_s=300)


def test_mlx_chat(shim: RunningShim) -> None:
    r = shim.openai().chat.completions.create(model=SERVED, messages=CHAT, max_tokens=8, temperature=0)
    assert r.model == SERVED
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.usage is not None and 0 < r.usage.completion_tokens <= 8


def test_mlx_stream_matches_plain_answer(shim: RunningShim) -> None:
    client = shim.openai()
    plain = client.chat.completions.create(model=SERVED, messages=CHAT, max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model=SERVED, messages=CHAT, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.model == SERVED for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_mlx_raw_sse_names_and_done(shim: RunningShim) -> None:
    with shim.http() as h:
        r = h.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 4, "stream": True})
    events = sse_events(r.content)
    assert events[-1] == b"[DONE]" and events.count(b"[DONE]") == 1
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["model"] == SERVED for c in chunks)
    assert all(c["choices"] for c in chunks)  # the usage chunk the shim asked for is not shown


def test_mlx_completions(shim: RunningShim) -> None:
    r = shim.openai().completions.create(model=SERVED, prompt="The harbour", max_tokens=5, temperature=0)
    assert r.model == SERVED
    assert r.choices[0].text


@pytest.mark.parametrize("stream", [False, True])
def test_mlx_media_part_is_a_400_envelope(shim: RunningShim, stream: bool) -> None:
    # mlx_lm reads text only (the tiny model has no image processor): a client mistake, not a server error
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}],
            "max_tokens": 4, "stream": stream}
    with shim.http() as h:
        r = h.post("/v1/chat/completions", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["message"]
        assert h.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2}).status_code == 200


def test_mlx_responses_are_translated_to_chat(shim: RunningShim) -> None:
    """mlx_lm has no /v1/responses: the shim answers it through mlx_lm's chat, plain and streamed."""
    client = shim.openai()
    r = client.responses.create(model=SERVED, input="Tell me about the harbour.", max_output_tokens=8,
                                temperature=0)
    assert r.model == SERVED and r.output_text and r.usage is not None and r.usage.output_tokens > 0
    events = list(client.responses.create(model=SERVED, input="Tell me about the harbour.", max_output_tokens=8,
                                          temperature=0, stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == r.output_text and events[-1].type in ("response.completed", "response.incomplete")
