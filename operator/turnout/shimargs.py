"""The shim's command line: rendered by the operator, parsed by the shim.

This module is the one contract between the two. ``ShimArgs.to_argv`` is what
the renderer writes into a container's ``command``; ``ShimArgs.parse`` is what
``turnout-shim`` runs on ``sys.argv``. A test renders every plan the
resolver can produce and proves ``parse(to_argv(x)) == x``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Any

ENGINES = ("vllm", "sglang", "llama.cpp", "transformers", "mlx")
MODEL_TYPES = ("llm", "embedding", "rerank")
DEVICES = ("cpu", "cuda", "npu", "mps")
PROGRAM = "turnout-shim"
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class ShimArgs:
    """Everything the shim needs to start one engine and serve one model."""

    engine: str
    model: str
    served_model_name: str
    model_type: str = "llm"
    device: str = "cpu"
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    tensor_parallel_size: int = 1
    model_format: str | None = None
    quantization: str | None = None
    api_key_file: str | None = None
    max_queue: int = 256
    engine_args: dict[str, Any] = field(default_factory=dict)

    def to_argv(self) -> list[str]:
        """The command line, program name first; stable for equal inputs."""
        argv = [
            PROGRAM,
            "--engine",
            self.engine,
            "--model",
            self.model,
            "--served-model-name",
            self.served_model_name,
            "--model-type",
            self.model_type,
            "--device",
            self.device,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--tensor-parallel-size",
            str(self.tensor_parallel_size),
            "--max-queue",
            str(self.max_queue),
        ]
        if self.model_format:
            argv += ["--model-format", self.model_format]
        if self.quantization:
            argv += ["--quantization", self.quantization]
        if self.api_key_file:
            argv += ["--api-key-file", self.api_key_file]
        if self.engine_args:
            argv += ["--engine-args", json.dumps(self.engine_args, sort_keys=True, separators=(",", ":"))]
        return argv

    @classmethod
    def parse(cls, argv: list[str]) -> ShimArgs:
        """Parse a command line (without the program name); exits 2 on bad input."""
        ns = build_parser().parse_args(argv)
        return cls(
            engine=ns.engine,
            model=ns.model,
            served_model_name=ns.served_model_name or ns.model,
            model_type=ns.model_type,
            device=ns.device,
            host=ns.host,
            port=ns.port,
            tensor_parallel_size=ns.tensor_parallel_size,
            model_format=ns.model_format,
            quantization=ns.quantization,
            api_key_file=ns.api_key_file,
            max_queue=ns.max_queue,
            engine_args=ns.engine_args,
        )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return value


def _engine_args(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--engine-args is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--engine-args must be a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for ``turnout-shim``."""
    p = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Serve one model through one engine behind an OpenAI-compatible API.",
    )
    p.add_argument("--engine", required=True, choices=ENGINES, help="inference engine to run")
    p.add_argument("--model", required=True,
                   help="model location: a path, or a file://, pvc://, hf://, s3:// or builtin:// URI")
    p.add_argument("--served-model-name", default=None, help="name clients pass as 'model' (default: --model)")
    p.add_argument("--model-type", default="llm", choices=MODEL_TYPES, help="what the model does")
    p.add_argument("--device", default="cpu", choices=DEVICES, help="accelerator to run on")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help="port to listen on")
    p.add_argument("--tensor-parallel-size", type=_positive_int, default=1, help="devices per replica")
    p.add_argument("--model-format", default=None, help="pytorch, gguf, awq, gptq, fp8, fp4, bnb or mlx")
    p.add_argument("--quantization", default=None, help="quantization of the weights, e.g. Int4 or Q4_K_M")
    p.add_argument("--api-key-file", default=None, help="file holding the Bearer key clients must send")
    p.add_argument("--max-queue", type=_positive_int, default=256, help="requests admitted before 429")
    p.add_argument("--engine-args", type=_engine_args, default={}, help="JSON object passed to the engine")
    return p
