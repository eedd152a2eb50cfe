"""turnout.catalog: lookups, synonyms, URIs and suggestions against the shipped data."""

from __future__ import annotations

import math
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.catalog import (
    FORMATS,
    Catalog,
    CatalogFamily,
    CatalogSpec,
    load_catalog,
    normalize_format,
    parse_size,
)


@pytest.fixture(scope="module")
def cat() -> Catalog:
    return load_catalog()


def test_load_catalog_is_memoized(cat: Catalog) -> None:
    assert load_catalog() is cat


def test_counts_match_xinference(cat: Catalog) -> None:
    # 162 LLM families / 965 specs in Xinference's llm_family.json (design card); 43/47 and 17/24 beside it.
    for model_type, families, specs in (("llm", 162, 965), ("embedding", 43, 47), ("rerank", 17, 24)):
        fams = cat.families(model_type)
        assert len(fams) == families, model_type
        assert sum(len(f.specs) for f in fams) == specs, model_type
        assert all(f.model_type == model_type for f in fams)
    assert len(cat) == 162 + 43 + 17
    assert len(cat.names()) == len(set(n.lower() for n in cat.names()))


def test_data_files_stay_small() -> None:
    data = resources.files("turnout.catalog").joinpath("data")
    for name in ("llm.json", "embedding.json", "rerank.json", "engines.json"):
        assert len(data.joinpath(name).read_bytes()) < 512 * 1024, name


def test_get_exact_then_case_insensitive(cat: Catalog) -> None:
    fam = cat.get("qwen2.5-instruct")
    assert fam is not None and fam.name == "qwen2.5-instruct"
    assert cat.get("QWEN2.5-Instruct") is fam
    assert cat.get("  qwen2.5-instruct ") is fam
    assert "Qwen2.5-INSTRUCT" in cat
    assert cat.get("no-such-model") is None
    # Xinference's own mixed-case names are kept exactly.
    glm = cat.get("glm-4.6")
    assert glm is not None and glm.name == "GLM-4.6"


def test_llm_family_facts(cat: Catalog) -> None:
    fam = cat.get("qwen2.5-instruct")
    assert fam is not None
    assert fam.model_type == "llm"
    assert {"chat", "tools"} <= set(fam.abilities)
    assert fam.architectures == ("Qwen2ForCausalLM",)
    assert fam.context_length == 32768
    assert fam.dimensions is None
    assert fam.description
    assert set(fam.formats) == {"pytorch", "gptq", "awq", "gguf", "mlx"}
    assert fam.sizes_b == (0.5, 1.5, 3.0, 7.0, 14.0, 32.0, 72.0)


def test_names_filtered_by_type(cat: Catalog) -> None:
    assert "bge-large-en" in cat.names("embedding")
    assert "bge-large-en" not in cat.names("llm")
    assert "bge-reranker-large" in cat.names("rerank")
    assert cat.names() == cat.names("llm") + cat.names("embedding") + cat.names("rerank")
    with pytest.raises(ValueError, match="llm, embedding, rerank"):
        cat.names("image")


def test_embedding_and_rerank_families(cat: Catalog) -> None:
    emb = cat.get("bge-large-en")
    assert emb is not None
    assert (emb.model_type, emb.abilities, emb.dimensions, emb.context_length) == (
        "embedding",
        ("embed",),
        1024,
        512,
    )
    assert emb.specs[0].uri() == "hf://BAAI/bge-large-en"
    assert emb.specs[0].revision == "d57a0d82f0d0884de76bbce093f201364d9b720e"
    rr = cat.get("bge-reranker-large")
    assert rr is not None
    assert (rr.model_type, rr.abilities, rr.rerank_type) == ("rerank", ("rerank",), "normal")
    assert rr.specs[0].uri() == "hf://BAAI/bge-reranker-large"
    assert emb.specs[0].size_b is None  # Xinference gives none and the repository name states none
    sized = cat.candidates("Qwen3-Embedding-0.6B", size_b=0.6)
    assert {s.format for s, _ in sized} == {"pytorch", "gguf"}
    llm_rr = cat.get("bge-reranker-v2-gemma")
    assert llm_rr is not None and llm_rr.rerank_type == "LLM-based"
    # GGUF embeddings keep their file names.
    (spec, q), *_ = cat.candidates("bge-m3", format="gguf", quantization="q4_k_m")
    assert (q, spec.uri(q)) == ("Q4_K_M", "hf://lm-kit/bge-m3-gguf/bge-m3-Q4_K_M.gguf")


def test_candidates_by_size_format_quantization(cat: Catalog) -> None:
    got = cat.candidates("qwen2.5-instruct", size_b=7, format="awq")
    assert [(s.model_id, q) for s, q in got] == [("Qwen/Qwen2.5-7B-Instruct-AWQ", "Int4")]
    spec, q = got[0]
    assert spec.uri(q) == "hf://Qwen/Qwen2.5-7B-Instruct-AWQ"
    assert spec.size_b == 7.0 and spec.format == "awq" and spec.hub == "huggingface"

    gptq = cat.candidates("qwen2.5-instruct", size_b=7.0, format="gptq")
    assert [q for _, q in gptq] == ["Int4", "Int8"]
    assert gptq[1][0].uri("Int8") == "hf://Qwen/Qwen2.5-7B-Instruct-GPTQ-Int8"
    assert gptq[1][0].repo_id("int8") == "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int8"

    every = cat.candidates("qwen2.5-instruct")
    fam = cat.get("qwen2.5-instruct")
    assert fam is not None
    assert len(every) == sum(len(s.quantizations) for s in fam.specs)
    # Catalog order: specs in family order, quantizations in spec order.
    assert every == [(s, q) for s in fam.specs for q in s.quantizations]

    by_quant = cat.candidates("qwen2.5-instruct", quantization="Int4")
    assert {s.format for s, _ in by_quant} == {"gptq", "awq"}
    assert cat.candidates("qwen2.5-instruct", size_b=7, format="awq", quantization="Int8") == []
    assert cat.candidates("qwen2.5-instruct", size_b=8) == []
    assert cat.candidates("no-such-model") == []


@pytest.mark.parametrize("size", [0.5, 1.5, "1_5", "1.5", "0_5", 7, 7.0, "7", "7B"])
def test_sizes_compare_numerically(cat: Catalog, size: float | str) -> None:
    got = cat.candidates("qwen2.5-instruct", size_b=size, format="pytorch")  # type: ignore[arg-type]
    assert len(got) == 1
    assert got[0][0].size_b == parse_size(size)


def test_ggufv2_is_gguf(cat: Catalog) -> None:
    gguf = cat.candidates("qwen2.5-instruct", size_b=1.5, format="gguf")
    assert gguf
    assert cat.candidates("qwen2.5-instruct", size_b=1.5, format="ggufv2") == gguf
    assert cat.candidates("qwen2.5-instruct", size_b=1.5, format="GGUFv2") == gguf
    assert all(s.format == "gguf" for f in cat for s in f.specs if "gguf" in s.format)


def test_quantization_case_insensitive(cat: Catalog) -> None:
    # Qwen writes q4_k_m, bartowski Q4_K_M: either spelling finds both, returned in the spec's own.
    lower = cat.candidates("qwen2.5-instruct", size_b=7, format="gguf", quantization="Q4_K_M")
    assert [q for _, q in lower] == ["q4_k_m"]
    upper = cat.candidates("codestral-v0.1", format="ggufv2", quantization="q4_k_m")
    assert [q for _, q in upper] == ["Q4_K_M"]
    assert (
        upper[0][0].uri("q4_k_m") == "hf://bartowski/Codestral-22B-v0.1-GGUF/Codestral-22B-v0.1-Q4_K_M.gguf"
    )


def test_uri_pytorch_awq_gguf_mlx(cat: Catalog) -> None:
    ((pt, q),) = cat.candidates("qwen2.5-instruct", size_b=0.5, format="pytorch")
    assert (q, pt.uri(q), pt.uri()) == (
        "none",
        "hf://Qwen/Qwen2.5-0.5B-Instruct",
        "hf://Qwen/Qwen2.5-0.5B-Instruct",
    )
    assert pt.files(q) == ()
    ((gg, q),) = cat.candidates("qwen2.5-instruct", size_b=0.5, format="gguf", quantization="q8_0")
    assert gg.uri(q) == "hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q8_0.gguf"
    assert gg.files(q) == ("qwen2.5-0.5b-instruct-q8_0.gguf",)
    mlx = cat.candidates("qwen2.5-instruct", size_b=0.5, format="mlx", quantization="4bit")
    assert [s.uri(q) for s, q in mlx] == ["hf://mlx-community/Qwen2.5-0.5B-Instruct-4bit"]


def test_uri_needs_a_quantization_it_has(cat: Catalog) -> None:
    (gg, _), *_ = cat.candidates("qwen2.5-instruct", size_b=0.5, format="gguf")
    with pytest.raises(ValueError, match="choose a quantization: q2_k"):
        gg.uri()
    with pytest.raises(ValueError, match="no quantization 'Q9_X'"):
        gg.uri("Q9_X")
    (gptq, _), *_ = cat.candidates("qwen2.5-instruct", size_b=0.5, format="gptq")
    with pytest.raises(ValueError, match="Int4, Int8"):
        gptq.uri()


def test_split_gguf_lists_every_part(cat: Catalog) -> None:
    ((spec, q),) = cat.candidates("llama-2", size_b=70, format="gguf", quantization="q8_0")
    assert spec.files(q) == ("llama-2-70b.Q8_0.gguf-split-a", "llama-2-70b.Q8_0.gguf-split-b")
    assert spec.uri(q) == "hf://TheBloke/Llama-2-70B-GGUF/llama-2-70b.Q8_0.gguf-split-a"
    # Single-file quantizations of the same spec use the plain template.
    assert spec.files("Q4_K_M") == ("llama-2-70b.Q4_K_M.gguf",)


def test_split_only_gguf_quantizations_are_listed(cat: Catalog) -> None:
    # Xinference lists only a placeholder "none" here; the real quantizations are the split parts.
    fam = cat.get("MiniMax-M2.7")
    assert fam is not None
    (spec,) = [s for s in fam.specs if s.format == "gguf"]
    assert "none" not in spec.quantizations and "Q8_0" in spec.quantizations
    files = spec.files("Q8_0")
    assert len(files) == 6 and files[0] == "MiniMax-M2.7-Q8_0-00001-of-00006.gguf"


def test_modelscope_only_spec(cat: Catalog) -> None:
    # This family lists the Hugging Face and the ModelScope repository as separate specs: both are
    # kept, Hugging Face first as in Xinference.
    got = cat.candidates("qwen2.5-coder-instruct", size_b=7, format="awq")
    assert [(s.hub, s.uri(q)) for s, q in got] == [
        ("huggingface", "hf://Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"),
        ("modelscope", "modelscope://qwen/Qwen2.5-Coder-7B-Instruct-AWQ"),
    ]


def test_every_spec_and_quantization_has_a_uri(cat: Catalog) -> None:
    for fam in cat:
        assert fam.specs, fam.name
        for spec in fam.specs:
            assert spec.format in FORMATS, (fam.name, spec)
            assert spec.hub in ("huggingface", "modelscope")
            assert spec.quantizations
            for q in spec.quantizations:
                uri = spec.uri(q)
                assert uri.startswith(("hf://", "modelscope://")), uri
                assert "{" not in uri and "}" not in uri, uri
                if spec.format == "gguf":
                    assert spec.files(q) and uri.endswith(spec.files(q)[0])
            if fam.model_type == "llm":
                assert spec.size_b is not None and spec.size_b > 0, (fam.name, spec)


def test_activated_size_for_moe(cat: Catalog) -> None:
    specs = [s for s, _ in cat.candidates("qwen3", size_b=30, format="pytorch")]
    assert specs and all(s.activated_size_b == 3.0 for s in specs)


@pytest.mark.parametrize(
    ("typo", "expected"),
    [
        ("qwen2.5-instuct", "qwen2.5-instruct"),
        ("QWEN2.5-INSTRUCT", "qwen2.5-instruct"),
        ("qwen2_5_instruct", "qwen2.5-instruct"),
        ("llama3", "llama-3"),
        ("deepsek-r1", "deepseek-r1"),
        ("bge-reranker-lage", "bge-reranker-large"),
        ("bge-large-en-v15", "bge-large-en-v1.5"),
    ],
)
def test_suggest_closest_first(cat: Catalog, typo: str, expected: str) -> None:
    got = cat.suggest(typo)
    assert got[0] == expected
    assert 1 <= len(got) <= 3
    assert all(cat.get(n) is not None for n in got)


def test_suggest_within_a_type(cat: Catalog) -> None:
    assert cat.suggest("bge-large", model_type="rerank")[0] == "bge-reranker-large"
    assert all(cat.get(n).model_type == "embedding" for n in cat.suggest("bge", n=5, model_type="embedding"))
    assert cat.suggest("bge-large", model_type="nonsense") == []


def test_suggest_substring_and_limits(cat: Catalog) -> None:
    got = cat.suggest("reranker", n=5)
    assert len(got) == 5 and all("reranker" in n.lower() for n in got)
    assert cat.suggest("qwen2.5-instuct", n=1) == ["qwen2.5-instruct"]
    assert cat.suggest("") == []
    assert cat.suggest("zzzzqqqqxxxx") == []
    assert cat.suggest("qwen", n=0) == []


def test_normalize_format() -> None:
    assert normalize_format("ggufv2") == "gguf"
    assert normalize_format(" GGUF ") == "gguf"
    assert normalize_format("AWQ") == "awq"
    for fmt in FORMATS:
        assert normalize_format(fmt) == fmt
    with pytest.raises(ValueError, match=r"unknown model format 'safetensors'; valid formats: pytorch, gptq"):
        normalize_format("safetensors")


def test_parse_size() -> None:
    assert parse_size("1_5") == 1.5
    assert parse_size("0_5") == 0.5
    assert parse_size(7) == 7.0
    assert parse_size("1058_59") == 1058.59
    assert parse_size("14b") == 14.0
    for bad in ("seven", "", "nan", "inf", -1, True):
        with pytest.raises(ValueError, match="billions"):
            parse_size(bad)  # type: ignore[arg-type]


def test_engine_architectures(cat: Catalog) -> None:
    assert cat.engines() == ["sglang", "vllm"]
    assert "Qwen2ForCausalLM" in cat.engine_architectures("vllm", "chat")
    assert "Qwen2_5_VLForConditionalGeneration" in cat.engine_architectures("vllm", "multimodal")
    assert "Qwen2_5_VLForConditionalGeneration" not in cat.engine_architectures("vllm", "chat")
    union = cat.engine_architectures("vllm")
    assert union == (
        cat.engine_architectures("vllm", "generate")
        | cat.engine_architectures("vllm", "chat")
        | cat.engine_architectures("vllm", "multimodal")
    )
    assert cat.engine_architectures("sglang") < union | cat.engine_architectures("sglang")
    assert "OPTForCausalLM" in cat.engine_architectures("sglang", "generate")
    assert isinstance(union, frozenset)
    with pytest.raises(ValueError, match="lists exist for sglang, vllm"):
        cat.engine_architectures("llama.cpp")
    with pytest.raises(ValueError, match="generate, chat, multimodal"):
        cat.engine_architectures("vllm", "embed")


def test_catalog_from_own_families_rejects_duplicates() -> None:
    spec = CatalogSpec("pytorch", 1.0, None, ("none",), "huggingface", "o/m", None, None)
    fam = CatalogFamily("m", "llm", ("chat",), ("LlamaForCausalLM",), 2048, None, (spec,))
    small = Catalog([fam], {})
    assert small.candidates("M") == [(spec, "none")]
    assert small.engines() == []
    with pytest.raises(ValueError, match="duplicate catalog name"):
        Catalog([fam, CatalogFamily("M", "llm", (), (), None, None, (spec,))], {})


_text = st.text(max_size=40)
_size = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**6))


@settings(max_examples=300, deadline=None)
@given(
    name=st.one_of(_text, st.sampled_from(["qwen2.5-instruct", "bge-m3", "llama-2", "QWEN3"])),
    size=_size,
    fmt=st.one_of(st.none(), _text, st.sampled_from(["ggufv2", "gguf", "awq", "pytorch", "mlx"])),
    quant=st.one_of(st.none(), _text, st.sampled_from(["q4_k_m", "Int4", "none", "4bit"])),
)
def test_candidates_never_raise(name: str, size: float | None, fmt: str | None, quant: str | None) -> None:
    cat = load_catalog()
    got = cat.candidates(name, size_b=size, format=fmt, quantization=quant)
    for spec, q in got:
        assert q in spec.quantizations
        if size is not None:
            assert spec.size_b is not None and math.isclose(spec.size_b, float(size))
        if fmt is not None:
            assert spec.format == normalize_format(fmt)


@settings(max_examples=300, deadline=None)
@given(name=_text, n=st.integers(-2, 10))
def test_suggest_never_raises(name: str, n: int) -> None:
    got = load_catalog().suggest(name, n)
    assert len(got) <= max(n, 0)
    assert len(set(got)) == len(got)
