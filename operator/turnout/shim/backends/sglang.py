"""SGLang through its own OpenAI server (``sglang.launch_server``).

A replica over several nodes runs ``launch_server`` on every pod with one tensor-parallel group over
all of their GPUs (SGLang docs, multi-node deployment): ``--nnodes/--node-rank/--dist-init-addr``;
rank 0 serves the API, the other ranks only run the model.
"""

from __future__ import annotations

from typing import Any, ClassVar

from turnout.shim.backends.proxy import ProxyBackend, engine_flags, engine_python, local_model_ref
from turnout.toolparsers import SGLANG

#: the devices ``--device`` accepts in SGLang (it has no Apple backend)
SGLANG_DEVICES = {"cpu": "cpu", "cuda": "cuda", "npu": "npu"}


class SglangBackend(ProxyBackend):
    """SGLang; embedding and cross-encoder rerank models run with ``--is-embedding``."""

    engine: ClassVar[str] = "sglang"
    python_env: ClassVar[str] = "TURNOUT_SGLANG_PYTHON"
    health_path: ClassVar[str] = "/health"
    serves_responses: ClassVar[bool] = True
    reserved_flags: ClassVar[tuple[str, ...]] = (
        "host", "port", "model-path", "served-model-name", "tp-size", "tp", "device", "is-embedding",
        "nnodes", "node-rank", "dist-init-addr", "enable-lora", "max-loras-per-batch", "max-lora-rank",
        "lora-target-modules", "lora-paths")
    lora_endpoints: ClassVar[tuple[str, str] | None] = ("/load_lora_adapter", "/unload_lora_adapter")

    def command(self, port: int) -> list[str]:
        a = self.args
        cmd = [
            engine_python(self.python_env), "-m", "sglang.launch_server",
            "--model-path", local_model_ref(a.model),
            "--served-model-name", a.served_model_name,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--tp-size", str(a.tensor_parallel_size),
        ]
        if a.device not in SGLANG_DEVICES:
            raise ValueError(f"SGLang does not run on device {a.device!r}; use one of {sorted(SGLANG_DEVICES)}")
        cmd += ["--device", SGLANG_DEVICES[a.device]]
        if a.nnodes > 1:
            cmd += ["--nnodes", str(a.nnodes), "--node-rank", str(a.node_rank),
                    "--dist-init-addr", f"{a.leader_address}:{a.dist_port}"]
        if a.model_type in ("embedding", "rerank"):
            cmd.append("--is-embedding")
        parser = SGLANG.get(a.tool_call_parser or "")
        if parser and a.model_type == "llm" and "tool-call-parser" not in {k.replace("_", "-") for k in a.engine_args}:
            cmd += ["--tool-call-parser", parser]
        if a.enable_lora:
            # adapters come later through /load_lora_adapter: SGLang must reserve room for any target module
            cmd += ["--enable-lora", "--max-loras-per-batch", str(a.max_loras), "--max-lora-rank",
                    str(a.max_lora_rank), "--lora-target-modules", "all"]
        # SGLang's boolean options are store_true flags: false means "leave it out".
        return cmd + engine_flags(a.engine_args, reserved=self.reserved_flags, negate_false=False)

    def to_engine(self, body: dict[str, Any]) -> dict[str, Any]:
        """An adapter's request names it in SGLang's ``lora_path`` field, the base model as ``model``."""
        model = body.get("model")
        if model is not None and model != self.args.served_model_name:
            body = {**body, "model": self.args.served_model_name, "lora_path": model}
        return body

    def from_engine_json(self, path: str, data: Any) -> Any:
        """SGLang's ``/v1/rerank`` answers a list of ``{score, document, index}``: wrap it."""
        if path == "/v1/rerank" and isinstance(data, list):
            results = [{"index": r["index"], "relevance_score": r.get("score", r.get("relevance_score"))}
                       for r in data if isinstance(r, dict)]
            prompt = sum(int((r.get("meta_info") or {}).get("prompt_tokens", 0))
                         for r in data if isinstance(r, dict))
            return {"results": results, "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}
        return data
