"""The wire layer's raw-ASGI helpers and disconnect watcher, on their own (the shim and the gateway use them)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from turnout.wire.asgi import StatusSend, bearer, check_length, read_body, send_error, send_json
from turnout.wire.disconnect import Disconnect
from turnout.wire.errors import OpenAIError


def _receiver(*messages: dict[str, Any], then_wait: bool = False) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        if then_wait:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    return receive


class _Sent:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def answer(self) -> tuple[int, dict[bytes, bytes], Any]:
        start, body = self.messages
        return start["status"], dict(start["headers"]), json.loads(body["body"])


async def test_read_body_joins_chunks_and_stops_past_the_limit() -> None:
    parts = ({"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"cd"})
    assert await read_body(_receiver(*parts), 4) == b"abcd"
    with pytest.raises(OpenAIError) as info:
        await read_body(_receiver(*parts), 3)
    assert (info.value.status, info.value.code) == (413, "request_too_large")
    assert await read_body(_receiver({"type": "http.disconnect"})) is None


def test_content_length_is_checked_before_reading() -> None:
    check_length([(b"content-length", b"10")], 10)
    with pytest.raises(OpenAIError, match="request body of 11 bytes") as info:
        check_length([(b"content-length", b"11")], 10)
    assert info.value.status == 413
    with pytest.raises(OpenAIError, match="invalid Content-Length") as info:
        check_length([(b"content-length", b"ten")], 10)
    assert info.value.status == 400


def test_bearer_reads_only_a_bearer_token() -> None:
    assert bearer([(b"authorization", b"Bearer  sk-1 ")]) == b"sk-1"
    assert bearer([(b"authorization", b"bearer sk-1")]) == b"sk-1"
    assert bearer([(b"authorization", b"Basic c2s=")]) == b""
    assert bearer([]) == b""


async def test_an_error_is_answered_in_the_envelope_with_its_headers() -> None:
    sent = _Sent()
    capture = StatusSend(sent, 500)
    await send_error(capture.send, OpenAIError("slow down", status=429, code="queue_full", retry_after=0.2,
                                               headers={"X-Why": "full"}))
    status, headers, body = sent.answer()
    assert status == capture.status == 429
    assert headers[b"retry-after"] == b"1" and headers[b"x-why"] == b"full"
    assert headers[b"content-length"] == str(len(sent.messages[1]["body"])).encode()
    assert body == {"error": {"message": "slow down", "type": "rate_limit_error", "param": None,
                              "code": "queue_full"}}


async def test_a_disconnect_cancels_the_answer_and_ends_at_the_block() -> None:
    reached = []
    async with Disconnect(_receiver()) as watch:
        await asyncio.sleep(10)
        reached.append(True)
    assert watch.cancelled and watch.disconnected and not reached
    await asyncio.sleep(0)  # the task was uncancelled: it goes on
    sent = _Sent()
    await send_json(sent, 499, {"ok": False})
    assert sent.answer()[0] == 499


async def test_a_disconnect_after_the_answer_finished_cancels_nothing() -> None:
    async with Disconnect(_receiver()) as watch:
        watch.finished = True
        await asyncio.sleep(0.01)
    assert not watch.cancelled and not watch.disconnected


async def test_other_cancellations_go_on() -> None:
    async def answer() -> None:
        async with Disconnect(_receiver(then_wait=True)):
            await asyncio.sleep(10)

    task = asyncio.ensure_future(answer())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
