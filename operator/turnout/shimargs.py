"""The shim's command line: rendered by the operator, parsed by the shim.

This module is the one contract between the two. ``ShimArgs.to_argv`` is what
the renderer writes into a container's ``command``; ``ShimArgs.parse`` is what
``turnout-shim`` runs on ``sys.argv``. A test renders every plan the
resolver can produce and proves ``parse(to_argv(x)) == x``.

A replica over several nodes (a LeaderWorkerSet group) renders one command for all its workers, so a
pod's rank and its leader's address are references the kubelet fills in from the container's
environment (``$(LWS_WORKER_INDEX)``, see :class:`EnvRef`); the test expands them as the kubelet does
(:func:`expand_env`) before parsing, and compares with :meth:`ShimArgs.with_env`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from turnout.resolver import engines

ENGINES = tuple(engines.ENGINES)
MODEL_TYPES = ("llm", "embedding", "rerank")
DEVICES = ("cpu", "cuda", "npu", "mps")
PROGRAM = "turnout-shim"
#: Where the shim writes why it exits when its engine cannot serve: the container's termination message.
#: In a pod the kubelet provides ``/dev/termination-log`` (``terminationMessagePath``); a host agent, whose
#: containers are processes, names a file of its own in this variable.
TERMINATION_LOG_ENV = "TURNOUT_TERMINATION_LOG"
TERMINATION_LOG = "/dev/termination-log"
DEFAULT_PORT = 8000
#: port of a multi-node group's rendezvous on its leader (vLLM --master-port, SGLang --dist-init-addr)
DEFAULT_DIST_PORT = 29500
#: vLLM's defaults for --max-loras and --max-lora-rank
DEFAULT_MAX_LORAS = 1
DEFAULT_MAX_LORA_RANK = 16


@dataclass(frozen=True)
class EnvRef:
    """A value the kubelet takes from the container's environment: rendered as ``$(NAME)``."""

    name: str

    def __str__(self) -> str:
        return f"$({self.name})"


@dataclass(frozen=True)
class LoraModule:
    """An adapter loaded when the engine starts: ``--lora-modules name=path`` (vLLM's flag shape)."""

    name: str
    path: str

    def __str__(self) -> str:
        return f"{self.name}={self.path}"


_REF = re.compile(r"\$(\$)?\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_env(argv: list[str], env: Mapping[str, str]) -> list[str]:
    """``$(VAR)`` references in a container command expanded as the kubelet does.

    A known variable is replaced, ``$$(VAR)`` is the literal ``$(VAR)``, an unknown one is left as it is.
    """

    def one(match: re.Match[str]) -> str:
        if match.group(1):
            return f"$({match.group(2)})"
        return env.get(match.group(2), match.group(0))

    return [_REF.sub(one, arg) for arg in argv]


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
    #: one replica over several nodes: the engine's pipeline stages, pods in the group, this pod's rank
    pipeline_parallel_size: int = 1
    nnodes: int = 1
    node_rank: int | EnvRef = 0
    leader_address: str | EnvRef | None = None  # host the other nodes reach rank 0 at
    dist_port: int = DEFAULT_DIST_PORT
    #: the tool-call parser of the model's family, in vLLM's names (turnout.toolparsers); None: none known
    tool_call_parser: str | None = None
    #: LoRA adapters: accepted at run time (``/v1/load_lora_adapter``), at most ``max_loras`` loaded at once
    #: (least recently used unloaded first), of rank up to ``max_lora_rank``; ``lora_modules`` are loaded at start
    enable_lora: bool = False
    max_loras: int = DEFAULT_MAX_LORAS
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK
    lora_modules: tuple[LoraModule, ...] = ()
    #: fetch ``http(s)`` image URLs in chat requests (off: only ``data:`` URLs; see shim/backends/_images.py)
    fetch_image_urls: bool = False

    @property
    def is_worker(self) -> bool:
        """A pod of a multi-node group other than its leader: it runs the engine headless, serves no API."""
        return self.nnodes > 1 and self.node_rank != 0

    def with_env(self, env: Mapping[str, str]) -> ShimArgs:
        """These arguments with every :class:`EnvRef` replaced from ``env``, as the kubelet expands them."""
        changes: dict[str, Any] = {}
        if isinstance(self.node_rank, EnvRef):
            changes["node_rank"] = int(env[self.node_rank.name])
        if isinstance(self.leader_address, EnvRef):
            changes["leader_address"] = env[self.leader_address.name]
        return dataclasses.replace(self, **changes)

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
        if self.tool_call_parser:
            argv += ["--tool-call-parser", self.tool_call_parser]
        if self.pipeline_parallel_size > 1:
            argv += ["--pipeline-parallel-size", str(self.pipeline_parallel_size)]
        if self.nnodes > 1:
            argv += ["--nnodes", str(self.nnodes), "--node-rank", str(self.node_rank)]
            if self.leader_address is not None:
                argv += ["--leader-address", str(self.leader_address)]
            argv += ["--dist-port", str(self.dist_port)]
        if self.enable_lora:
            argv += ["--enable-lora", "--max-loras", str(self.max_loras), "--max-lora-rank", str(self.max_lora_rank)]
            if self.lora_modules:
                argv += ["--lora-modules", *map(str, self.lora_modules)]
        if self.fetch_image_urls:
            argv.append("--fetch-image-urls")
        return argv

    @classmethod
    def parse(cls, argv: list[str]) -> ShimArgs:
        """Parse a command line (without the program name); exits 2 on bad input."""
        parser = build_parser()
        ns = parser.parse_args(argv)
        if ns.nnodes > 1 and ns.leader_address is None:
            parser.error(f"--nnodes {ns.nnodes} needs --leader-address (the host of node rank 0)")
        if ns.node_rank >= ns.nnodes:
            parser.error(f"--node-rank {ns.node_rank} must be below --nnodes {ns.nnodes}")
        modules = tuple(ns.lora_modules or ())
        if modules and not ns.enable_lora:
            parser.error("--lora-modules needs --enable-lora")
        names = [m.name for m in modules]
        if len(set(names)) != len(names):
            parser.error(f"--lora-modules names must be unique, got {', '.join(names)}")
        if len(modules) > ns.max_loras:
            parser.error(f"{len(modules)} --lora-modules but --max-loras {ns.max_loras}")
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
            pipeline_parallel_size=ns.pipeline_parallel_size,
            nnodes=ns.nnodes,
            node_rank=ns.node_rank,
            leader_address=ns.leader_address,
            dist_port=ns.dist_port,
            tool_call_parser=ns.tool_call_parser,
            enable_lora=ns.enable_lora,
            max_loras=ns.max_loras,
            max_lora_rank=ns.max_lora_rank,
            lora_modules=modules,
            fetch_image_urls=ns.fetch_image_urls,
        )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _node_rank(text: str) -> int:
    if text.startswith("$("):
        raise argparse.ArgumentTypeError(
            f"{text} was not expanded: the kubelet fills it in from the pod's environment (run the pod in a "
            "LeaderWorkerSet, or pass the rank as a number)"
        )
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
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


def _lora_module(text: str) -> LoraModule:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected name=path, got {text!r}")
    return LoraModule(name, path)


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
    p.add_argument("--fetch-image-urls", action="store_true",
                   help="fetch http(s) image URLs in chat requests (default: only data: URLs are read)")
    p.add_argument("--engine-args", type=_engine_args, default={}, help="JSON object passed to the engine")
    p.add_argument("--tool-call-parser", default=None,
                   help="the model family's tool-call parser, in vLLM's names (hermes, llama3_json, mistral...)")
    multi = p.add_argument_group("one replica over several nodes (a LeaderWorkerSet group)")
    multi.add_argument("--pipeline-parallel-size", type=_positive_int, default=1,
                       help="pipeline stages (vLLM: one per node)")
    multi.add_argument("--nnodes", type=_positive_int, default=1, help="nodes (pods) in the group")
    multi.add_argument("--node-rank", type=_node_rank, default=0,
                       help="this pod's rank: 0 serves the API, the others run the engine headless")
    multi.add_argument("--leader-address", default=None, help="host of rank 0, which the other ranks connect to")
    multi.add_argument("--dist-port", type=_port, default=DEFAULT_DIST_PORT,
                       help="port of the group's rendezvous on rank 0")
    lora = p.add_argument_group("LoRA adapters (docs/lora.md)")
    lora.add_argument("--enable-lora", action="store_true",
                      help="serve LoRA adapters of the model: /v1/load_lora_adapter, /v1/unload_lora_adapter")
    lora.add_argument("--max-loras", type=_positive_int, default=DEFAULT_MAX_LORAS,
                      help="adapters loaded at once; loading one more unloads the least recently used")
    lora.add_argument("--max-lora-rank", type=_positive_int, default=DEFAULT_MAX_LORA_RANK,
                      help="largest rank of an adapter")
    lora.add_argument("--lora-modules", type=_lora_module, nargs="+", default=None, metavar="NAME=PATH",
                      help="adapters loaded at start: PEFT folders, or sources (builtin://, hf://, s3://, pvc://)")
    return p
