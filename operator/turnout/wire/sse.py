"""Cutting an engine's SSE body into whole events, by the spec, without parsing each one.

An event ends at a blank line; a line ends with ``\\r\\n``, ``\\n`` or ``\\r``
(the HTML standard's ``text/event-stream``), so ``\\n\\n``, ``\\r\\n\\r\\n``,
``\\r\\r`` and their mixtures all end an event. Bytes are relayed as the
engine wrote them: multi-line ``data:``, comments and ``id:``/``event:``
fields pass through intact. Only two kinds of event are looked into, found
with a bytes search: ``[DONE]`` (dropped with whatever follows; the app writes
its own) and events carrying ``"usage"`` (recorded, and dropped when they
have no choices and the client did not ask for usage).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_USAGE = b'"usage"'
_DONE = b"[DONE]"
#: a blank line: an end of line (a CR that is not the first half of a CRLF, or LF, or CRLF) followed by another
_BLANK = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")
_LINES = re.compile(rb"\r\n|\r|\n")


@dataclass
class Usage:
    """The token counts of one answer, filled in when its stream ends."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class SSEStats:
    """What a relay saw: usage (when the engine sent it) and how many events it relayed."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    events: int = 0
    done: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def completion_tokens_or_events(self) -> int:
        """Completion tokens from the engine's usage, or the number of events relayed when it sent none."""
        return self.completion_tokens if self.completion_tokens is not None else self.events


def last_boundary(data: bytes) -> int:
    """The offset just past the last blank line in ``data``, or -1 when it holds none."""
    if b"\r" not in data:
        end = data.rfind(b"\n\n")
        return end + 2 if end >= 0 else -1
    end = -1
    for m in _BLANK.finditer(data):
        end = m.end()
    return end


def split_events(data: bytes) -> list[bytes]:
    """``data`` (whole events) as one bytes per event, each with its terminating blank line."""
    if b"\r" not in data:
        return [e + b"\n\n" for e in data.split(b"\n\n") if e]
    out, pos = [], 0
    for m in _BLANK.finditer(data):
        out.append(data[pos:m.end()])
        pos = m.end()
    if pos < len(data):
        out.append(data[pos:])
    return out


def count_events(data: bytes) -> int:
    """How many events ``data`` (whole events) holds."""
    if b"\r" not in data:
        return data.count(b"\n\n")
    return sum(1 for _ in _BLANK.finditer(data))


def event_data(event: bytes) -> bytes:
    """The event's data: its ``data:`` lines' values (one leading space dropped) joined by ``\\n``."""
    values = []
    for line in _LINES.split(event):
        if line.startswith(b"data:"):
            value = line[5:]
            values.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(values)


class Cutter:
    """Cuts body pieces into buffers of whole SSE events, without the engine's ``[DONE]``.

    Usage-only events (``"choices":[]`` with ``"usage"``) are recorded in the
    stats and dropped unless ``keep_usage``; ``stats.done`` says ``[DONE]`` was
    seen; :meth:`tail` gives what followed the last event boundary at the end.
    """

    __slots__ = ("buf", "keep_usage", "rewrite", "stats")

    def __init__(self, stats: SSEStats, keep_usage: bool, rewrite: Callable[[bytes], bytes] | None) -> None:
        self.stats = stats
        self.keep_usage = keep_usage
        self.rewrite = rewrite
        self.buf = b""

    def cut(self, piece: bytes) -> bytes | None:
        """The whole events that ``piece`` completes (filtered and rewritten), or None."""
        if self.buf:
            piece = self.buf + piece
        end = last_boundary(piece)
        if end < 0:
            self.buf = piece
            return None
        if end == len(piece):
            out, self.buf = piece, b""
        else:
            out, self.buf = piece[:end], piece[end:]
        if _DONE in out or _USAGE in out:
            out = self._filter(out)
            if not out:
                return None
        self.stats.events += count_events(out)
        return self.rewrite(out) if self.rewrite is not None else out

    def tail(self) -> bytes | None:
        """Bytes after the last event boundary when the body ended (relayed as they are), or None."""
        buf, self.buf = self.buf, b""
        if not buf.strip():
            return None
        return self.rewrite(buf) if self.rewrite is not None else buf

    def _filter(self, data: bytes) -> bytes:
        """Drop ``[DONE]`` (and what follows it) and, unless asked for, usage-only events; record usage."""
        stats = self.stats
        kept: list[bytes] = []
        if b"\r" not in data:
            # the events before the first one that may be [DONE] or usage go on whole, unsplit: a read that
            # holds a whole fast answer (hundreds of events) costs two searches, not a list of its events
            found = [i for i in (data.find(_DONE), data.find(_USAGE)) if i >= 0]
            start = data.rfind(b"\n\n", 0, min(found)) + 2 if found else len(data)
            if start > 1:
                kept.append(data[:start])
                data = data[start:]
        for event in split_events(data):
            if _DONE in event or _USAGE in event:
                payload = event_data(event)
                if payload.strip() == _DONE:
                    stats.done = True
                    break
                if _USAGE in payload and not self._usage(payload):
                    continue
            kept.append(event)
        return b"".join(kept)

    def _usage(self, payload: bytes) -> bool:
        """Record the usage in ``payload``; False when the event is to be dropped."""
        try:
            obj = json.loads(payload)
        except ValueError:
            return True
        if not isinstance(obj, dict) or not isinstance(obj.get("usage"), dict):
            return True
        u, stats = obj["usage"], self.stats
        if isinstance(u.get("prompt_tokens"), int):
            stats.prompt_tokens = u["prompt_tokens"]
        if isinstance(u.get("completion_tokens"), int):
            stats.completion_tokens = u["completion_tokens"]
        return self.keep_usage or bool(obj.get("choices"))
