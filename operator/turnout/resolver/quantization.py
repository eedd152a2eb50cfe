"""One spelling per quantization, so engine rules never refuse a spec for how Xinference wrote it.

Xinference's catalog spells the same thing many ways: ``Int4``, ``int4``, ``4bit``, ``4-bit``,
``4bits``, ``Int4-W4A16``; ``8bits``, ``Int8-W8A16``, ``Int8-W8A8``; AWQ repositories named only
``AWQ`` or ``AWQ-Lite`` (AWQ is 4-bit); mixed checkpoints such as ``Int4-Int8Mix``. The spelling
stays as it is for downloads (repository names are built from it); engine rules and the memory
arithmetic read :func:`canonical` instead.

Canonical values: ``none`` (bf16/fp16 weights), ``Int2`` … ``Int8`` (integer weights; 5 and 6
occur in MLX), ``FP8``, ``FP4``, ``MXFP4``, ``MXFP8``, ``NVFP4``, and for GGUF llama.cpp's own type names
(``Q4_K_M``, ``IQ2_XXS``, ``TQ1_0``, ``BF16``, …) upper-cased, without the ``UD-`` (Unsloth
dynamic) or ``i1-`` (imatrix) prefixes, which change how a file was made, not what it is.
"""

from __future__ import annotations

import functools
import re

FLOAT_NONE = frozenset({"none", "", "bf16", "fp16", "f16", "float16", "bfloat16", "fp32", "f32", "float32"})
INTEGER = ("Int2", "Int3", "Int4", "Int5", "Int6", "Int8")
FLOATS = ("FP8", "FP4", "MXFP4", "MXFP8", "NVFP4")
KNOWN = frozenset({"none", *INTEGER, *FLOATS})

_GGUF = re.compile(r"^(?:I?Q[1-8](?:_[0-9A-Z]+)*|TQ[12]_0|MXFP4(?:_MOE)?|BF16|F16|F32)$")
_BITS = re.compile(r"^(?:int|w)?(\d+)(?:bits?|-bits?|a\d+)?$")


def _mixed(text: str) -> bool:
    return "mix" in text


@functools.lru_cache(maxsize=4096)
def canonical(fmt: str, quantization: str | None) -> str | None:
    """The canonical name of ``quantization`` for weights of format ``fmt``; None when none was given.

    A spelling this module does not know comes back unchanged (so a rule can say what it was given);
    :func:`is_known` tells the two apart.
    """
    if quantization is None:
        return None
    raw = str(quantization).strip()
    low = raw.lower()
    if fmt == "gguf":
        up = raw.upper()
        for prefix in ("UD-", "I1-"):
            up = up.removeprefix(prefix)
        up = {"FP16": "F16", "FP32": "F32", "Q4": "Q4_0", "Q6": "Q6_K"}.get(up, up)
        return up
    if fmt == "fp8":
        return "FP8"  # the format says it, whatever the quantization field holds ("none", "FP8", "fp8")
    if fmt == "fp4":
        return "NVFP4" if "nv" in low else "MXFP4" if "mx" in low else "FP4"
    if low in FLOAT_NONE:
        return "none"
    squashed = re.sub(r"[\s_]+", "", low)
    if squashed.startswith("awq"):
        return "Int4"  # AWQ, AWQ-Lite, AWQ-FP16Mix: AWQ checkpoints are 4-bit
    for name in ("mxfp8", "mxfp4", "nvfp4"):
        if name in squashed:
            return name.upper()
    if "fp8" in squashed:
        return "FP8"
    if "fp4" in squashed:
        return "FP4"
    first = squashed.split("-", 1)[0] if not squashed[:1].isdigit() else squashed
    match = _BITS.match(first) or _BITS.match(squashed)
    if match:
        bits = int(match.group(1))
        name = f"Int{bits}"
        if name in INTEGER:
            return name
    return raw


def is_known(fmt: str, quantization: str | None) -> bool:
    """Whether :func:`canonical` maps this spelling to a value the engine rules know."""
    value = canonical(fmt, quantization)
    if value is None:
        return True
    if fmt == "gguf":
        return bool(_GGUF.match(value))
    return value in KNOWN


def is_mixed(quantization: str | None) -> bool:
    """Mixed-precision checkpoints (``Int4-Int8Mix``, ``AWQ-FP16Mix``) hold some layers wider than the name says."""
    return quantization is not None and _mixed(quantization.lower())
