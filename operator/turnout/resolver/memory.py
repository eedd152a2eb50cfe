"""Memory-fit arithmetic: bytes per parameter by format and quantization."""

from __future__ import annotations

import functools
import re

from turnout.resolver.quantization import canonical, is_mixed

MIB = 2**20

_GGUF_BITS = {  # llama.cpp's effective bits per weight, rounded up a little
    "TQ1": 1.7,
    "TQ2": 2.1,
    "IQ1": 1.8,
    "IQ2": 2.5,
    "IQ3": 3.5,
    "IQ4": 4.5,
    "Q1": 1.8,
    "Q2": 3.0,
    "Q3": 3.9,
    "Q4": 4.8,
    "Q5": 5.7,
    "Q6": 6.6,
    "Q8": 8.5,
}


@functools.lru_cache(maxsize=4096)
def bytes_per_param(fmt: str, quantization: str | None) -> float:
    """Approximate bytes one parameter takes in memory for a format and quantization (any spelling)."""
    q = canonical(fmt, quantization) or "none"
    if fmt == "gguf":
        if q in ("BF16", "F16"):
            return 2.0
        if q == "F32":
            return 4.0
        if q.startswith("MXFP4"):
            return 4.25 / 8
        match = re.match(r"(TQ|IQ|Q)([1-8])", q)
        if match:
            return _GGUF_BITS.get(f"{match.group(1)}{match.group(2)}", 8.5) / 8
        return 2.0
    if q == "FP8" or q == "MXFP8":
        return 1.0
    if q in ("FP4", "MXFP4", "NVFP4"):
        return 0.5 + 0.03  # block scales
    match = re.fullmatch(r"Int(\d)", q)
    if match:
        bits = int(match.group(1)) + (1 if is_mixed(quantization) else 0)
        return max(bits, 2) / 8 + 0.02  # scales and zero points
    if fmt in ("awq", "gptq", "bnb"):
        return 0.5 + 0.02  # 4-bit unless told otherwise
    if str(quantization or "").lower() in ("f32", "fp32", "float32"):
        return 4.0
    return 2.0  # bf16 / fp16


def needed_mib(size_b: float, fmt: str, quantization: str | None, headroom: float, overhead_mib: int) -> int:
    """Memory to load and serve the weights: weights × headroom + fixed overhead, in MiB."""
    weights = size_b * 1e9 * bytes_per_param(fmt, quantization)
    return int(weights * headroom / MIB) + overhead_mib


def gib(mib: float) -> str:
    """MiB as GiB for messages: one decimal below 100 GiB, whole GiB above."""
    value = mib / 1024
    return f"{value:.0f} GiB" if value >= 100 else f"{value:.1f} GiB"
