"""The host agent's inputs at volume: what a Pod from the API server puts in its hands — ``$(VAR)`` references,
command lines, volume mounts — fuzzed with hypothesis. The agent answers a pod it cannot run with a
:class:`~turnout.agent.podspec.ConfigProblem` (the pod's status says why), never another exception (which
would fail the agent). Examples per test: ``TURNOUT_FUZZ_EXAMPLES`` (default 200).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from figures import record
from turnout.agent.podspec import ConfigProblem, bind_shim, container_argv, expand, mounts_for, shim_args_start

EXAMPLES = int(os.environ.get("TURNOUT_FUZZ_EXAMPLES", "200"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None)
counts: dict[str, int] = {}

names = st.text(alphabet="ABCXYZ_abc09", min_size=1, max_size=6)
pieces = st.lists(st.sampled_from(["$", "$$", "$(", ")", "(", "x"]) | names.map(lambda n: f"$({n})")
                  | st.text(max_size=4), max_size=12).map("".join)
envs = st.dictionaries(names, st.text(max_size=8), max_size=4)
SHIM_ARGV = ["turnout-shim", "--engine", "llama.cpp", "--model", "/m/model.gguf", "--port", "8000"]
argvs = st.lists(st.sampled_from(["turnout-shim", "python3", "-m", "turnout.shim", "--engine", "vllm", "--model",
                                  "--port", "8000", "--host", "-c", "-X", "--served-model-name", "x", "--", "="])
                 | st.text(max_size=10), max_size=10)


def _count(name: str) -> None:
    counts[name] = counts.get(name, 0) + 1


@SETTINGS
@given(value=pieces, env=envs)
def test_expand_never_raises_and_follows_the_kubelet(value: str, env: dict[str, str]) -> None:
    _count("expand")
    out = expand(value, env)
    assert isinstance(out, str)
    if "$" not in value:
        assert out == value
    for name, v in env.items():
        assert expand(f"a$({name})b", env) == f"a{v}b"
        assert expand(f"$$({name})", env) == f"$({name})"  # $$ escapes


@SETTINGS
@given(command=st.lists(pieces, max_size=4), args=st.lists(pieces, max_size=4) | st.none(), env=envs)
def test_a_command_line_is_argv_or_a_config_problem(command: list[str], args: list[str] | None,
                                                    env: dict[str, str]) -> None:
    _count("argv")
    container: dict[str, Any] = {"name": "model", "command": command, "args": args}
    try:
        argv = container_argv(container, env)
    except ConfigProblem as exc:
        assert not command and "has no command" in str(exc)
        return
    assert len(argv) == len(command) + len(args or []) and all(isinstance(a, str) for a in argv)


@SETTINGS
@given(argv=argvs, host=st.sampled_from(["127.0.0.1", "10.0.0.7", "::1"]))
def test_binding_any_command_line_never_raises(argv: list[str], host: str) -> None:
    _count("bind_shim")
    out = bind_shim(argv, host)
    assert isinstance(out, list)
    if shim_args_start(argv) is None:
        assert out == argv


@SETTINGS
@given(extra=st.lists(st.text(max_size=8), max_size=3), host=st.sampled_from(["127.0.0.1", "10.0.0.7"]))
def test_a_shim_command_line_gets_the_host(extra: list[str], host: str) -> None:
    _count("bind_shim")
    out = bind_shim([*SHIM_ARGV, *extra], host)
    if out != [*SHIM_ARGV, *extra]:  # a command line the shim accepts is rendered again with the host
        assert out[out.index("--host") + 1] == host


@SETTINGS
@given(mounts=st.lists(st.fixed_dictionaries({"name": st.sampled_from(["a", "b", "c"]),
                                              "mountPath": st.text(max_size=12)},
                                             optional={"subPath": st.text(max_size=6)}), max_size=4),
       volumes=st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(["/var/lib/a", "/tmp/b"]), max_size=2),
       path=st.text(max_size=20))
def test_mounts_are_known_or_a_config_problem_and_rewriting_never_raises(
        mounts: list[dict[str, str]], volumes: dict[str, str], path: str) -> None:
    _count("mounts")
    try:
        made = mounts_for({"name": "model", "volumeMounts": mounts}, volumes)
    except ConfigProblem as exc:
        assert any(m["name"] not in volumes for m in mounts) and "is not defined" in str(exc)
        return
    assert isinstance(made.rewrite(path), str)


@pytest.fixture(scope="module", autouse=True)
def _record() -> Any:
    yield
    if counts:
        record("fuzz_agent_inputs", {"inputs": sum(counts.values()), "by_function": dict(sorted(counts.items())),
                                     "unexpected_exceptions": 0})


def test_the_plain_shim_command_line_is_bound() -> None:
    out = bind_shim(SHIM_ARGV, "10.0.0.7")
    assert out[out.index("--host") + 1] == "10.0.0.7"
