"""MLX through ``mlx_lm``'s server (``python -m mlx_lm server``)."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from turnout.shim.backends.proxy import ProxyBackend, engine_flags, engine_python, local_model_ref
from turnout.wire.errors import OpenAIError, from_engine

#: the name mlx_lm's server gives the model loaded from ``--model``
MLX_DEFAULT_MODEL = "default_model"


class MlxBackend(ProxyBackend):
    """mlx_lm: chat and completions. It has no served-name flag, so names are rewritten."""

    engine: ClassVar[str] = "mlx"
    python_env: ClassVar[str] = "TURNOUT_MLX_PYTHON"
    health_path: ClassVar[str] = "/health"
    reserved_flags: ClassVar[tuple[str, ...]] = ("host", "port", "model")

    def __init__(self, args: Any, **kw: Any) -> None:
        super().__init__(args, **kw)
        served = json.dumps(args.served_model_name).encode()
        self._rename = [(b'"model": "' + MLX_DEFAULT_MODEL.encode() + b'"', b'"model": ' + served),
                        (b'"model":"' + MLX_DEFAULT_MODEL.encode() + b'"', b'"model":' + served)]

    def capabilities_for(self, model_type: str) -> frozenset[str]:
        if model_type != "llm":
            raise ValueError(f"mlx_lm serves only llm models, not {model_type!r}")
        return frozenset({"chat", "completions"})

    def command(self, port: int) -> list[str]:
        a = self.args
        cmd = [
            engine_python(self.python_env), "-m", "mlx_lm", "server",
            "--model", local_model_ref(a.model),
            "--host", "127.0.0.1",
            "--port", str(port),
        ]
        return cmd + engine_flags(a.engine_args, reserved=self.reserved_flags, negate_false=False)

    def to_engine(self, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "model": MLX_DEFAULT_MODEL}
        if "max_tokens" not in body and "max_completion_tokens" in body:
            body["max_tokens"] = body["max_completion_tokens"]
        return body

    def engine_error(self, path: str, status: int, raw: bytes) -> OpenAIError:
        """mlx_lm answers 404 when preparing a generation raises; the shim only POSTs routes mlx_lm has.

        Those errors are the request's (a content part other than text, a chat template that refuses
        the messages): 400, except a generation thread that died (503).
        """
        err = from_engine(status, raw)
        if status != 404:
            return err
        if "generation thread died" in err.message:
            return OpenAIError(f"the mlx engine failed: {err.message}", status=503, code="engine_unavailable",
                               retry_after=10)
        return OpenAIError(err.message, status=400, param="messages" if "chat" in path else "prompt")

    def rewrite_stream(self, data: bytes) -> bytes:
        for old, new in self._rename:
            data = data.replace(old, new)
        return data
