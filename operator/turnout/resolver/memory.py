"""Memory-fit arithmetic: bytes per parameter by format and quantization."""

from __future__ import annotations

import re

MIB = 2**20

_GGUF_BITS = {  # llama.cpp's effective bits per weight, rounded up a little
    "IQ1": 1.8,
    "IQ2": 2.5,
    "IQ3": 3.5,
    "IQ4": 4.5,
    "Q2": 3.0,
    "Q3": 3.9,
    "Q4": 4.8,
    "Q5": 5.7,
    "Q6": 6.6,
    "Q8": 8.5,
}


def bytes_per_param(fmt: str, quantization: str | None) -> float:
    """Approximate bytes one parameter takes in memory for a format and quantization."""
    q = (quantization or "none").upper()
    if fmt == "gguf":
        if "BF16" in q or "F16" in q:
            return 2.0
        if "F32" in q:
            return 4.0
        match = re.search(r"(IQ|Q)([1-8])", q)
        if match:
            return _GGUF_BITS.get(f"{match.group(1)}{match.group(2)}", 8.5) / 8
        return 2.0
    if fmt == "fp8":
        return 1.0
    if fmt == "fp4":
        return 0.5
    bits = re.search(r"(\d+)\s*-?\s*BIT|INT(\d+)|MXFP(\d+)|NVFP(\d+)", q)
    if bits:
        n = next(int(g) for g in bits.groups() if g)
        return max(n, 2) / 8 + 0.02  # scales and zero points
    if fmt in ("awq", "gptq", "bnb"):
        return 0.5 + 0.02  # 4-bit unless told otherwise
    if q in ("FP8", "INT8", "8BIT"):
        return 1.0
    if q in ("F32", "FP32"):
        return 4.0
    return 2.0  # bf16 / fp16


def needed_mib(size_b: float, fmt: str, quantization: str | None, headroom: float, overhead_mib: int) -> int:
    """Memory to load and serve the weights: weights × headroom + fixed overhead, in MiB."""
    weights = size_b * 1e9 * bytes_per_param(fmt, quantization)
    return int(weights * headroom / MIB) + overhead_mib


def gib(mib: float) -> str:
    return f"{mib / 1024:.1f} GiB"
