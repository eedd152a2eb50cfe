"""From a spec's `model` to the concrete model options the resolver may choose among."""

from __future__ import annotations

import functools
import re

from turnout.api.types import ModelSource
from turnout.catalog import Catalog, CatalogFamily, normalize_format
from turnout.resolver.plan import ResolvedModel

# Preference when the user leaves the format or quantization open, per accelerator.
FORMAT_PREFERENCE: dict[str, tuple[str, ...]] = {
    "nvidia": ("pytorch", "awq", "gptq", "fp8", "bnb", "fp4", "gguf", "mlx"),
    "ascend": ("pytorch", "awq", "gptq", "fp8", "bnb", "fp4", "gguf", "mlx"),
    "metal": ("mlx", "gguf", "pytorch", "awq", "gptq", "fp8", "bnb", "fp4"),
    "cpu": ("gguf", "pytorch", "awq", "gptq", "fp8", "bnb", "fp4", "mlx"),
}
QUANT_PREFERENCE: dict[str, tuple[str, ...]] = {
    "gguf": ("q4_k_m", "q5_k_m", "q4_k_s", "q8_0", "q6_k", "q5_k_s", "q4_0", "iq4_xs"),
    "mlx": ("4bit", "8bit", "6bit", "5bit", "bf16"),
    "awq": ("int4", "4bit", "int8", "8bit"),
    "gptq": ("int4", "4bit", "int8", "8bit", "int3"),
}
_GGUF_QUANT = re.compile(r"((?:UD-)?I?Q[1-8](?:_[A-Z0-9]+)*|BF16|F16|F32)", re.IGNORECASE)


class ModelError(ValueError):
    """The spec's model cannot be resolved at all (unknown name, no matching spec)."""


def infer_format(uri: str) -> str:
    """Guess the weight format from a source URI."""
    low = uri.lower()
    if low.endswith(".gguf") or "gguf" in low.rsplit("/", 1)[-1]:
        return "gguf"
    if "mlx-community/" in low or low.endswith("-mlx") or "-mlx-" in low:
        return "mlx"
    for fmt in ("awq", "gptq", "fp8", "bnb"):
        if fmt in low:
            return fmt
    return "pytorch"


def _uri_quantization(fmt: str, uri: str) -> str | None:
    if fmt == "gguf":
        match = _GGUF_QUANT.search(uri.rsplit("/", 1)[-1])
        return match.group(1) if match else None
    if fmt == "pytorch":
        return "none"
    return None


@functools.lru_cache(maxsize=4096)
def options_for(source: ModelSource, catalog: Catalog) -> tuple[tuple[ResolvedModel, ...], CatalogFamily | None]:
    """Every concrete model the spec allows, in catalog order; raises ModelError when none.

    Memoized: sources and catalogs are immutable, and the operator resolves the same
    spec again whenever nodes change.
    """
    options, family = _options_for(source, catalog)
    return tuple(options), family


def _options_for(source: ModelSource, catalog: Catalog) -> tuple[list[ResolvedModel], CatalogFamily | None]:
    fmt = normalize_format(source.format) if source.format else None
    family = catalog.get(source.name) if source.name else None
    if source.name and family is None:
        close = catalog.suggest(source.name)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"unknown model {source.name!r}: not in the catalog{hint} (or give model.uri)")
    if source.uri:
        fmt = fmt or infer_format(source.uri)
        arch = source.architecture or (family.architectures[0] if family and family.architectures else None)
        return [
            ResolvedModel(
                uri=source.uri,
                format=fmt,
                quantization=source.quantization or _uri_quantization(fmt, source.uri),
                architecture=arch,
                size_b=source.size,
                model_type=family.model_type if family else (source.type or "llm"),
                family=family.name if family else None,
                abilities=family.abilities if family else (),
                attention_heads=source.attention_heads
                or (catalog.attention_heads(family.name, source.size) if family else None),
            )
        ], family
    assert family is not None  # the API requires name or uri
    pairs = catalog.candidates(family.name, size_b=source.size, format=fmt, quantization=source.quantization)
    options: list[ResolvedModel] = []
    skipped_modelscope = False
    for spec, quant in pairs:
        if spec.hub != "huggingface":
            skipped_modelscope = True  # pods fetch from Hugging Face (or uri); ModelScope is not reachable
            continue
        try:
            uri = spec.uri(quant)
        except ValueError:
            continue
        options.append(
            ResolvedModel(
                uri=uri,
                format=spec.format,
                quantization=quant,
                architecture=source.architecture or (family.architectures[0] if family.architectures else None),
                size_b=spec.size_b,
                model_type=family.model_type,
                family=family.name,
                abilities=family.abilities,
                attention_heads=source.attention_heads or catalog.attention_heads(family.name, spec.size_b),
            )
        )
    if not options and skipped_modelscope:
        raise ModelError(
            f"{family.name} with {_asked(source, fmt)} is published only on ModelScope, which turnout "
            "does not fetch from; mirror it and give model.uri"
        )
    if not options:
        raise ModelError(f"{family.name} has no spec with {_asked(source, fmt)}; it offers {_offers(family)}")
    return options, family


def _asked(source: ModelSource, fmt: str | None) -> str:
    parts = []
    if source.size is not None:
        parts.append(f"size {source.size:g}B")
    if fmt:
        parts.append(f"format {fmt}")
    if source.quantization:
        parts.append(f"quantization {source.quantization}")
    return ", ".join(parts) or "no constraints"


def _offers(family: CatalogFamily, limit: int = 8) -> str:
    seen: list[str] = []
    for spec in family.specs:
        size = f"{spec.size_b:g}B " if spec.size_b is not None else ""
        text = f"{size}{spec.format} ({'/'.join(spec.quantizations[:4])}{'/…' if len(spec.quantizations) > 4 else ''})"
        if text not in seen:
            seen.append(text)
    more = f" and {len(seen) - limit} more" if len(seen) > limit else ""
    return ", ".join(seen[:limit]) + more


def preference_key(option: ResolvedModel, accelerator: str, size_given: bool) -> tuple[int, float, int, str]:
    """Sort key: preferred format, then size (largest on accelerators, smallest on cpu), then quantization."""
    formats = FORMAT_PREFERENCE[accelerator]
    fmt_rank = formats.index(option.format) if option.format in formats else len(formats)
    size = option.size_b or 0.0
    size_rank = 0.0 if size_given else (size if accelerator == "cpu" else -size)
    quants = QUANT_PREFERENCE.get(option.format, ())
    q = (option.quantization or "").lower()
    q_rank = quants.index(q) if q in quants else len(quants)
    return fmt_rank, size_rank, q_rank, option.uri
