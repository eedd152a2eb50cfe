"""The tool-call parser flags the operator renders for vLLM and SGLang, by contract.

vLLM's side is checked against the installed engine (``.venv-vllm``): its
front-end arguments and its registered parser names, read from its source.
SGLang's names are the parsers its documentation lists (docs.sglang.io,
Tool Parser), recorded here.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from shimproc import engine_python_or_skip

from turnout.catalog import load_catalog
from turnout.shim.backends.sglang import SglangBackend
from turnout.shim.backends.vllm import VllmBackend
from turnout.shimargs import ShimArgs
from turnout.toolparsers import IN_PROCESS, SGLANG, tool_parser

#: SGLang's documented ``--tool-call-parser`` values (docs.sglang.io/advanced_features/tool_parser)
SGLANG_DOCUMENTED = {"deepseekv3", "deepseekv31", "deepseekv32", "glm", "gpt-oss", "kimi_k2", "llama3", "llama4",
                     "mistral", "pythonic", "qwen", "qwen25", "qwen3_coder", "step3"}


def _vllm_package() -> Path:
    python = engine_python_or_skip("TURNOUT_VLLM_PYTHON", ".venv-vllm")
    out = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('vllm').origin)"],
                         capture_output=True, text=True, check=True, timeout=60)
    return Path(out.stdout.strip()).parent


def _families_with_tools() -> list[tuple[str, tuple[str, ...]]]:
    return [(f.name, f.abilities) for f in load_catalog().families() if "tools" in f.abilities]


def test_every_rendered_parser_is_registered_in_vllm() -> None:
    pkg = _vllm_package()
    registry = (pkg / "tool_parsers" / "__init__.py").read_text()
    names = set(re.findall(r'^\s+"([\w.-]+)": \(', registry, re.MULTILINE))
    assert {"hermes", "llama3_json", "mistral"} <= names
    rendered = {name: tool_parser(name, abilities) for name, abilities in _families_with_tools()}
    assert rendered["qwen2.5-instruct"] == "hermes" and rendered["llama-3.1-instruct"] == "llama3_json"
    unknown = {family: p for family, p in rendered.items() if p is not None and p not in names}
    assert not unknown, f"parsers vLLM does not register: {unknown}"


def test_vllm_takes_the_flags_the_shim_passes() -> None:
    cli = (_vllm_package() / "entrypoints" / "launchers" / "cli_args.py").read_text()
    assert re.search(r"^\s+enable_auto_tool_choice: bool", cli, re.MULTILINE)
    assert re.search(r"^\s+tool_call_parser: str", cli, re.MULTILINE)


def test_sglang_names_are_documented_ones() -> None:
    assert set(SGLANG.values()) <= SGLANG_DOCUMENTED
    assert set(IN_PROCESS) <= {"hermes", "llama3_json", "mistral"}


def test_a_family_without_tools_gets_no_parser() -> None:
    assert tool_parser("qwen2.5-instruct", ("chat",)) is None
    assert tool_parser(None, ("tools",)) is None


def _args(engine: str, **kw: object) -> ShimArgs:
    return ShimArgs(engine=engine, model="/models/m", served_model_name="m", device="cuda", **kw)  # type: ignore[arg-type]


def test_vllm_command_enables_tool_choice_with_the_parser() -> None:
    cmd = VllmBackend(_args("vllm", tool_call_parser="hermes")).command(8001)
    i = cmd.index("--enable-auto-tool-choice")
    assert cmd[i + 1:i + 3] == ["--tool-call-parser", "hermes"]
    assert "--tool-call-parser" not in VllmBackend(_args("vllm")).command(8001)
    own = VllmBackend(_args("vllm", tool_call_parser="hermes", engine_args={"tool_call_parser": "pythonic"}))
    assert own.command(8001).count("--tool-call-parser") == 1 and "pythonic" in own.command(8001)
    embed = VllmBackend(_args("vllm", tool_call_parser="hermes", model_type="embedding"))
    assert "--tool-call-parser" not in embed.command(8001)
    leader = VllmBackend(_args("vllm", tool_call_parser="hermes", nnodes=2, leader_address="10.0.0.1",
                               pipeline_parallel_size=2))
    worker = VllmBackend(_args("vllm", tool_call_parser="hermes", nnodes=2, node_rank=1, leader_address="10.0.0.1",
                               pipeline_parallel_size=2))
    assert "--enable-auto-tool-choice" in leader.command(8001)
    assert "--enable-auto-tool-choice" not in worker.command(8001)


@pytest.mark.parametrize(("parser", "expected"), [("hermes", "qwen25"), ("llama3_json", "llama3"), ("ling3", None)])
def test_sglang_command_has_its_own_parser_name(parser: str, expected: str | None) -> None:
    cmd = SglangBackend(_args("sglang", tool_call_parser=parser)).command(8001)
    if expected is None:
        assert "--tool-call-parser" not in cmd
    else:
        assert cmd[cmd.index("--tool-call-parser") + 1] == expected


def test_shim_args_round_trip_the_parser() -> None:
    args = _args("vllm", tool_call_parser="hermes")
    assert ShimArgs.parse(args.to_argv()[1:]) == args
