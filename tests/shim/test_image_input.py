"""Images in chat: ``image_url`` parts read for a vision model (data: URLs; http(s) only when allowed)."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
from PIL import Image
from shimproc import RunningShim

from turnout.shim.backends import _images
from turnout.shimargs import ShimArgs
from turnout.wire.errors import OpenAIError


def _png(size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(buf, format="PNG")
    return buf.getvalue()


def _data_url(raw: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def _body(url: str) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [
        {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": url}}]}]}


async def test_a_data_url_becomes_an_image_and_an_image_part() -> None:
    messages, images = await _images.read_images(_body(_data_url(_png())), fetch=False)
    assert [im.size for im in images] == [(8, 6)]
    assert messages[1]["content"] == [{"type": "text", "text": "look"}, {"type": "image"}]
    assert messages[0] == {"role": "system", "content": "s"}


@pytest.mark.parametrize("url, words", [
    ("data:image/png;base64,@@@", "not valid base64"),
    ("data:image/png,plain", "must be base64"),
    (_data_url(b"not an image"), "could not be read"),
    ("ftp://example/x.png", "data: or http(s)"),
    ("http://127.0.0.1:9/x.png", "--fetch-image-urls is off"),
])
async def test_unreadable_images_are_400(url: str, words: str) -> None:
    with pytest.raises(OpenAIError) as err:
        await _images.read_images(_body(url), fetch=False)
    assert err.value.status == 400 and words in err.value.message and err.value.param == "messages"


@pytest.fixture
def image_server() -> Iterator[str]:
    big = b"\0" * (_images.MAX_IMAGE_BYTES + 1)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = {"/ok.png": _png((5, 5)), "/big.png": big}.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_fetching_is_limited_in_size_and_answers_400_on_failure(image_server: str) -> None:
    _, images = await _images.read_images(_body(image_server + "/ok.png"), fetch=True)
    assert images[0].size == (5, 5)
    for path, words in (("/big.png", "larger than"), ("/missing.png", "HTTP 404")):
        with pytest.raises(OpenAIError) as err:
            await _images.read_images(_body(image_server + path), fetch=True)
        assert err.value.status == 400 and words in err.value.message


def test_fetch_image_urls_round_trips_the_command_line() -> None:
    args = ShimArgs(engine="transformers", model="/m", served_model_name="m", fetch_image_urls=True)
    assert "--fetch-image-urls" in args.to_argv()
    assert ShimArgs.parse(args.to_argv()[1:]) == args
    assert "--fetch-image-urls" not in ShimArgs(engine="transformers", model="/m", served_model_name="m").to_argv()


@pytest.fixture(scope="module", params=["transformers", "llama.cpp"])
def vision(request: pytest.FixtureRequest, start_shim_factory: Callable[..., RunningShim],
           tiny_model: Any) -> RunningShim:
    """The tiny LLaVA on transformers; the tiny Llama's GGUF with the tiny projector on llama.cpp."""
    from turnout.tinymodel import build_tiny_mmproj, build_tiny_vision_model

    if request.param == "transformers":
        return start_shim_factory(engine="transformers", model=str(build_tiny_vision_model()), served="tiny-vision")
    return start_shim_factory(engine="llama.cpp", model=str(tiny_model.gguf_path), served="tiny-vision",
                              engine_args={"mmproj.path": str(build_tiny_mmproj())})


@pytest.mark.slow
def test_the_image_reaches_a_vision_model(vision: RunningShim) -> None:
    """Both tiny vision models turn a 32x32 image into 16 prompt tokens: two images, 32."""
    client = vision.openai()

    def prompt_tokens(*urls: str, **kw: Any) -> int:
        content = [{"type": "text", "text": "What is this?"}, *({"type": "image_url", "image_url": {"url": u}}
                                                               for u in urls)]
        r = client.chat.completions.create(model="tiny-vision", max_tokens=2, messages=[
            {"role": "user", "content": content}], **kw)
        return r.usage.prompt_tokens  # type: ignore[union-attr]

    url = _data_url(_png((40, 30)))
    none, one, two = prompt_tokens(), prompt_tokens(url), prompt_tokens(url, url)
    assert one - none == 16 and two - none == 32
    assert prompt_tokens(url, n=2, temperature=1.0) == one  # every choice's row carries the image
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny-vision", max_tokens=3, stream=True,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]) if c.choices)
    assert isinstance(text, str)
    with pytest.raises(openai.BadRequestError) as err:
        prompt_tokens("http://127.0.0.1:9/x.png")
    assert err.value.body["code"] == "image_url_fetch_disabled"  # type: ignore[index]
