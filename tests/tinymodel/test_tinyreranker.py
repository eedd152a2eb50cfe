"""The tiny cross-encoder: built in a moment into the cache, loaded by sentence-transformers, deterministic."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from turnout import local
from turnout.api import ModelDeployment
from turnout.localhw import Probes
from turnout.tinymodel import build_tiny_reranker, is_reranker_built, reranker_version

DOCS = [
    "Rivers begin as small streams high in the mountains.",
    "To make a cup of tea, first boil fresh water.",
    "The harbour town woke early.",
]


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_reranker(tmp_path_factory.mktemp("cache"))


def test_layout_and_cache(reranker_dir: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (reranker_dir / name).is_file(), name
    config = json.loads((reranker_dir / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and len(config["id2label"]) == 1
    cache = reranker_dir.parents[2]
    assert reranker_dir.parent.name == reranker_version() and is_reranker_built(cache)
    mtime = (reranker_dir / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_reranker(cache) == reranker_dir
    assert (reranker_dir / "model.safetensors").stat().st_mtime_ns == mtime, "a second call reuses the cache"


def test_cross_encoder_scores_pairs(reranker_dir: Path, tmp_path: Path) -> None:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(reranker_dir), device="cpu")
    scores = model.predict([("where do rivers begin", d) for d in DOCS])
    assert len(scores) == len(DOCS) and len({round(float(s), 4) for s in scores}) == len(DOCS), scores
    rebuilt = build_tiny_reranker(tmp_path)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (rebuilt / name).read_bytes() == (reranker_dir / name).read_bytes(), f"{name} is deterministic"
    tok = model.tokenizer("where do rivers begin", DOCS[0])
    assert set(tok["token_type_ids"]) == {0, 1}, "query and document are told apart"


def test_up_shows_the_build_as_a_build_then_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNOUT_CACHE", str(tmp_path))
    md = ModelDeployment.model_validate({
        "apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "r"},
        "spec": {"model": {"uri": "builtin://tiny-reranker", "type": "rerank", "size": 0.001}},
    })
    plan = local.plan_locally(md, probes=Probes(run=lambda argv: None, system=lambda: "Linux", env={}))
    out = io.StringIO()  # not a terminal: plain lines
    path = local.fetch(plan, out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "• building model builtin://tiny-reranker …"
    assert lines[1:-1] == ["  tokenizer", "  weights"]
    assert re.fullmatch(r"  done in \d+\.\ds", lines[-1])
    again = io.StringIO()
    assert local.fetch(plan, again) == path
    assert again.getvalue() == f"• model builtin://tiny-reranker: {path}\n"
