"""Tiny LoRA adapters of the tiny Llama, made with PEFT, for tests, ``builtin://tiny-lora`` and benchmarks.

An adapter is random (``init_lora_weights=False``: A and B both drawn, B non-zero), so it changes the
model's greedy answers; ``seed`` picks one of many. Layout of one cached adapter::

    <cache>/tiny-lora/<version>/seed-<seed>/
        adapter_config.json, adapter_model.safetensors   (PEFT)
        tinylora.json                                    (what was built; written last)

:func:`merged_state` gives the tiny model's weights with an adapter merged in (PEFT's
``merge_and_unload``): what the adapter's answers must equal.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from turnout.tinymodel.builder import (
    TinyModel,
    build_tiny_model,
    default_cache_dir,
    is_built,
    one_thread,
    publish,
)

MANIFEST = "tinylora.json"
#: everything that decides the adapter's bytes besides the seed and the base model
LORA_RECIPE: dict[str, Any] = {
    "r": 8,
    "lora_alpha": 16,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def lora_version(model: TinyModel) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(LORA_RECIPE, sort_keys=True).encode())
    h.update(model.version.encode())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:10]


def is_lora_built(seed: int = 0, cache_dir: Path | None = None) -> bool:
    """Whether adapter ``seed`` of this version is in the cache already (no build needed)."""
    if not is_built(cache_dir):
        return False
    return (_folder(build_tiny_model(cache_dir), seed, cache_dir) / MANIFEST).is_file()  # built: reads its manifest


def _folder(model: TinyModel, seed: int, cache_dir: Path | None) -> Path:
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / "tiny-lora" / lora_version(model) / f"seed-{seed}"


def build_tiny_lora(seed: int = 0, cache_dir: Path | None = None) -> Path:
    """The folder of the tiny model's LoRA adapter number ``seed``, built on first use (about a second)."""
    model = build_tiny_model(cache_dir)
    final = _folder(model, seed, cache_dir)
    publish(final, MANIFEST, lambda root: _build(root, model, seed))
    return final


def _build(root: Path, model: TinyModel, seed: int) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with one_thread():
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(model.hf_dir, dtype=torch.float32)
        config = LoraConfig(**LORA_RECIPE, lora_dropout=0.0, init_lora_weights=False, task_type="CAUSAL_LM")
        peft_model = get_peft_model(base, config)
        peft_model.save_pretrained(str(root))
    cfg = json.loads((root / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = model.served_name  # not this machine's cache path
    (root / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return {"seed": seed, "base": model.served_name, "base_version": model.version, "recipe": LORA_RECIPE}


def merged_state(model: TinyModel, adapter: Path) -> dict[str, Any]:
    """The tiny model's state dict with ``adapter`` merged into its weights (PEFT's ``merge_and_unload``)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with one_thread():
        base = AutoModelForCausalLM.from_pretrained(model.hf_dir, dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
        return {k: v.detach().contiguous().clone() for k, v in merged.state_dict().items()}


def write_merged(model: TinyModel, adapter: Path, dest: Path) -> Path:
    """An HF folder at ``dest``: the tiny model with ``adapter`` merged in, its tokenizer and config."""
    import shutil

    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    for item in model.hf_dir.iterdir():
        if item.name != "model.safetensors":
            shutil.copy(item, dest / item.name)
    save_file(merged_state(model, adapter), str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def write_merged_gguf(model: TinyModel, adapter: Path, dest: Path) -> Path:
    """The tiny model with ``adapter`` merged in, as GGUF, written as the tiny model's own GGUF is."""
    from tokenizers import Tokenizer

    from turnout.tinymodel.builder import _write_gguf

    config = json.loads((model.hf_dir / "config.json").read_text())
    tok = Tokenizer.from_file(str(model.hf_dir / "tokenizer.json"))
    _write_gguf(dest, tok, merged_state(model, adapter), config)
    return dest
