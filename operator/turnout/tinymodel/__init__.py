"""The tiny offline models: built at first use in seconds, cached, never committed.

``build_tiny_model()`` returns a :class:`TinyModel` with an HF folder
(safetensors, byte-level BPE tokenizer, ChatML chat template) and the same
weights as GGUF, so every engine on a CPU can serve it.
``build_tiny_reranker()`` returns the folder of a tiny cross-encoder for rerank;
``build_tiny_vision_model()`` the folder of a tiny image-text-to-text model (LLaVA, random weights),
``build_tiny_mmproj()`` a projector GGUF that lets llama.cpp read images with the tiny Llama's GGUF.
Both need torch, transformers, tokenizers and safetensors; the GGUF also needs gguf and numpy.
"""

from turnout.tinymodel.builder import (
    SERVED_NAME,
    TinyModel,
    build_tiny_model,
    default_cache_dir,
    is_built,
    model_version,
)
from turnout.tinymodel.reranker import build_tiny_reranker, is_reranker_built, reranker_version
from turnout.tinymodel.vision import build_tiny_mmproj, build_tiny_vision_model, vision_version

__all__ = [
    "SERVED_NAME",
    "TinyModel",
    "build_tiny_mmproj",
    "build_tiny_model",
    "build_tiny_reranker",
    "build_tiny_vision_model",
    "default_cache_dir",
    "is_built",
    "is_reranker_built",
    "model_version",
    "reranker_version",
    "vision_version",
]
