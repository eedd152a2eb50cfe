"""A tiny image-text-to-text model (LLaVA: a CLIP vision tower, a projector, a small Llama), built in a second.

It takes the tiny Llama's tokenizer plus an ``<image>`` token, a chat template that renders image
parts as ``<image>``, a PIL-only CLIP image processor (32x32 pixels, 8x8 patches: one image is 16
prompt tokens) and random weights from a fixed seed. Its answers mean nothing; it lets tests check
that an image reaches a vision model (the prompt grows by the image's tokens) offline. Cached::

    <cache>/tiny-vision/<version>/
        hf/               config.json, model.safetensors, tokenizer files, processor_config.json,
                          chat_template.jinja
        tinyvision.json   (what was built; written last)
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
