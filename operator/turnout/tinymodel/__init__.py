"""The tiny test model: built at test time, cached, never committed.

``build_tiny_model()`` returns a :class:`TinyModel` with an HF folder
(safetensors, byte-level BPE tokenizer, ChatML chat template) and the same
weights as GGUF, so every engine on a CPU can serve it.
"""

from turnout.tinymodel.builder import (
    SERVED_NAME,
    TinyModel,
    build_tiny_model,
    default_cache_dir,
    model_version,
)

__all__ = ["SERVED_NAME", "TinyModel", "build_tiny_model", "default_cache_dir", "model_version"]
