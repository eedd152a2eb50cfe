"""vLLM through its own OpenAI server (``vllm.entrypoints.openai.api_server``)."""

from __future__ import annotations

from typing import ClassVar

from turnout.shim.backends.proxy import ProxyBackend, engine_flags, engine_python, local_model_ref


class VllmBackend(ProxyBackend):
    """vLLM on any accelerator it supports; it detects the platform itself."""

    engine: ClassVar[str] = "vllm"
    python_env: ClassVar[str] = "TURNOUT_VLLM_PYTHON"
    health_path: ClassVar[str] = "/health"
    reserved_flags: ClassVar[tuple[str, ...]] = (
        "host", "port", "model", "served-model-name", "tensor-parallel-size", "runner")

    def command(self, port: int) -> list[str]:
        a = self.args
        cmd = [
            engine_python(self.python_env), "-m", "vllm.entrypoints.openai.api_server",
            "--model", local_model_ref(a.model),
            "--served-model-name", a.served_model_name,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--tensor-parallel-size", str(a.tensor_parallel_size),
        ]
        if a.model_type in ("embedding", "rerank"):
            cmd += ["--runner", "pooling"]
        return cmd + engine_flags(a.engine_args, reserved=self.reserved_flags, negate_false=True)
