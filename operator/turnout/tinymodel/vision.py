"""Tiny vision models, built in a second: an image-text-to-text model for transformers, a projector for llama.cpp.

``build_tiny_vision_model()``: a LLaVA (a CLIP vision tower, a projector, a small Llama).

It takes the tiny Llama's tokenizer plus an ``<image>`` token, a chat template that renders image
parts as ``<image>``, a PIL-only CLIP image processor (32x32 pixels, 8x8 patches: one image is 16
prompt tokens) and random weights from a fixed seed. Its answers mean nothing; it lets tests check
that an image reaches a vision model (the prompt grows by the image's tokens) offline. Cached::

    <cache>/tiny-vision/<version>/
        hf/               config.json, model.safetensors, tokenizer files, processor_config.json,
                          chat_template.jinja
        tinyvision.json   (what was built; written last)

``build_tiny_mmproj()``: a multimodal projector GGUF for llama.cpp (``clip`` architecture, the
LLaVA-1.5 ``mlp`` projector, the same 32x32 image in 8x8 patches) that projects into the tiny
Llama's embedding, so ``--engine llama.cpp`` with the tiny Llama's GGUF and the engine arg
``mmproj.path`` reads images (16 prompt tokens each). Written with ``gguf``'s writer, random
weights from a fixed seed; cached under ``<cache>/tiny-mmproj/<version>/mmproj-tiny.gguf``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from turnout.tinymodel.builder import Progress, build_tiny_model, default_cache_dir, one_thread, publish

RECIPE_VERSION = "1"
MANIFEST = "tinyvision.json"
IMAGE_TOKEN = "<image>"

RECIPE: dict[str, Any] = {
    "seed": 2468,
    "image_size": 32,
    "patch_size": 8,
    "vision_hidden_size": 32,
    "vision_layers": 1,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 1024,
}

#: ChatML with image parts (``image`` or ``image_url``) as the image token
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}{{ '" + IMAGE_TOKEN + "' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def vision_version() -> str:
    """Changes whenever the recipe, the text model or this file does."""
    from turnout.tinymodel.builder import model_version

    h = hashlib.sha256()
    h.update(json.dumps(RECIPE, sort_keys=True).encode())
    h.update(model_version().encode())
    h.update(Path(__file__).read_bytes())
    return f"v{RECIPE_VERSION}-{h.hexdigest()[:10]}"


def build_tiny_vision_model(cache_dir: Path | None = None, progress: Progress | None = None) -> Path:
    """The vision model's folder (``.../hf``), built into the cache first if it is not there."""
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = base / "tiny-vision" / vision_version()
    text = build_tiny_model(cache_dir, progress)
    publish(final, MANIFEST, lambda root: _build_into(root, text.hf_dir, progress))
    return final / "hf"


MMPROJ_MANIFEST = "tinymmproj.json"
MMPROJ_NAME = "mmproj-tiny.gguf"


def build_tiny_mmproj(cache_dir: Path | None = None, progress: Progress | None = None) -> Path:
    """The projector GGUF for the tiny Llama's GGUF (``TinyModel.gguf_path``), built into the cache first."""
    from turnout.tinymodel.builder import RECIPE as TEXT

    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = base / "tiny-mmproj" / vision_version()
    publish(final, MMPROJ_MANIFEST, lambda root: _write_mmproj(root / MMPROJ_NAME, int(TEXT["hidden_size"])))
    return final / MMPROJ_NAME


def _write_mmproj(path: Path, text_hidden: int) -> dict[str, Any]:
    """A CLIP vision encoder and an MLP projector as llama.cpp's ``clip`` GGUF reads them."""
    import gguf
    import numpy as np

    r = RECIPE
    rng = np.random.default_rng(r["seed"])
    hidden, patch, size = r["vision_hidden_size"], r["patch_size"], r["image_size"]
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_bool(gguf.Keys.Clip.HAS_VISION_ENCODER, True)
    w.add_string(gguf.Keys.Clip.PROJECTOR_TYPE, "mlp")
    v = gguf.Keys.ClipVision
    for key, value in ((v.IMAGE_SIZE, size), (v.PATCH_SIZE, patch), (v.EMBEDDING_LENGTH, hidden),
                       (v.FEED_FORWARD_LENGTH, 2 * hidden), (v.PROJECTION_DIM, text_hidden),
                       (v.BLOCK_COUNT, r["vision_layers"]), (v.Attention.HEAD_COUNT, 2)):
        w.add_uint32(key, value)
    w.add_float32(v.Attention.LAYERNORM_EPS, 1e-5)
    w.add_array(v.IMAGE_MEAN, [0.5, 0.5, 0.5])
    w.add_array(v.IMAGE_STD, [0.5, 0.5, 0.5])
    w.add_bool(v.USE_GELU, True)

    def tensor(name: str, *shape: int, ones: bool = False) -> None:
        data = np.ones(shape) if ones else rng.standard_normal(shape) * 0.05
        w.add_tensor(name, data.astype(np.float32))

    tensor("v.patch_embd.weight", hidden, 3, patch, patch)
    tensor("v.class_embd", hidden)
    tensor("v.position_embd.weight", (size // patch) ** 2 + 1, hidden)
    tensor("v.pre_ln.weight", hidden, ones=True)
    tensor("v.pre_ln.bias", hidden)
    for b in range(r["vision_layers"]):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensor(f"v.blk.{b}.{name}.weight", hidden, hidden)
            tensor(f"v.blk.{b}.{name}.bias", hidden)
        for name in ("ln1", "ln2"):
            tensor(f"v.blk.{b}.{name}.weight", hidden, ones=True)
            tensor(f"v.blk.{b}.{name}.bias", hidden)
        tensor(f"v.blk.{b}.ffn_up.weight", 2 * hidden, hidden)
        tensor(f"v.blk.{b}.ffn_up.bias", 2 * hidden)
        tensor(f"v.blk.{b}.ffn_down.weight", hidden, 2 * hidden)
        tensor(f"v.blk.{b}.ffn_down.bias", hidden)
    tensor("mm.0.weight", text_hidden, hidden)
    tensor("mm.0.bias", text_hidden)
    tensor("mm.2.weight", text_hidden, text_hidden)
    tensor("mm.2.bias", text_hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"version": vision_version(), "projection_dim": text_hidden, "recipe": RECIPE}


def _build_into(root: Path, text_dir: Path, progress: Progress | None) -> dict[str, Any]:
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    r = RECIPE
    hf_dir = root / "hf"
    if progress:
        progress("vision model")
    tok = AutoTokenizer.from_pretrained(text_dir)
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    vision = CLIPVisionConfig(hidden_size=r["vision_hidden_size"], intermediate_size=2 * r["vision_hidden_size"],
                              num_hidden_layers=r["vision_layers"], num_attention_heads=2,
                              image_size=r["image_size"], patch_size=r["patch_size"],
                              projection_dim=r["vision_hidden_size"])
    text = LlamaConfig(vocab_size=len(tok), hidden_size=r["hidden_size"], intermediate_size=r["intermediate_size"],
                       num_hidden_layers=r["num_hidden_layers"], num_attention_heads=r["num_attention_heads"],
                       num_key_value_heads=r["num_key_value_heads"],
                       max_position_embeddings=r["max_position_embeddings"],
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    with one_thread():
        torch.manual_seed(r["seed"])
        model = LlavaForConditionalGeneration(config).float().eval()
        model.save_pretrained(hf_dir)
    size = r["image_size"]
    images = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=r["patch_size"],
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=CHAT_TEMPLATE).save_pretrained(hf_dir)
    return {"version": vision_version(), "image_token_id": image_id, "recipe": RECIPE}
