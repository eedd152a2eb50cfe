"""The OpenAI error: one exception type, its envelope, and engines' error answers read into it.

Every refusal the shim and the gateway answer with, and every error a backend
raises, is an :class:`OpenAIError`; it is written as
``{"error": {"message", "type", "param", "code"}}`` with its status, plus
``Retry-After`` and any other headers it carries.
"""

from __future__ import annotations

import json
import math
from typing import Any

#: the error ``type`` written for each status when nothing more specific is known
STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
    504: "server_error",
}


def error_type(status: int) -> str:
    """A sensible envelope ``type`` for an HTTP status."""
    if status in STATUS_TYPES:
        return STATUS_TYPES[status]
    return "server_error" if status >= 500 else "invalid_request_error"


class OpenAIError(Exception):
    """An error the client caused or can act on, answered in the OpenAI envelope.

    ``retry_after`` (seconds) adds a ``Retry-After`` header, e.g. with status
    429 or 503 when a queue is full; ``headers`` are more answer headers
    (``WWW-Authenticate`` with a 401).
    """

    def __init__(self, message: str, *, status: int = 400, type: str | None = None,
                 param: str | None = None, code: str | None = None,
                 retry_after: float | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type or error_type(status)
        self.param = param
        self.code = code
        self.retry_after = retry_after
        self.headers = headers

    def envelope(self) -> dict[str, Any]:
        """The OpenAI error body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def answer_headers(self) -> dict[str, str]:
        """``Retry-After`` (when set) and the error's other headers."""
        out = retry_after_header(self.retry_after)
        if self.headers:
            out.update(self.headers)
        return out


def envelope(message: str, status: int = 400, *, type: str | None = None,
             param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``."""
    return OpenAIError(message, status=status, type=type, param=param, code=code).envelope()


def retry_after_header(seconds: float | None) -> dict[str, str]:
    """``Retry-After`` as whole seconds (at least 1), or nothing."""
    if seconds is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def sse_error_event(exc: BaseException) -> bytes:
    """An SSE event carrying the envelope for an error raised mid-stream."""
    if isinstance(exc, OpenAIError):
        body = exc.envelope()
    else:
        body = envelope(f"internal error while streaming: {type(exc).__name__}", 500,
                        code="internal_error")
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def from_engine(status: int, raw: bytes) -> OpenAIError:
    """Normalise an engine's error answer (vLLM, SGLang, mlx_lm shapes) to an OpenAIError.

    Accepted shapes: ``{"error": {...}}`` (OpenAI, recent vLLM),
    ``{"object": "error", "message", "type", "code"}`` (SGLang, older vLLM),
    ``{"error": "text"}`` (mlx_lm), ``{"detail": ...}`` (FastAPI) and plain text.
    """
    message: str | None = None
    etype: str | None = None
    param: str | None = None
    code: str | None = None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        inner = data.get("error", data)
        if isinstance(inner, str):
            message = inner
        elif isinstance(inner, dict):
            msg = inner.get("message", inner.get("detail"))
            message = msg if isinstance(msg, str) else (json.dumps(msg) if msg is not None else None)
            etype = inner.get("type") if isinstance(inner.get("type"), str) else None
            param = inner.get("param") if isinstance(inner.get("param"), str) else None
            raw_code = inner.get("code")
            code = raw_code if isinstance(raw_code, str) else None
    if message is None:
        text = raw.decode("utf-8", "replace").strip()
        message = text[:2000] or f"the engine answered HTTP {status}"
    if status < 400:
        status = 500
    # The engine's own type names vary ("BadRequestError", "Bad Request"); keep the
    # OpenAI ones so clients can branch on them.
    if etype not in set(STATUS_TYPES.values()):
        etype = error_type(status)
    return OpenAIError(message, status=status, type=etype, param=param, code=code)
