"""MLX: mlx weights on Apple silicon (through the host agent)."""

from __future__ import annotations

from turnout.resolver.engines.base import Context, Engine, On
from turnout.resolver.plan import ResolvedModel


def check_model(model: ResolvedModel, accelerator: str, ctx: Context) -> str | None:
    if model.format != "mlx":
        return f"mlx serves mlx weights, not {model.format}"
    if model.model_type != "llm":
        return f"mlx-lm serves LLMs, not {model.model_type} models"
    return None


ENGINE = Engine(
    name="mlx",
    on={"metal": On(rank=1, device="mps", image="mlx-metal")},
    check_model=check_model,
    backends={"llm": "turnout.shim.backends.mlx:MlxBackend"},
)
