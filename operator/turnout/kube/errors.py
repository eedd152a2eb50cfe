"""API errors as the operator and the agent handle them: retry later, or give up on this request."""

from __future__ import annotations

import json
from typing import Any


class ApiError(Exception):
    """A failed API request; ``status`` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, status: int, reason: str, message: str, *, method: str = "", path: str = "") -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message


class TransientApiError(ApiError):
    """Connection failures, timeouts, 409 conflicts, 429 and 5xx: retry later."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class PermanentApiError(ApiError):
    """400, 403, 404, 422 and the like: the request is wrong as it stands."""


class MalformedWatchEvent(Exception):
    """A watch stream sent a line that is no watch event (not JSON, or not an object with one).

    Not an :class:`ApiError`: no retry policy covers a server (or a proxy) that speaks something else.
    """


def from_response(status: int, body: str | bytes | None, retry_after: str | None, *, method: str,
                  path: str) -> ApiError:
    """The error for an HTTP error answer, its reason and message taken from the ``Status`` object."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else (body or "")
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        reason, message = str(payload.get("reason") or status), str(payload.get("message") or text[:500])
    else:
        reason, message = str(status), text[:500]
    if status in (408, 409, 429) or status >= 500:
        delay = float(retry_after) if retry_after and retry_after.isdigit() else None
        return TransientApiError(status, reason, message, method=method, path=path, retry_after=delay)
    return PermanentApiError(status, reason, message, method=method, path=path)
