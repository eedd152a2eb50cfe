"""vLLM through its own OpenAI server (``vllm.entrypoints.openai.api_server``).

A replica over several nodes runs ``vllm serve`` on every pod with vLLM's multiprocessing backend, no
Ray (vLLM docs, serving/parallelism_scaling.md): tensor parallel within a node, one pipeline stage per
node, ``--nnodes/--node-rank/--master-addr/--master-port``; rank 0 serves the API, the other ranks run
``--headless``.
"""

from __future__ import annotations

from typing import ClassVar

from turnout.shim.backends.proxy import ProxyBackend, engine_flags, engine_python, local_model_ref
from turnout.shimargs import ShimArgs


def tool_flags(args: ShimArgs) -> list[str]:
    """``--enable-auto-tool-choice --tool-call-parser NAME`` for a family that calls tools, unless the
    engine args set the parser themselves."""
    if not args.tool_call_parser or args.model_type != "llm" or "tool-call-parser" in \
            {k.replace("_", "-") for k in args.engine_args}:
        return []
    return ["--enable-auto-tool-choice", "--tool-call-parser", args.tool_call_parser]


#: vLLM refuses /v1/load_lora_adapter unless its environment holds this
RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"


def lora_flags(args: ShimArgs) -> list[str]:
    """vLLM's LoRA flags; the ``--lora-modules`` are loaded through the runtime API, as later ones are."""
    if not args.enable_lora:
        return []
    return ["--enable-lora", "--max-loras", str(args.max_loras), "--max-lora-rank", str(args.max_lora_rank)]


class VllmBackend(ProxyBackend):
    """vLLM on any accelerator it supports; it detects the platform itself."""

    engine: ClassVar[str] = "vllm"
    python_env: ClassVar[str] = "TURNOUT_VLLM_PYTHON"
    health_path: ClassVar[str] = "/health"
    serves_responses: ClassVar[bool] = True
    reserved_flags: ClassVar[tuple[str, ...]] = (
        "host", "port", "model", "served-model-name", "tensor-parallel-size", "runner",
        "pipeline-parallel-size", "nnodes", "node-rank", "master-addr", "master-port", "headless",
        "enable-lora", "max-loras", "max-lora-rank", "lora-modules")
    lora_endpoints: ClassVar[tuple[str, str] | None] = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")

    def child_env(self) -> dict[str, str]:
        """With LoRA, vLLM's runtime adapter API is switched on (it is off unless this variable is set)."""
        env = super().child_env()
        if self.args.enable_lora:
            env[RUNTIME_LORA_ENV] = "True"
        return env

    def command(self, port: int) -> list[str]:
        a = self.args
        if a.nnodes > 1:
            return self._multi_node(port)
        cmd = [
            engine_python(self.python_env), "-m", "vllm.entrypoints.openai.api_server",
            "--model", local_model_ref(a.model),
            "--served-model-name", a.served_model_name,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--tensor-parallel-size", str(a.tensor_parallel_size),
        ]
        if a.pipeline_parallel_size > 1:
            cmd += ["--pipeline-parallel-size", str(a.pipeline_parallel_size)]
        if a.model_type in ("embedding", "rerank"):
            cmd += ["--runner", "pooling"]
        return cmd + tool_flags(a) + lora_flags(a) + engine_flags(a.engine_args, reserved=self.reserved_flags,
                                                                  negate_false=True)

    def _multi_node(self, port: int) -> list[str]:
        a = self.args
        cmd = [
            engine_python(self.python_env), "-m", "vllm.entrypoints.cli.main", "serve", local_model_ref(a.model),
            "--served-model-name", a.served_model_name,
            "--tensor-parallel-size", str(a.tensor_parallel_size),
            "--pipeline-parallel-size", str(a.pipeline_parallel_size),
            "--nnodes", str(a.nnodes),
            "--node-rank", str(a.node_rank),
            "--master-addr", str(a.leader_address),
            "--master-port", str(a.dist_port),
        ]
        if a.is_worker:
            cmd.append("--headless")
        else:
            cmd += ["--host", "127.0.0.1", "--port", str(port), *tool_flags(a)]
        if a.model_type in ("embedding", "rerank"):
            cmd += ["--runner", "pooling"]
        return cmd + lora_flags(a) + engine_flags(a.engine_args, reserved=self.reserved_flags, negate_false=True)
