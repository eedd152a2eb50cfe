"""`turnout plan`: output shape, exit status, errors as one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from turnout.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MIXED = str(EXAMPLES / "nodes" / "mixed.yaml")


def plan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["plan", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_plans_on_the_mixed_cluster(capsys: pytest.CaptureFixture[str], example: str) -> None:
    code, out, _ = plan(capsys, "-f", str(EXAMPLES / example), "--nodes", MIXED, "-o", "json")
    assert code == 0
    (result,) = json.loads(out)
    for key in ("name", "engine", "accelerator", "image", "tensorParallelSize", "candidates", "rejected", "manifests"):
        assert key in result
    assert set(result["model"]) >= {"uri", "format", "quantization", "architecture"}
    assert {r["engine"] for r in result["rejected"]} | {result["engine"]} == {
        "vllm",
        "sglang",
        "llama.cpp",
        "transformers",
        "mlx",
    }
    kinds = [m["kind"] for m in result["manifests"]]
    assert "Deployment" in kinds and "Service" in kinds


def test_expected_engines_per_example(capsys: pytest.CaptureFixture[str]) -> None:
    expected = {
        "qwen-awq-nvidia.yaml": ("vllm", "nvidia"),
        "qwen-gguf-cpu.yaml": ("llama.cpp", "cpu"),
        "qwen-mlx-metal.yaml": ("mlx", "metal"),
        "embedding-bge.yaml": ("transformers", "nvidia"),
        "rerank-bge.yaml": ("transformers", "cpu"),
        "vllm-multi-gpu.yaml": ("vllm", "nvidia"),
    }
    for name, want in expected.items():
        _, out, _ = plan(capsys, "-f", str(EXAMPLES / name), "--nodes", MIXED, "-o", "json")
        got = json.loads(out)[0]
        assert (got["engine"], got["accelerator"]) == want, name
    _, out, _ = plan(capsys, "-f", str(EXAMPLES / "vllm-multi-gpu.yaml"), "--nodes", MIXED, "-o", "json")
    assert json.loads(out)[0]["tensorParallelSize"] == 4


def test_several_documents_in_order_and_exit_1_on_rejection(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "two.yaml"
    f.write_text(
        "apiVersion: turnout.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: ok}\n"
        "spec: {model: {name: qwen2.5-instruct, size: 0.5, format: gguf}}\n---\n"
        "apiVersion: turnout.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: nope}\n"
        "spec: {model: {name: qwen2.5-instruct, size: 7, format: awq}, accelerator: {type: cpu}}\n"
    )
    code, out, _ = plan(capsys, "-f", str(f), "--nodes", str(EXAMPLES / "nodes" / "cpu-only.yaml"), "-o", "json")
    assert code == 1
    ok, nope = json.loads(out)
    assert (ok["name"], ok["engine"]) == ("ok", "llama.cpp")
    assert nope["name"] == "nope" and nope["engine"] is None and nope["manifests"] == []
    assert any("CUDA" in r["reason"] for r in nope["rejected"])


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not yaml", "not valid YAML"),
        ("kind: Pod\nmetadata: {name: p}\n", "is a Pod, not a ModelDeployment"),
        (
            "apiVersion: turnout.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: x}\nspec: {model: {}}\n",
            "model.name or model.uri is required",
        ),
        (
            "apiVersion: turnout.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: x}\n"
            "spec: {model: {name: a, format: gguf}, engine: vllm}\n",
            "served by llama.cpp",
        ),
        ("", "holds no ModelDeployment"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str, fragment: str
) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(content)
    code, out, err = plan(capsys, "-f", str(f), "--nodes", MIXED)
    assert code == 2 and out == ""
    assert fragment in err and len(err.strip().splitlines()) == 1


def test_missing_file_and_bad_nodes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = plan(capsys, "-f", str(tmp_path / "nope.yaml"))
    assert code == 2 and "cannot read" in err
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text("kind: Pod\n")
    code, _, err = plan(capsys, "-f", str(EXAMPLES / "qwen-gguf-cpu.yaml"), "--nodes", str(nodes))
    assert code == 2 and "expected Node objects" in err


def test_without_nodes_plans_for_this_machine(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TURNOUT_FORCE_CPU", "1")
    code, out, _ = plan(capsys, "-f", str(EXAMPLES / "qwen-gguf-cpu.yaml"), "-o", "json")
    assert code == 0 and json.loads(out)[0]["accelerator"] == "cpu"


def test_yaml_and_summary_outputs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = plan(capsys, "-f", str(EXAMPLES / "qwen-awq-nvidia.yaml"), "--nodes", MIXED)
    assert code == 0 and "engine: vllm" in out and "kind: Deployment" in out
    code, out, _ = plan(capsys, "-f", str(EXAMPLES / "qwen-awq-nvidia.yaml"), "--nodes", MIXED, "-o", "summary")
    assert "qwen-awq: vllm on nvidia" in out and "llama.cpp:" in out


def test_console_script_runs_without_traceback(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("{not yaml")
    done = subprocess.run([sys.executable, "-m", "turnout", "plan", "-f", str(f)], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
