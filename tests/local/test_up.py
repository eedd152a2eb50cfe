"""`turnout up` and `turnout demo` as a user runs them: real processes, real requests, clean exits."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from turnout import local
from turnout.api import ModelDeployment
from turnout.cli.demo import bundled
from turnout.localhw import Probes

ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_health(url: str, proc: subprocess.Popen[str], timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("up never became ready")


@pytest.mark.slow
@pytest.mark.parametrize("example", ["tiny-chat-gguf.yaml", "tiny-chat.yaml"])
def test_up_serves_answers_and_stops_cleanly_on_sigterm(tiny_model, free_port: int, example: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "turnout", "up", "-f", str(ROOT / "examples" / example), "--port", str(free_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TURNOUT_FORCE_CPU": "1"},
    )
    url = f"http://127.0.0.1:{free_port}"
    try:
        _wait_health(url, proc)
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0
        )
        assert reply.choices[0].message.content and reply.model == "tiny-chat"
        children = _children(proc.pid)
        assert children, "the shim runs as a child process"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Serving tiny-chat at" in err and "curl" in err and "from openai import OpenAI" in err
    assert err.splitlines()[-2:] == ["turnout up: stopping …", "turnout up: stopped"]
    deadline = time.monotonic() + 10
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [c for c in children if _alive(c)], "no orphan processes after SIGTERM"


@pytest.mark.slow
def test_up_serves_several_models_behind_one_port(tiny_model, free_port: int, tmp_path: Path) -> None:
    """llama.cpp and transformers models, each on a loopback port of its own, through the gateway on one port."""
    import yaml

    files = []
    for example, served in (("tiny-chat-gguf.yaml", "tiny-gguf"), ("tiny-chat.yaml", "tiny-hf")):
        doc = yaml.safe_load((ROOT / "examples" / example).read_text())
        doc["spec"]["servedModelName"] = served
        files += ["-f", str(tmp_path / example)]
        (tmp_path / example).write_text(yaml.safe_dump(doc))
    proc = subprocess.Popen(
        [sys.executable, "-m", "turnout", "up", *files, "--port", str(free_port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TURNOUT_FORCE_CPU": "1"},
    )
    url = f"http://127.0.0.1:{free_port}"
    try:
        _wait_health(url, proc)
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert sorted(m.id for m in client.models.list().data) == ["tiny-gguf", "tiny-hf"]
        for served in ("tiny-gguf", "tiny-hf"):
            reply = client.chat.completions.create(
                model=served, messages=[{"role": "user", "content": "hello"}], max_tokens=4, temperature=0)
            assert reply.model == served and reply.choices[0].message.content
            stream = client.chat.completions.create(
                model=served, messages=[{"role": "user", "content": "hello"}], max_tokens=4, stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        missing = httpx.post(f"{url}/v1/chat/completions", json={"model": "nope", "messages": []})
        assert missing.status_code == 404 and "'tiny-gguf', 'tiny-hf'" in missing.json()["error"]["message"]
        children = _children(proc.pid)
        assert len(children) >= 2, "one shim per model"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert "Serving tiny-gguf, tiny-hf at" in err
    assert err.splitlines()[-2:] == ["turnout up: stopping …", "turnout up: stopped"]
    deadline = time.monotonic() + 10
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [c for c in children if _alive(c)], "no orphan processes after SIGTERM"


def test_demo_bundles_the_example_file() -> None:
    assert bundled() == ModelDeployment.model_validate(
        __import__("yaml").safe_load((ROOT / "examples" / "tiny-chat.yaml").read_text())
    )


@pytest.mark.slow
def test_readme_first_command_runs_as_written() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert block
    first = block.group(1).splitlines()[0].split("#")[0].strip()
    assert first == "make demo"
    done = subprocess.run(first, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "> Say hello to turnout." in done.stdout
    answer = done.stdout.split("> Say hello to turnout.", 1)[1].strip()
    assert answer, "the model answered something"
    assert "stopped" in done.stderr


def test_missing_engine_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURNOUT_SGLANG_PYTHON", raising=False)
    with pytest.raises(local.LocalError, match=r'pip install "turnout\[sglang\]"'):
        local.check_engine_installed("sglang", "llm")
    local.check_engine_installed("llama.cpp", "llm")  # installed here: no error


def test_rejection_names_every_engine() -> None:
    md = ModelDeployment.model_validate(
        {
            "apiVersion": "turnout.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "x"},
            "spec": {"model": {"name": "qwen2.5-instruct", "size": 7, "format": "awq"}},
        }
    )
    cpu = Probes(run=lambda argv: None, system=lambda: "Linux", machine=lambda: "x86_64", env={})
    with pytest.raises(local.LocalError) as err:
        local.plan_locally(md, probes=cpu)
    for engine in ("vllm", "sglang", "llama.cpp", "transformers", "mlx"):
        assert f"  {engine}: " in str(err.value)


def test_unreachable_hub_is_a_clear_fetch_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNOUT_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    md = ModelDeployment.model_validate(
        {
            "apiVersion": "turnout.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "x"},
            "spec": {"model": {"uri": "hf://example/not-cached", "size": 0.5}},
        }
    )
    plan = local.plan_locally(md, probes=Probes(run=lambda argv: None, system=lambda: "Linux", env={}))
    with pytest.raises(local.LocalError, match="fetching the model: hf://example/not-cached: the Hugging Face Hub"):
        local.fetch(plan, sys.stderr)


def test_engine_that_fails_to_start_names_the_step(tmp_path: Path, free_port: int) -> None:
    missing = tmp_path / "nope.gguf"
    missing.write_bytes(b"not a gguf file")
    md = ModelDeployment.model_validate(
        {
            "apiVersion": "turnout.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "broken"},
            "spec": {"model": {"uri": f"file://{missing}", "size": 0.01}},
        }
    )
    plan = local.plan_locally(md, probes=Probes(run=lambda argv: None, system=lambda: "Linux", env={}))
    server = local.start_shim(local.shim_command(plan, md, "127.0.0.1", free_port, str(missing)), tmp_path / "log")
    try:
        with pytest.raises(local.LocalError, match="starting the engine"):
            local.wait_ready(server, timeout=120)
    finally:
        server.stop(grace=5)
    assert not server.alive()
