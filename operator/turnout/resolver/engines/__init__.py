"""The engine registry: one module per engine (everything about it), one line per module here.

Adding an engine is a new module in this package that defines ``ENGINE`` (see :class:`Engine`) and its
line in :data:`REGISTRY`; the resolver's tables below, the image matrix (``turnout.images``) and the
shim's backend table (``turnout.shim.backends``) are derived from it.
"""

from __future__ import annotations

from collections.abc import Iterable

from turnout.resolver.engines import llamacpp, mlx, sglang, transformers, vllm
from turnout.resolver.engines.base import Context, Engine, On

#: Every engine, in the order rejections list them.
REGISTRY: tuple[Engine, ...] = (
    vllm.ENGINE,
    sglang.ENGINE,
    llamacpp.ENGINE,
    transformers.ENGINE,
    mlx.ENGINE,
)


def preference_table(engines: Iterable[Engine]) -> dict[str, tuple[str, ...]]:
    """Which engines ``auto`` tries on each accelerator, best first (by each engine's rank there)."""
    ranked: dict[str, list[tuple[int, str]]] = {}
    for engine in engines:
        for accelerator, on in engine.on.items():
            ranked.setdefault(accelerator, []).append((on.rank, engine.name))
    return {a: tuple(name for _, name in sorted(rows)) for a, rows in ranked.items()}


ENGINES: dict[str, Engine] = {e.name: e for e in REGISTRY}
#: Which engines `auto` tries on each accelerator, best first.
PREFERENCE: dict[str, tuple[str, ...]] = preference_table(REGISTRY)

__all__ = ["ENGINES", "PREFERENCE", "REGISTRY", "Context", "Engine", "On", "preference_table"]
