"""The tiny-model builder: layout, metadata, caching, atomic concurrent builds."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gguf
import pytest

from turnout.tinymodel import TinyModel, build_tiny_model, builder, model_version
from turnout.tinymodel.__main__ import main as cli_main
from turnout.tinymodel.builder import CHAT_TEMPLATE, IM_END, IM_START

HF_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
)


def _field(reader: gguf.GGUFReader, key: str):
    field = reader.get_field(key)
    assert field is not None, f"GGUF lacks {key}"
    return field.contents()


def test_layout_and_hf_metadata(tiny_model: TinyModel) -> None:
    for name in HF_FILES:
        assert (tiny_model.hf_dir / name).is_file(), name
    assert tiny_model.gguf_path.is_file()
    assert tiny_model.version == model_version()
    assert tiny_model.root.name == tiny_model.version
    config = json.loads((tiny_model.hf_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["head_dim"] >= 32
    assert config["hidden_size"] // config["num_attention_heads"] == config["head_dim"]
    assert config["vocab_size"] == tiny_model.vocab_size
    assert 1000 <= tiny_model.vocab_size <= 4096
    tok_cfg = json.loads((tiny_model.hf_dir / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == CHAT_TEMPLATE
    assert tok_cfg["eos_token"] == IM_END
    gen = json.loads((tiny_model.hf_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tiny_model.eos_token_id


def test_gguf_metadata_matches_tokenizer(tiny_model: TinyModel) -> None:
    tok = json.loads((tiny_model.hf_dir / "tokenizer.json").read_text())
    reader = gguf.GGUFReader(tiny_model.gguf_path)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == tiny_model.vocab_size
    for piece, i in tok["model"]["vocab"].items():
        assert tokens[i] == piece
    for added in tok["added_tokens"]:
        assert tokens[added["id"]] == added["content"]
    assert len(_field(reader, "tokenizer.ggml.merges")) == len(tok["model"]["merges"])
    assert _field(reader, "tokenizer.ggml.bos_token_id") == tiny_model.bos_token_id
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tiny_model.eos_token_id
    assert tokens[tiny_model.eos_token_id] == IM_END
    assert _field(reader, "tokenizer.chat_template") == CHAT_TEMPLATE
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "output.weight", "output_norm.weight", "blk.0.attn_q.weight"} <= names


def test_second_call_reuses_the_cache(tiny_model: TinyModel) -> None:
    mtime = (tiny_model.hf_dir / "model.safetensors").stat().st_mtime_ns
    again = build_tiny_model(tiny_model.root.parent.parent)
    assert again == tiny_model
    assert (again.hf_dir / "model.safetensors").stat().st_mtime_ns == mtime


def test_cli_prints_paths(tiny_model: TinyModel, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--cache-dir", str(tiny_model.root.parent.parent), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hf_dir"] == str(tiny_model.hf_dir)
    assert out["gguf_path"] == str(tiny_model.gguf_path)
    assert out["served_name"] == tiny_model.served_name


def test_concurrent_builds_publish_one_complete_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two builders race into one empty cache: both get the same finished folder, no leftovers."""
    barrier = threading.Barrier(2)
    calls: list[str] = []

    def fake_build(root: Path, version: str, progress: object = None) -> dict[str, object]:
        calls.append(root.name)
        (root / "hf").mkdir()
        (root / "gguf").mkdir()
        (root / "hf" / "config.json").write_text(json.dumps({"built_in": root.name}))
        barrier.wait(timeout=30)  # both are mid-build before either publishes
        return {
            "served_name": "tiny-llama",
            "version": version,
            "vocab_size": 3,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "chat_template": CHAT_TEMPLATE,
        }

    monkeypatch.setattr(builder, "_build_into", fake_build)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: build_tiny_model(tmp_path), range(2)))
    assert len(calls) == 2
    assert results[0] == results[1]
    root = results[0].root
    assert sorted(p.name for p in (tmp_path / "tiny-model").iterdir()) == [model_version()]
    winner = json.loads((root / "hf" / "config.json").read_text())["built_in"]
    assert winner in calls, "the published folder must be one complete build"
    assert (root / "tinymodel.json").is_file()


@pytest.mark.slow
def test_rebuild_is_deterministic(tiny_model: TinyModel, tmp_path: Path) -> None:
    """A fresh build in another process gives byte-identical files (seeded training and tokenizer)."""
    code = (
        "import sys; from pathlib import Path; from turnout.tinymodel import build_tiny_model as b; "
        "print(b(Path(sys.argv[1])).root)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True, timeout=1800
    )
    built = Path(out.stdout.strip())
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (built / "hf" / name).read_bytes() == (tiny_model.hf_dir / name).read_bytes(), name
    assert (built / "gguf" / tiny_model.gguf_path.name).read_bytes() == tiny_model.gguf_path.read_bytes()


def test_chat_template_is_chatml(tiny_model: TinyModel) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model.hf_dir)
    text = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == f"{IM_START}system\nBe brief.{IM_END}\n{IM_START}user\nHi{IM_END}\n{IM_START}assistant\n"
    ids = tok(text)["input_ids"]
    # Special tokens are single ids, and byte-level BPE round-trips text exactly.
    assert ids.count(tok.convert_tokens_to_ids(IM_START)) == 3
    assert tok.decode(ids) == text
    odd = "naïve café — 東京 🙂 tabs\tand  spaces"
    assert tok.decode(tok(odd)["input_ids"]) == odd
