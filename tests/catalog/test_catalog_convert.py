"""scripts/convert_catalog.py: the committed catalog data is what the converter makes of Xinference's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO.parent / "shared" / "catalog"
DATA = REPO / "operator" / "turnout" / "catalog" / "data"
needs_source = pytest.mark.skipif(
    not (SOURCE / "xinference" / "llm_family.json").exists(),
    reason=f"Xinference's catalog is not at {SOURCE} (only the source workspace has it)",
)


@pytest.fixture(scope="module")
def conv() -> ModuleType:
    spec = importlib.util.spec_from_file_location("convert_catalog", REPO / "scripts" / "convert_catalog.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_source
def test_committed_data_matches_a_fresh_conversion(conv: ModuleType) -> None:
    files = conv.convert(SOURCE)
    assert sorted(files) == ["embedding.json", "engines.json", "llm.json", "rerank.json"]
    for name, text in files.items():
        committed = (DATA / name).read_text(encoding="utf-8")
        assert committed == text, f"{name} drifted: run python scripts/convert_catalog.py and commit"


@needs_source
def test_conversion_keeps_every_family_and_spec(conv: ModuleType) -> None:
    for kind, rel in conv.SOURCE_FILES.items():
        src = json.loads((SOURCE / rel).read_text(encoding="utf-8"))
        out = json.loads((DATA / f"{kind}.json").read_text(encoding="utf-8"))
        assert out["count"] == len(out["families"]) == len(src)
        by_name = {f["name"]: f for f in out["families"]}
        for fam in src:
            assert len(by_name[fam["model_name"]]["specs"]) == len(fam["model_specs"]), fam["model_name"]
        assert "7ecec16" in out["_about"]
    llm = json.loads((SOURCE / "xinference" / "llm_family.json").read_text(encoding="utf-8"))
    assert (len(llm), sum(len(f["model_specs"]) for f in llm)) == (162, 965)


@needs_source
def test_check_mode(conv: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert conv.main(["--source", str(SOURCE), "--out", str(tmp_path), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    assert conv.main(["--source", str(SOURCE), "--out", str(tmp_path)]) == 0
    assert conv.main(["--source", str(SOURCE), "--out", str(tmp_path), "--check"]) == 0
    for name in ("llm.json", "embedding.json", "rerank.json", "engines.json"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes()


def test_missing_source_is_a_one_line_error(
    conv: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert conv.main(["--source", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convert_catalog: catalog source file missing:") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("raw", "size"),
    [(7, 7), ("1_5", 1.5), ("0_5", 0.5), ("1058_59", 1058.59), (2.0, 2), ("'3'".strip("'"), 3)],
)
def test_parse_size(conv: ModuleType, raw: Any, size: float) -> None:
    got = conv.parse_size(raw)
    assert got == size and type(got) is type(size)


def test_parse_size_rejects_junk(conv: ModuleType) -> None:
    for bad in ("x", None, True, [1]):
        with pytest.raises(conv.ConversionError, match="bad model size"):
            conv.parse_size(bad)


@pytest.mark.parametrize(
    ("model_id", "size"),
    [
        ("Qwen/Qwen3-Embedding-0.6B", 0.6),
        ("Qwen/Qwen3-Embedding-0.6B-GGUF", 0.6),
        ("Alibaba-NLP/gte-Qwen2-7B-instruct", 7),
        ("tencent/R3-rerank-0.6b", 0.6),
        ("BAAI/bge-large-en-v1.5", None),
        ("jinaai/jina-embeddings-v3", None),
        ("org1.5B/model", None),
    ],
)
def test_size_from_repo_name(conv: ModuleType, model_id: str, size: float | None) -> None:
    assert conv.size_from_repo_name(model_id) == size


def test_short_description(conv: ModuleType) -> None:
    assert conv.short_description("One. Two.") == "One."
    assert conv.short_description("  spaced\n  out  ") == "spaced out"
    assert conv.short_description("v1.5 is good. More.") == "v1.5 is good."
    long = conv.short_description("word " * 100)
    assert len(long) <= conv.DESCRIPTION_MAX and long.endswith("…")


def _spec(fmt: str, src: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model_format": fmt, "model_size_in_billions": "1_5", "model_src": src, **extra}


def test_convert_spec_prefers_huggingface_and_normalises(conv: ModuleType) -> None:
    hf = {
        "model_id": "o/m-GGUF",
        "quantizations": ["Q4_K_M", "q4_k_m"],
        "model_file_name_template": "m-{quantization}.gguf",
    }
    ms = {"model_id": "ms/m-GGUF", "quantizations": ["Q4_K_M"], "model_revision": "master"}
    out = conv.convert_spec("m", _spec("ggufv2", {"modelscope": ms, "huggingface": hf}), with_size=True)
    assert out == {
        "format": "gguf",
        "hub": "huggingface",
        "model_id": "o/m-GGUF",
        "quantizations": ["Q4_K_M"],
        "size_b": 1.5,
        "file_template": "m-{quantization}.gguf",
    }
    only_ms = conv.convert_spec(
        "m", _spec("pytorch", {"modelscope": ms}, activated_size_in_billions="0_3"), with_size=True
    )
    assert (only_ms["hub"], only_ms["revision"], only_ms["activated_size_b"]) == ("modelscope", "master", 0.3)
    assert "size_b" not in conv.convert_spec("m", _spec("pytorch", {"modelscope": ms}), with_size=False)


def test_convert_spec_split_gguf(conv: ModuleType) -> None:
    src = {
        "model_id": "o/big-GGUF",
        "quantizations": ["none"],
        "model_file_name_template": "",
        "model_file_name_split_template": "{quantization}/big-{quantization}-{part}.gguf",
        "quantization_parts": {"Q8_0": ["00001-of-00002", "00002-of-00002"], "BF16": []},
    }
    out = conv.convert_spec("big", _spec("ggufv2", {"huggingface": src}), with_size=True)
    assert out["quantizations"] == ["Q8_0"]
    assert out["parts"] == {"Q8_0": ["00001-of-00002", "00002-of-00002"]}
    assert "file_template" not in out


@pytest.mark.parametrize(
    ("src", "message"),
    [
        (
            {"openmind_hub": {"model_id": "x", "quantizations": ["none"]}},
            "no source on huggingface or modelscope",
        ),
        ({"huggingface": {"model_id": "x", "quantizations": []}}, "lists no quantization"),
        ({"huggingface": {"model_id": "x", "quantizations": ["Q4_0"]}}, "no file template"),
        (
            {
                "huggingface": {
                    "model_id": "x",
                    "quantizations": ["Q4_0"],
                    "quantization_parts": {"Q4_0": ["a"]},
                }
            },
            "no split template",
        ),
    ],
)
def test_convert_spec_rejects_unusable_specs(conv: ModuleType, src: dict[str, Any], message: str) -> None:
    with pytest.raises(conv.ConversionError, match=message):
        conv.convert_spec("bad", _spec("ggufv2", src), with_size=True)


def test_render_is_valid_sorted_json(conv: ModuleType) -> None:
    fams = [
        {
            "name": "b",
            "type": "llm",
            "context_length": None,
            "specs": [{"format": "pytorch"}, {"format": "gguf"}],
        },
        {"name": "A", "type": "llm", "specs": [{"format": "mlx"}]},
    ]
    text = conv.render_families("about", "src", fams)
    data = json.loads(text)
    assert [f["name"] for f in data["families"]] == ["A", "b"]
    assert "context_length" not in data["families"][1]
    assert data["count"] == 2 and data["_about"] == "about"
    assert conv.render_families("about", "src", list(reversed(fams))) == text


def test_source_commit(conv: ModuleType) -> None:
    assert (
        conv.source_commit({"_about": "as listed by Xinference (xorbitsai/inference @7ecec16, vllm)"})
        == "7ecec16"
    )
    with pytest.raises(conv.ConversionError):
        conv.source_commit({"_about": "no commit"})
