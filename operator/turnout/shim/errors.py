"""The OpenAI error envelope, shared by the app, its middleware and the proxy."""

from __future__ import annotations

import json
import math
from typing import Any

from turnout.shim.backends.base import STATUS_TYPES, BackendError, error_type


def envelope(message: str, status: int = 400, *, type: str | None = None,
             param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type or error_type(status), "param": param,
                      "code": code}}


def envelope_bytes(message: str, status: int = 400, **kw: Any) -> bytes:
    return json.dumps(envelope(message, status, **kw), separators=(",", ":")).encode()


def retry_after_header(seconds: float | None) -> dict[str, str]:
    """``Retry-After`` as whole seconds (at least 1), or nothing."""
    if seconds is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def sse_error_event(exc: BaseException) -> bytes:
    """An SSE event carrying the envelope for an error raised mid-stream."""
    if isinstance(exc, BackendError):
        body = exc.envelope()
    else:
        body = envelope(f"internal error while streaming: {type(exc).__name__}", 500,
                        code="internal_error")
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def from_engine(status: int, raw: bytes) -> BackendError:
    """Normalise an engine's error answer (vLLM, SGLang, mlx_lm shapes) to a BackendError.

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
    return BackendError(message, status=status, type=etype, param=param, code=code)
