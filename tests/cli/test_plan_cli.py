"""`turnout plan`: output shape, exit status, errors as one line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from turnout.cli import main
from turnout.sources import BUILTIN_MODELS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MIXED = str(EXAMPLES / "nodes" / "mixed.yaml")


def plan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["plan", *args])
    out, err = capsys.readouterr()
    return code, out, err


def plan_flags(path: Path) -> list[str]:
    """The --nodes (and --lws) an example's ``# plan:`` line names; the mixed cluster otherwise."""
    for line in path.read_text().splitlines():
        if line.startswith("# plan:"):
            words = line.split()
            flags = ["--nodes", str(ROOT / words[words.index("--nodes") + 1])]
            return flags + (["--lws"] if "--lws" in words else [])
    return ["--nodes", MIXED]


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_plans_on_its_cluster(capsys: pytest.CaptureFixture[str], example: str) -> None:
    code, out, _ = plan(capsys, "-f", str(EXAMPLES / example), *plan_flags(EXAMPLES / example), "-o", "json")
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
    assert ("LeaderWorkerSet" if result["nodesPerReplica"] > 1 else "Deployment") in kinds and "Service" in kinds


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
    assert "qwen-awq: vllm on 1 × NVIDIA-A10G" in out and "llama.cpp:" in out
    assert "  placement: 1 pod × 1 nvidia.com/gpu (tensor parallel 1) on one of: gpu-a10g-1, gpu-h100-1" in out


def test_summary_shows_tensor_parallel_and_per_node_placement(capsys: pytest.CaptureFixture[str]) -> None:
    example = EXAMPLES / "qwen-72b-h100.yaml"
    code, out, _ = plan(capsys, "-f", str(example), *plan_flags(example), "-o", "summary")
    assert code == 0
    assert out.startswith("qwen-72b: vllm on 4 × NVIDIA-H100-80GB-HBM3 — hf://Qwen/Qwen2.5-72B-Instruct")
    assert "  why: vllm on 4 × NVIDIA-H100-80GB-HBM3: needs ~162 GiB of 4 × 71.7 GiB" in out
    assert "  placement: 1 pod × 4 nvidia.com/gpu (tensor parallel 4) on one of: hgx-h100-1" in out
    example = EXAMPLES / "llama-405b-lws.yaml"
    code, out, _ = plan(capsys, "-f", str(example), *plan_flags(example), "-o", "summary")
    assert code == 0
    assert (
        "  placement: LeaderWorkerSet, 2 pods per replica (1 leader + 1 worker), each 8 nvidia.com/gpu on its own "
        "node (tensor parallel 8 × pipeline parallel 2); nodes: hgx-h100-1, hgx-h100-2" in out
    )


def test_the_rejection_without_leaderworkerset_is_the_documented_one(capsys: pytest.CaptureFixture[str]) -> None:
    """examples/llama-405b-without-lws.txt is what `turnout plan` prints without --lws (kept in step here)."""
    example = EXAMPLES / "llama-405b-lws.yaml"
    flags = [f for f in plan_flags(example) if f != "--lws"]
    code, out, _ = plan(capsys, "-f", str(example), *flags, "-o", "summary")
    assert code == 1
    assert out == (EXAMPLES / "llama-405b-without-lws.txt").read_text()
    assert "install LeaderWorkerSet (leaderworkerset.x-k8s.io/v1) to serve it" in out


def test_api_versions_file_turns_leaderworkerset_on(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    example = EXAMPLES / "llama-405b-lws.yaml"
    nodes = [f for f in plan_flags(example) if f != "--lws"]
    served = tmp_path / "api-versions.txt"
    served.write_text("apps/v1\nleaderworkerset.x-k8s.io/v1\nv1\n")
    code, out, _ = plan(capsys, "-f", str(example), *nodes, "--api-versions", str(served), "-o", "json")
    assert code == 0
    (result,) = json.loads(out)
    assert (result["nodesPerReplica"], result["tensorParallelSize"], result["pipelineParallelSize"]) == (2, 8, 2)
    served.write_text("apps/v1\nv1\n")
    code, _, _ = plan(capsys, "-f", str(example), *nodes, "--api-versions", str(served), "-o", "json")
    assert code == 1
    code, _, err = plan(capsys, "-f", str(example), *nodes, "--api-versions", str(tmp_path / "none"))
    assert code == 2 and "cannot read api versions" in err


def test_console_script_runs_without_traceback(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("{not yaml")
    done = subprocess.run([sys.executable, "-m", "turnout", "plan", "-f", str(f)], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr


def _deployment(tmp_path: Path, model: str) -> Path:
    f = tmp_path / "md.yaml"
    f.write_text("apiVersion: turnout.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: x}\n"
                 f"spec: {{model: {model}}}\n")
    return f


def test_a_reason_every_engine_gives_is_printed_once(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = _deployment(tmp_path, "{name: no-such-model}")
    code, out, _ = plan(capsys, "-f", str(f), "--nodes", MIXED, "-o", "summary")
    assert code == 1
    assert out == ("x: REJECTED — unknown model 'no-such-model': not in the catalog (or give model.uri) "
                   "(all engines: vllm, sglang, llama.cpp, transformers, mlx)\n")
    code, out, _ = plan(capsys, "-f", str(f), "--nodes", MIXED, "-o", "json")
    assert [r["engine"] for r in json.loads(out)[0]["rejected"]] == ["vllm", "sglang", "llama.cpp", "transformers",
                                                                      "mlx"], "the API keeps one entry per engine"


def test_engines_with_the_same_reason_share_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = plan(capsys, "-f", str(EXAMPLES / "qwen-gguf-cpu.yaml"), "--nodes",
                        str(EXAMPLES / "nodes" / "cpu-only.yaml"), "-o", "summary")
    assert code == 0
    reasons = [line for line in out.splitlines()[3:] if not line.startswith("  note:")]
    assert len(reasons) == len({line.split(": ", 1)[1] for line in reasons}), "no reason printed twice"


@pytest.mark.parametrize("uri, hint", [("builtin://tiny-llamma", "did you mean builtin://tiny-llama? "),
                                       ("builtin://qwen", "")])
def test_an_unknown_builtin_model_is_found_at_plan_time(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                         uri: str, hint: str) -> None:
    f = _deployment(tmp_path, f"{{uri: '{uri}', size: 0.01}}")
    code, out, err = plan(capsys, "-f", str(f), "--nodes", MIXED)
    assert code == 2 and out == ""
    assert err == (f"turnout plan: error: {f}: document 1 (x): spec.model.uri: {uri}: no such built-in model; "
                   f"{hint}the built-in models are {', '.join(f'builtin://{n}' for n in BUILTIN_MODELS)}\n")


def test_every_option_of_every_command_has_help() -> None:
    import argparse

    from turnout.cli import build_parser

    def walk(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from walk(sub)
            elif not isinstance(action, argparse._HelpAction):
                yield parser.prog, action

    missing = [f"{prog} {'/'.join(a.option_strings) or a.dest}" for prog, a in walk(build_parser()) if not a.help]
    assert missing == []
    defaults = [f"{prog} {'/'.join(a.option_strings)}" for prog, a in walk(build_parser())
                if a.option_strings and a.default not in (None, False, [], argparse.SUPPRESS)
                and "default" not in a.help]
    assert defaults == [], "an option with a default says it in its help"


def test_agent_usage_shows_the_subcommand_as_optional() -> None:
    from turnout.cli import build_parser

    usage = build_parser("agent")._subparsers._group_actions[0].choices["agent"].format_usage()
    assert usage.splitlines() == [
        "usage: turnout agent --node-name NAME [--bootstrap-kubeconfig FILE] [options]   (run the agent)",
        "       turnout agent join-token --node-name NAME [-o FILE] [options]   (admin)",
    ]
