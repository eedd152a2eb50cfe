"""The image matrix: which container image serves each engine on each accelerator.

One place for it: the operator's default config takes its images from here,
and a test proves every entry has a Dockerfile under ``images/`` and every
Dockerfile there has an entry. Metal has no image: Linux containers cannot
reach Metal, so Apple silicon hosts run the shim natively through the host
agent, which maps these image names to local environments.
"""

from __future__ import annotations

from dataclasses import dataclass

REGISTRY = "ghcr.io/modelplane"
VERSION = "0.1.0"


@dataclass(frozen=True)
class ImageSpec:
    """One engine image: its repository name and the folder with its Dockerfile."""

    name: str
    dockerfile_dir: str

    def ref(self, registry: str = REGISTRY, tag: str = VERSION) -> str:
        return f"{registry}/{self.name}:{tag}"


#: (engine, accelerator) -> image. Accelerators: nvidia, ascend, metal, cpu.
IMAGE_MATRIX: dict[tuple[str, str], ImageSpec] = {
    ("vllm", "nvidia"): ImageSpec("vllm-cuda", "images/vllm-cuda"),
    ("vllm", "ascend"): ImageSpec("vllm-ascend", "images/vllm-ascend"),
    ("sglang", "nvidia"): ImageSpec("sglang-cuda", "images/sglang-cuda"),
    ("llama.cpp", "nvidia"): ImageSpec("llamacpp-cuda", "images/llamacpp-cuda"),
    ("llama.cpp", "cpu"): ImageSpec("llamacpp-cpu", "images/llamacpp-cpu"),
    ("llama.cpp", "metal"): ImageSpec("llamacpp-metal", "host-agent"),
    ("transformers", "nvidia"): ImageSpec("transformers-cuda", "images/transformers-cuda"),
    ("transformers", "ascend"): ImageSpec("transformers-npu", "images/transformers-npu"),
    ("transformers", "cpu"): ImageSpec("transformers-cpu", "images/transformers-cpu"),
    ("transformers", "metal"): ImageSpec("transformers-metal", "host-agent"),
    ("mlx", "metal"): ImageSpec("mlx-metal", "host-agent"),
}

OPERATOR_IMAGE = ImageSpec("operator", ".")


def default_images(registry: str = REGISTRY, tag: str = VERSION) -> dict[str, dict[str, str]]:
    """``{engine: {accelerator: image ref}}`` for the operator's default config."""
    out: dict[str, dict[str, str]] = {}
    for (engine, accel), spec in sorted(IMAGE_MATRIX.items()):
        out.setdefault(engine, {})[accel] = spec.ref(registry, tag)
    return out
