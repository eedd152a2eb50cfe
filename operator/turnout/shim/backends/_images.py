"""The images of a chat request, for an in-process vision model: ``image_url`` parts read into PIL images.

A ``data:`` URL (base64) is decoded here. An ``http(s)`` URL is fetched only when the shim runs with
``--fetch-image-urls`` (off by default): fetching makes the model server a client of any address a
request names, including services inside the cluster that are not meant to be reachable (SSRF), so
a deployment opts in. A fetch is limited to :data:`FETCH_TIMEOUT` seconds and :data:`MAX_IMAGE_BYTES`
bytes, follows no redirects, and any failure is the client's 400.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from turnout.wire.errors import OpenAIError

#: largest image accepted, encoded, from a data: URL or a fetch
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: seconds a fetch of an image URL may take in all
FETCH_TIMEOUT = 10.0
#: largest image accepted, in pixels (PIL's decompression-bomb guard, made a 400)
MAX_PIXELS = 64 * 1024 * 1024


def has_images(body: dict[str, Any]) -> bool:
    """Whether any message has an ``image_url`` part."""
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "image_url" for p in content):
            return True
    return False


def refuse_fetch(body: dict[str, Any], fetch: bool) -> None:
    """400 for an ``http(s)`` image URL unless fetching is on (for engines that would fetch it themselves)."""
    if fetch:
        return
    for i, message in enumerate(body.get("messages") or ()):
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            ref = part.get("image_url") if isinstance(part, dict) and part.get("type") == "image_url" else None
            url = ref.get("url") if isinstance(ref, dict) else ref
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                raise _fetch_disabled(i)


def _fetch_disabled(i: int) -> OpenAIError:
    return OpenAIError(f"messages[{i}]: this server does not fetch image URLs (the shim's --fetch-image-urls is "
                       "off); send the image as a data: URL", param="messages", code="image_url_fetch_disabled")


async def read_images(body: dict[str, Any], *, fetch: bool) -> tuple[list[dict[str, Any]], list[Any]]:
    """The messages with each ``image_url`` part as ``{"type": "image"}`` (for chat templates), and the images.

    Parts other than text and images are a 400, as are images that cannot be read.
    """
    messages: list[dict[str, Any]] = []
    images: list[Any] = []
    for i, message in enumerate(body.get("messages") or ()):
        if not isinstance(message, dict):
            raise OpenAIError(f"messages[{i}] must be an object", param="messages")
        content = message.get("content")
        if not isinstance(content, list):
            messages.append({**message, "content": "" if content is None else content})
            continue
        parts: list[dict[str, Any]] = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": str(part.get("text", ""))})
            elif kind == "image_url":
                ref = part.get("image_url")
                url = ref.get("url") if isinstance(ref, dict) else ref
                if not isinstance(url, str):
                    raise OpenAIError(f"messages[{i}]: image_url.url must be a string", param="messages")
                images.append(_decode(await _bytes(url, fetch, i), i))
                parts.append({"type": "image"})
            else:
                raise OpenAIError(f"messages[{i}] has a {kind!r} part; this model reads text and images",
                                  param="messages", code="unsupported")
        messages.append({**message, "content": parts})
    return messages, images


async def _bytes(url: str, fetch: bool, i: int) -> bytes:
    if url.startswith("data:"):
        head, sep, data = url.partition(",")
        if not sep or not head.endswith(";base64"):
            raise OpenAIError(f"messages[{i}]: a data: image URL must be base64 (data:image/png;base64,...)",
                              param="messages")
        if len(data) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise OpenAIError(f"messages[{i}]: the image is larger than {MAX_IMAGE_BYTES} bytes", param="messages")
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise OpenAIError(f"messages[{i}]: the data: URL is not valid base64", param="messages") from None
    if url.startswith(("http://", "https://")):
        if not fetch:
            raise _fetch_disabled(i)
        return await _fetch(url, i)
    raise OpenAIError(f"messages[{i}]: an image URL must be a data: or http(s) URL", param="messages")


async def _fetch(url: str, i: int) -> bytes:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False) as client, \
                client.stream("GET", url) as resp:
            if resp.status_code != 200:
                raise OpenAIError(f"messages[{i}]: fetching the image answered HTTP {resp.status_code}",
                                  param="messages", code="image_url_fetch_failed")
            data = bytearray()
            async for piece in resp.aiter_bytes():
                data += piece
                if len(data) > MAX_IMAGE_BYTES:
                    raise OpenAIError(f"messages[{i}]: the image is larger than {MAX_IMAGE_BYTES} bytes",
                                      param="messages", code="image_url_fetch_failed")
            return bytes(data)
    except httpx.HTTPError as exc:
        raise OpenAIError(f"messages[{i}]: fetching the image failed: {type(exc).__name__}: {exc}",
                          param="messages", code="image_url_fetch_failed") from None


def _decode(data: bytes, i: int) -> Any:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise OpenAIError(f"messages[{i}]: the image has more than {MAX_PIXELS} pixels", param="messages")
            return image.convert("RGB")
    except OpenAIError:
        raise
    except Exception as exc:  # PIL raises many kinds for data that is not an image it reads
        raise OpenAIError(f"messages[{i}]: the image could not be read: {exc}", param="messages") from None
