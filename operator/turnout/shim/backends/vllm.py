"""vLLM through its own OpenAI server (``vllm.entrypoints.openai.api_server``).

A replica over several nodes runs ``vllm serve`` on every pod with vLLM's multiprocessing backend, no
Ray (vLLM docs, serving/parallelism_scaling.md): tensor parallel within a node, one pipeline stage per
node, ``--nnodes/--node-rank/--master-addr/--master-port``; rank 0 serves the API, the other ranks run
``--headless``.
"""

from __future__ import annotations

from typing import ClassVar

from turnout.shim.backends.proxy import ProxyBackend, engine_flags, engine_python, local_model_ref


class VllmBackend(ProxyBackend):
    """vLLM on any accelerator it supports; it detects the platform itself."""

    engine: ClassVar[str] = "vllm"
    python_env: ClassVar[str] = "TURNOUT_VLLM_PYTHON"
    health_path: ClassVar[str] = "/health"
    serves_responses: ClassVar[bool] = True
    reserved_flags: ClassVar[tuple[str, ...]] = (
        "host", "port", "model", "served-model-name", "tensor-parallel-size", "runner",
        "pipeline-parallel-size", "nnodes", "node-rank", "master-addr", "master-port", "headless")

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
        return cmd + engine_flags(a.engine_args, reserved=self.reserved_flags, negate_false=True)

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
            cmd += ["--host", "127.0.0.1", "--port", str(port)]
        if a.model_type in ("embedding", "rerank"):
            cmd += ["--runner", "pooling"]
        return cmd + engine_flags(a.engine_args, reserved=self.reserved_flags, negate_false=True)
