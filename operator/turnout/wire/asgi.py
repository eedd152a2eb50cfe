"""Raw-ASGI helpers the shim and the gateway share: answers, the request body, the caller's key.

The ASGI callables are typed as ``starlette.types`` names them, without
importing Starlette (the gateway does not depend on it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from turnout.wire.errors import OpenAIError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = Iterable[tuple[bytes, bytes]]

#: the end of an OpenAI stream
DONE = b"data: [DONE]\n\n"
#: the headers of a streamed answer
SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"),
               (b"content-type", b"text/event-stream; charset=utf-8")]
JSON = b"application/json"


def dumps(obj: Any) -> bytes:
    """Compact JSON, UTF-8."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


async def send_bytes(send: Send, status: int, body: bytes, content_type: bytes = JSON,
                     headers: dict[str, str] | None = None) -> None:
    """A whole answer: start and body."""
    raw = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if headers:
        raw += [(k.lower().encode(), str(v).encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
    await send_bytes(send, status, dumps(obj), headers=headers)


async def send_error(send: Send, exc: OpenAIError) -> None:
    """``exc`` as its status, its envelope and its headers."""
    await send_bytes(send, exc.status, dumps(exc.envelope()), headers=exc.answer_headers())


class StatusSend:
    """``send`` that remembers the status it started the answer with (``status``: ``default`` until then).

    Pass :attr:`send` (a bound method, as cheap as a closure) on to the app.
    """

    __slots__ = ("_send", "status")

    def __init__(self, send: Send, default: int = 0) -> None:
        self._send = send
        self.status = default

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)


def header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def bearer(headers: Headers) -> bytes:
    """The token of ``Authorization: Bearer <token>``, or ``b""`` when there is none."""
    value = header(headers, b"authorization")
    if value is None:
        return b""
    scheme, _, token = value.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""


def unauthorized() -> OpenAIError:
    """The 401 for a missing or wrong key."""
    return OpenAIError("missing or invalid API key: send 'Authorization: Bearer <key>'", status=401,
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def too_large(limit: int, length: int | None = None) -> OpenAIError:
    """The 413 for a body over ``limit`` bytes (``length``: as declared by ``Content-Length``)."""
    what = f"request body of {length} bytes is" if length is not None else "request body is"
    return OpenAIError(f"{what} larger than the limit of {limit} bytes", status=413, code="request_too_large")


def check_length(headers: Headers, limit: int) -> None:
    """Refuse a declared ``Content-Length`` that is not a number (400) or is over ``limit`` (413)."""
    value = header(headers, b"content-length")
    if value is None:
        return
    if not value.isdigit():
        raise OpenAIError("invalid Content-Length header")
    if int(value) > limit:
        raise too_large(limit, int(value))


#: Seconds a request body may take to arrive whole (then 408): a body that trickles holds no connection long.
DEFAULT_BODY_TIMEOUT = 60.0


async def read_body(receive: Receive, limit: int | None = None, timeout: float | None = None) -> bytes | None:
    """The whole request body, or None when the client disconnected first; 413 past ``limit`` bytes; 408 when
    it has not all arrived within ``timeout`` seconds (a body that trickles in, slowloris, holds nothing long)."""
    if timeout is None:
        return await _read_body(receive, limit)
    try:
        async with asyncio.timeout(timeout):
            return await _read_body(receive, limit)
    except TimeoutError:
        raise OpenAIError(f"the request body did not arrive within {timeout:g} s", status=408,
                          code="request_timeout") from None


async def _read_body(receive: Receive, limit: int | None) -> bytes | None:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        piece = message.get("body", b"")
        if limit is not None:
            size += len(piece)
            if size > limit:
                raise too_large(limit)
        parts.append(piece)
        if not message.get("more_body"):
            return parts[0] if len(parts) == 1 else b"".join(parts)
