"""A PEFT LoRA adapter converted to a GGUF LoRA adapter for llama.cpp, with the ``gguf`` package.

llama.cpp's own converter (``convert_lora_to_gguf.py``) is not published as a package; this writes the same
file for plain LoRA: ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``, and per
targeted weight ``<gguf name>.lora_a`` (``[r, in]``) and ``.lora_b`` (``[out, r]``), names mapped from the
Hugging Face ones with gguf's tensor name map for the base model's architecture. For ``llama`` the rows of
the Q and K projections are reordered as the base model's converter reorders them (rotate-half RoPE to
llama.cpp's interleaved layout), which for ``B @ A`` means reordering the rows of B. llama.cpp scales the
update by ``alpha / r``, as PEFT does. DoRA, rsLoRA, per-module ranks or alphas, and adapters that train
other tensors (``modules_to_save``, embeddings) are refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

#: PEFT's key of one LoRA matrix: ``base_model.model.<module>.lora_A.weight``
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
#: architectures whose base converter reorders Q/K rows (convert_hf_to_gguf's LlamaModel family)
_PERMUTED = {"llama"}


class ConversionError(ValueError):
    """The adapter cannot be converted; the message says why."""


def _base_facts(base_gguf: Path) -> tuple[str, int, int, int]:
    """Architecture, block count, head count and KV head count of the base model's GGUF."""
    import gguf

    fields = gguf.GGUFReader(str(base_gguf)).fields

    def value(key: str, default: Any = None) -> Any:
        field = fields.get(key)
        return field.contents() if field is not None else default

    arch = value("general.architecture")
    heads = int(value(f"{arch}.attention.head_count", 0) or 0)
    return arch, int(value(f"{arch}.block_count")), heads, int(value(f"{arch}.attention.head_count_kv", heads) or heads)


def _permute(w: Any, n_head: int) -> Any:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert(adapter: Path, base_gguf: Path, out: Path) -> Path:
    """Write the GGUF LoRA of the PEFT folder ``adapter`` for the model in ``base_gguf`` to ``out``."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    config = json.loads((adapter / "adapter_config.json").read_text())
    for key, why in (("use_dora", "DoRA"), ("use_rslora", "rsLoRA"), ("alpha_pattern", "per-module alphas"),
                     ("rank_pattern", "per-module ranks"), ("modules_to_save", "trained modules_to_save")):
        if config.get(key):
            raise ConversionError(f"llama.cpp's LoRA adapters have no {why} ({key} is set in adapter_config.json)")
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise ConversionError(f"{adapter} has no adapter_model.safetensors (llama.cpp needs safetensors weights)")
    arch, blocks, n_head, n_kv = _base_facts(base_gguf)
    names = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in names:
        raise ConversionError(f"gguf does not know the base model's architecture {arch!r}")
    tmap = gguf.get_tensor_name_map(names[arch], blocks)
    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in load_file(str(weights)).items():
        match = _KEY.match(key)
        if match is None:
            raise ConversionError(f"{key}: not a LoRA A/B matrix; only plain LoRA adapters convert")
        pairs.setdefault(match["module"], {})[match["ab"]] = tensor.astype(np.float32)
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config.get("lora_alpha") or config["r"]))
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ConversionError(f"{module}: has lora_{'A' if 'A' not in ab else 'B'} missing")
        name = tmap.get_name(module + ".weight", try_suffixes=(".weight",))
        if name is None:
            raise ConversionError(f"{module}: no llama.cpp tensor of {arch} corresponds to it")
        b = ab["B"]
        if arch in _PERMUTED and name.endswith(".attn_q.weight"):
            b = _permute(b, n_head)
        elif arch in _PERMUTED and name.endswith(".attn_k.weight"):
            b = _permute(b, n_kv)
        writer.add_tensor(name + ".lora_a", np.ascontiguousarray(ab["A"]))
        writer.add_tensor(name + ".lora_b", np.ascontiguousarray(b))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
