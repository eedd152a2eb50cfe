"""A tiny cross-encoder for ``/v1/rerank``: a WordPiece tokenizer and a small BERT, built in a second.

No reranker ships on PyPI, and the Hub is not reachable everywhere, so this one is
made here: a tokenizer fitted on the built-in text and a
``BertForSequenceClassification`` (one label) with weights drawn from a fixed
seed. Its scores are deterministic but carry no meaning (a short fit on the
built-in text did not teach a model this small to rank); it exercises the real
rerank path — tokenizer pairs, sentence-transformers' ``CrossEncoder``, the
API — offline. Cached like the tiny Llama::

    <cache>/tiny-reranker/<version>/
        hf/                 config.json, model.safetensors, tokenizer.json,
                            tokenizer_config.json, special_tokens_map.json
        tinyreranker.json   (what was built; written last)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from turnout.tinymodel.builder import Progress, default_cache_dir, one_thread, publish
from turnout.tinymodel.corpus import CHAT_PAIRS, CORPUS

RECIPE_VERSION = "1"
MANIFEST = "tinyreranker.json"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

RECIPE: dict[str, Any] = {
    "seed": 4321,
    "vocab_size": 1024,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
    "initializer_range": 0.3,  # wide enough that documents get clearly different scores
}


def reranker_version() -> str:
    """Changes whenever the recipe, the text or this file does."""
    h = hashlib.sha256()
    h.update(json.dumps(RECIPE, sort_keys=True).encode())
    h.update(CORPUS.encode())
    h.update(json.dumps(CHAT_PAIRS).encode())
    h.update(Path(__file__).read_bytes())
    return f"v{RECIPE_VERSION}-{h.hexdigest()[:10]}"


def _root(cache_dir: Path | None) -> Path:
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "tiny-reranker" / reranker_version()


def is_reranker_built(cache_dir: Path | None = None) -> bool:
    """Whether the cross-encoder of this version is in the cache already."""
    return (_root(cache_dir) / MANIFEST).is_file()


def build_tiny_reranker(cache_dir: Path | None = None, progress: Progress | None = None) -> Path:
    """The cross-encoder's folder (``.../hf``), built into the cache first if it is not there."""
    final = _root(cache_dir)
    publish(final, MANIFEST, lambda root: _build_into(root, progress))
    return final / "hf"


def _build_into(root: Path, progress: Progress | None) -> dict[str, Any]:
    hf_dir = root / "hf"
    hf_dir.mkdir()
    if progress:
        progress("tokenizer")
    tok = _train_tokenizer()
    tok.save(str(hf_dir / "tokenizer.json"))
    _write_tokenizer_files(hf_dir)
    config = _config(tok.get_vocab_size(), tok.token_to_id("[PAD]"))
    (hf_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if progress:
        progress("weights")
    with one_thread():
        state = _weights(config)
    from safetensors.torch import save_file

    save_file(state, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    return {"version": reranker_version(), "vocab_size": tok.get_vocab_size(), "recipe": RECIPE}


def _train_tokenizer() -> Any:
    """A BERT-style WordPiece tokenizer over the built-in text's words.

    The vocabulary is made here, not by tokenizers' WordPiece trainer (whose result varies from run
    to run): the special tokens, every character alone and as a ``##`` continuation, then the most
    frequent words. Any other word splits into those pieces.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    text = normalizer.normalize_str("\n".join([CORPUS, *(f"{q}\n{a}" for q, a in CHAT_PAIRS)]))
    words = Counter(w for w, _ in pre.pre_tokenize_str(text))
    chars = sorted({c for w in words for c in w})
    vocab = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    room = RECIPE["vocab_size"] - len(vocab)
    vocab += [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1][:room]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tok


def _write_tokenizer_files(hf_dir: Path) -> None:
    names = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
             "mask_token": "[MASK]"}
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", **names, "do_lower_case": True,
                  "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
                  "model_max_length": RECIPE["max_position_embeddings"], "clean_up_tokenization_spaces": False}
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    (hf_dir / "special_tokens_map.json").write_text(json.dumps(names, indent=2) + "\n")


def _config(vocab_size: int, pad_id: int) -> dict[str, Any]:
    r = RECIPE
    return {
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": r["hidden_size"],
        "num_hidden_layers": r["num_hidden_layers"],
        "num_attention_heads": r["num_attention_heads"],
        "intermediate_size": r["intermediate_size"],
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": r["max_position_embeddings"],
        "type_vocab_size": 2,
        "initializer_range": r["initializer_range"],
        "layer_norm_eps": 1e-12,
        "pad_token_id": pad_id,
        "id2label": {"0": "LABEL_0"},
        "label2id": {"LABEL_0": 0},
        "torch_dtype": "float32",
    }


def _weights(config: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(RECIPE["seed"])
    cfg = BertConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    model = BertForSequenceClassification(cfg).float().eval()
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
