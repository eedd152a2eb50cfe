"""Build the tiny test model: a byte-level BPE tokenizer and a small Llama.

The model is built deterministically from a fixed seed and the built-in text
(``corpus.py``) and cached, so tests, the README demo and benchmarks share one
copy. Layout of one cached version::

    <cache>/tiny-model/<version>/
        hf/      config.json, model.safetensors, tokenizer.json,
                 tokenizer_config.json, special_tokens_map.json, generation_config.json
        gguf/    tiny-llama.gguf      (F32, llama arch, gpt2 BPE tokenizer)
        tinymodel.json                (what was built; written last)

The weights start random and get 150 small steps of training on the built-in
text, on one thread (a few CPU-seconds). That keeps greedy output varied instead
of one token repeated forever, and it widens the gap between the best and
second-best logit, which makes the transformers-vs-llama.cpp golden comparison
robust to rounding.

``config.json`` and ``tokenizer_config.json`` are written by hand in the
classic (transformers 4.x) form so every engine reads them: vLLM and mlx-lm
environments often pin an older transformers than the main one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from turnout.tinymodel.corpus import CHAT_PAIRS, CORPUS

#: The cache layout generation; the version also hashes this file and the text, so any change rebuilds.
RECIPE_VERSION = "1"

SERVED_NAME = "tiny-llama"
GGUF_NAME = "tiny-llama.gguf"
MANIFEST = "tinymodel.json"

#: ``progress(status=None, *, completed=None, total=None)``: how far a build is (turnout.progress.Report)
Progress = Callable[..., None]

BOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (BOS_TOKEN, IM_START, IM_END)

#: ChatML, as Qwen-style models use it, with Qwen 2.5's tool format (Hermes ``<tool_call>``). A system
#: message is optional; without ``tools`` and tool messages it renders plain ChatML.
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, "
    "\"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and tools and loop.first %}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] %}"
    "{{- '<|im_start|>assistant\\n' + (message['content'] or '') }}"
    "{%- for call in message['tool_calls'] %}"
    "{%- set fn = call['function'] if call['function'] is defined else call %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + fn['name'] + '\", \"arguments\": ' }}"
    "{%- if fn['arguments'] is string %}{{- fn['arguments'] }}{%- else %}{{- fn['arguments'] | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

#: Everything that decides the bytes of the model; hashed into the version.
RECIPE: dict[str, Any] = {
    "seed": 1234,
    "vocab_size": 1024,
    "bpe_min_frequency": 1,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "train_steps": 150,
    "train_batch": 8,
    "train_seq_len": 64,
    "learning_rate": 4e-3,
}


@dataclass(frozen=True)
class TinyModel:
    """Paths and facts about one built tiny model."""

    root: Path
    hf_dir: Path
    gguf_path: Path
    served_name: str
    version: str
    vocab_size: int
    bos_token_id: int
    eos_token_id: int
    chat_template: str
    build_seconds: float

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("root", "hf_dir", "gguf_path"):
            d[k] = str(d[k])
        return d


def model_version() -> str:
    """A version string that changes whenever the recipe, the text or this builder's code does."""
    h = hashlib.sha256()
    h.update(json.dumps(RECIPE, sort_keys=True).encode())
    h.update(CORPUS.encode())
    h.update(json.dumps(CHAT_PAIRS).encode())
    h.update(CHAT_TEMPLATE.encode())
    h.update(Path(__file__).read_bytes())
    return f"v{RECIPE_VERSION}-{h.hexdigest()[:10]}"


def default_cache_dir() -> Path:
    """``$TURNOUT_CACHE`` or ``~/.cache/turnout``."""
    env = os.environ.get("TURNOUT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "turnout"


def is_built(cache_dir: Path | None = None) -> bool:
    """Whether the tiny model of this version is in the cache already (no build needed)."""
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return (base / "tiny-model" / model_version() / MANIFEST).is_file()


def build_tiny_model(cache_dir: Path | None = None, progress: Progress | None = None) -> TinyModel:
    """Return the tiny model, building it into the cache if it is not there yet.

    ``cache_dir`` plays the role of ``$TURNOUT_CACHE``: the model lives in
    ``cache_dir/tiny-model/<version>/``. Concurrent callers are safe (see :func:`publish`).
    ``progress``, when given, hears the phases and the training steps
    (``progress("training", completed=i, total=n)``).
    """
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    version = model_version()
    final = base / "tiny-model" / version
    publish(final, MANIFEST, lambda root: _build_into(root, version, progress))
    return _load_manifest(final)


def publish(final: Path, manifest: str, build: Callable[[Path], dict[str, Any]]) -> None:
    """Build into ``final`` unless ``final/manifest`` exists.

    Each builder works in a private temporary folder beside ``final`` that is renamed into
    place atomically (the manifest written last), and a finished folder is never modified,
    so concurrent builders are safe: one wins, the others use its folder.
    """
    if (final / manifest).is_file():
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=final.parent))
    try:
        t0 = time.monotonic()
        info = build(tmp)
        info["build_seconds"] = round(time.monotonic() - t0, 2)
        (tmp / manifest).write_text(json.dumps(info, indent=2) + "\n")
        _make_readable(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished first (the target exists and is not empty).
            if not (final / manifest).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _make_readable(root: Path) -> None:
    """mkdtemp and safetensors create owner-only modes; engines may run as other users."""
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)


def _load_manifest(root: Path) -> TinyModel:
    info = json.loads((root / MANIFEST).read_text())
    return TinyModel(
        root=root,
        hf_dir=root / "hf",
        gguf_path=root / "gguf" / GGUF_NAME,
        served_name=info["served_name"],
        version=info["version"],
        vocab_size=info["vocab_size"],
        bos_token_id=info["bos_token_id"],
        eos_token_id=info["eos_token_id"],
        chat_template=info["chat_template"],
        build_seconds=info["build_seconds"],
    )


# --------------------------------------------------------------------------- build steps


def _build_into(root: Path, version: str, progress: Progress | None = None) -> dict[str, Any]:
    hf_dir = root / "hf"
    gguf_dir = root / "gguf"
    hf_dir.mkdir()
    gguf_dir.mkdir()
    if progress:
        progress("tokenizer")
    tok = _train_tokenizer()
    vocab_size = tok.get_vocab_size()
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    bos_id, eos_id = ids[BOS_TOKEN], ids[IM_END]
    tok.save(str(hf_dir / "tokenizer.json"))
    _write_tokenizer_config(hf_dir)
    config = _hf_config(vocab_size, bos_id, eos_id)
    _write_json(hf_dir / "config.json", config)
    _write_json(
        hf_dir / "generation_config.json",
        {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": bos_id},
    )
    state = _train_model(tok, config, progress)
    from safetensors.torch import save_file

    if progress:
        progress("writing safetensors and GGUF")
    save_file(state, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    _write_gguf(gguf_dir / GGUF_NAME, tok, state, config)
    return {
        "served_name": SERVED_NAME,
        "version": version,
        "vocab_size": vocab_size,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "chat_template": CHAT_TEMPLATE,
        "recipe": RECIPE,
    }


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _training_texts() -> list[str]:
    paragraphs = [p.replace("\n", " ").strip() for p in CORPUS.split("\n\n") if p.strip()]
    chats = [f"{IM_START}user\n{q}{IM_END}\n{IM_START}assistant\n{a}{IM_END}\n" for q, a in CHAT_PAIRS]
    return paragraphs + chats


def _train_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # GPT-2 style byte-level pre-tokenization; llama.cpp's "gpt-2" pre-tokenizer matches it.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=RECIPE["vocab_size"],
        min_frequency=RECIPE["bpe_min_frequency"],
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [CORPUS.replace(IM_START, "").replace(IM_END, "")]
    texts += [f"{q}\n{a}\n" for q, a in CHAT_PAIRS]
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _write_tokenizer_config(hf_dir: Path) -> None:
    added = {}
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    for t in tok["added_tokens"]:
        added[str(t["id"])] = {
            "content": t["content"],
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    _write_json(
        hf_dir / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "added_tokens_decoder": added,
            "bos_token": BOS_TOKEN,
            "eos_token": IM_END,
            "pad_token": BOS_TOKEN,
            "unk_token": None,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": RECIPE["max_position_embeddings"],
            "chat_template": CHAT_TEMPLATE,
        },
    )
    _write_json(
        hf_dir / "special_tokens_map.json",
        {"bos_token": BOS_TOKEN, "eos_token": IM_END, "pad_token": BOS_TOKEN},
    )


def _hf_config(vocab_size: int, bos_id: int, eos_id: int) -> dict[str, Any]:
    r = RECIPE
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": r["hidden_size"],
        "intermediate_size": r["intermediate_size"],
        "num_hidden_layers": r["num_hidden_layers"],
        "num_attention_heads": r["num_attention_heads"],
        "num_key_value_heads": r["num_key_value_heads"],
        "head_dim": r["head_dim"],
        "hidden_act": "silu",
        "max_position_embeddings": r["max_position_embeddings"],
        "rms_norm_eps": r["rms_norm_eps"],
        "rope_theta": r["rope_theta"],
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": bos_id,
        "torch_dtype": "float32",
    }


def _train_model(tok: Any, config: dict[str, Any], progress: Progress | None = None) -> dict[str, Any]:
    """Random init from the seed, then a short fit on the built-in text (on one thread: see :func:`one_thread`)."""
    with one_thread():
        return _fit(tok, config, progress)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread for a while.

    The matrices here are tiny: more threads barely help on an idle machine, and on a busy one
    their spin-waiting multiplies the build's time many times over. One thread also gives the
    same sums however many cores the machine has.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(tok: Any, config: dict[str, Any], progress: Progress | None) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    r = RECIPE
    torch.manual_seed(r["seed"])
    gen = torch.Generator().manual_seed(r["seed"])
    cfg = LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    model = LlamaForCausalLM(cfg).float()
    model.train()

    stream: list[int] = []
    for text in _training_texts():
        stream.extend(tok.encode(text).ids)
    data = torch.tensor(stream, dtype=torch.long)
    seq = r["train_seq_len"]
    opt = torch.optim.AdamW(model.parameters(), lr=r["learning_rate"], weight_decay=0.0)
    steps = r["train_steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
    for step in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (r["train_batch"],), generator=gen)
        batch = torch.stack([data[s : s + seq] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if progress:
            progress("training", completed=step + 1, total=steps)
    model.eval()
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def _permute_for_gguf(w: Any, n_head: int) -> Any:
    """Reorder Q/K rows from HF's rotate-half RoPE layout to llama.cpp's interleaved one."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(path: Path, tok: Any, state: dict[str, Any], config: dict[str, Any]) -> None:
    import gguf
    import numpy as np

    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("turnout tiny llama")
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(config["head_dim"])
    w.add_value_length(config["head_dim"])
    w.add_rope_dimension_count(config["head_dim"])
    w.add_rope_freq_base(config["rope_theta"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_vocab_size(config["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    tj = json.loads(tok.to_str())
    vocab: dict[str, int] = tj["model"]["vocab"]
    tokens = [""] * config["vocab_size"]
    types = [gguf.TokenType.NORMAL] * config["vocab_size"]
    for piece, i in vocab.items():
        tokens[i] = piece
    for t in tj["added_tokens"]:
        tokens[t["id"]] = t["content"]
        types[t["id"]] = gguf.TokenType.CONTROL if t["special"] else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(config["bos_token_id"])
    w.add_eos_token_id(config["eos_token_id"])
    w.add_pad_token_id(config["pad_token_id"])
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    def put(name: str, t: Any) -> None:
        w.add_tensor(name, np.ascontiguousarray(t.float().numpy()))

    put("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", state[p + "input_layernorm.weight"])
        put(f"blk.{i}.attn_q.weight", _permute_for_gguf(state[p + "self_attn.q_proj.weight"], n_head))
        put(f"blk.{i}.attn_k.weight", _permute_for_gguf(state[p + "self_attn.k_proj.weight"], n_kv))
        put(f"blk.{i}.attn_v.weight", state[p + "self_attn.v_proj.weight"])
        put(f"blk.{i}.attn_output.weight", state[p + "self_attn.o_proj.weight"])
        put(f"blk.{i}.ffn_norm.weight", state[p + "post_attention_layernorm.weight"])
        put(f"blk.{i}.ffn_gate.weight", state[p + "mlp.gate_proj.weight"])
        put(f"blk.{i}.ffn_up.weight", state[p + "mlp.up_proj.weight"])
        put(f"blk.{i}.ffn_down.weight", state[p + "mlp.down_proj.weight"])
    put("output_norm.weight", state["model.norm.weight"])
    put("output.weight", state["lm_head.weight"])

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
