"""`turnout up` and `turnout demo` as a user runs them: real processes, real requests, clean exits."""

from __future__ import annotations

import os
import re
import shutil
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
@pytest.mark.parametrize(("example", "served"), [("tiny-chat-gguf.yaml", "tiny-chat-gguf"),
                                                 ("tiny-chat.yaml", "tiny-chat")])
def test_up_serves_answers_and_stops_cleanly_on_sigterm(tiny_model, free_port: int, example: str,
                                                        served: str) -> None:
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
            model=served, messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0
        )
        assert reply.choices[0].message.content and reply.model == served
        children = _children(proc.pid)
        assert children, "the shim runs as a child process"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"Serving {served} at" in err and "curl" in err and "chat.completions.create" in err
    assert err.splitlines()[-2:] == ["turnout up: stopping …", "turnout up: stopped"]
    deadline = time.monotonic() + 10
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [c for c in children if _alive(c)], "no orphan processes after SIGTERM"


FOUR = {  # the offline examples that serve together: file -> (served name, model type)
    "tiny-chat.yaml": ("tiny-chat", "llm"),
    "tiny-chat-gguf.yaml": ("tiny-chat-gguf", "llm"),
    "embedding-minilm.yaml": ("minilm", "embedding"),
    "rerank-tiny.yaml": ("tiny-rerank", "rerank"),
}


def _snippets(err: str) -> dict[str, tuple[str, str]]:
    """The (shell, Python) snippets `up` printed for each served model, dedented, by the ``# NAME`` line above."""
    out: dict[str, tuple[str, str]] = {}
    for block in re.split(r"^  # ", err, flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        shell, _, python = body.partition("\n\n")
        python = python.split("\n\n", 1)[0]
        out[name.strip()] = tuple(  # type: ignore[assignment]
            "\n".join(line[2:] for line in part.splitlines() if line.startswith("  ")) for part in (shell, python))
    return out


@pytest.mark.slow
def test_up_serves_the_four_offline_examples_behind_one_port(tiny_model, free_port: int, tmp_path: Path) -> None:
    """Two chat models (transformers, llama.cpp), an embedding and a rerank model, from examples/ as shipped."""
    files = [arg for example in FOUR for arg in ("-f", str(ROOT / "examples" / example))]
    log = tmp_path / "up.err"
    with log.open("w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "turnout", "up", *files, "--port", str(free_port)],
            stdout=subprocess.DEVNULL, stderr=err_file, text=True,
            env={**os.environ, "TURNOUT_FORCE_CPU": "1", "HF_HUB_OFFLINE": "1"},
        )
    url = f"http://127.0.0.1:{free_port}"
    served = {name: kind for name, kind in FOUR.values()}
    try:
        _wait_health(url, proc)
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert sorted(m.id for m in client.models.list().data) == sorted(served)
        for name in ("tiny-chat", "tiny-chat-gguf"):
            reply = client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "hello"}], max_tokens=4, temperature=0)
            assert reply.model == name and reply.choices[0].message.content
            stream = client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "hello"}], max_tokens=4, stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        vectors = client.embeddings.create(model="minilm", input=["A cat sat on the wall.", "Boats in the harbour."])
        assert vectors.model == "minilm" and [len(d.embedding) for d in vectors.data] == [384, 384]
        docs = ["Rivers begin as small streams high in the mountains.", "To make a cup of tea, boil water.",
                "Boats rocked in the harbour."]
        rerank = httpx.post(f"{url}/v1/rerank", json={"model": "tiny-rerank", "query": "where do rivers begin",
                                                      "documents": docs}, timeout=60)
        assert rerank.status_code == 200, rerank.text
        results = rerank.json()["results"]
        assert sorted(r["index"] for r in results) == [0, 1, 2]
        assert all(isinstance(r["relevance_score"], float) for r in results)
        missing = httpx.post(f"{url}/v1/chat/completions", json={"model": "nope", "messages": []})
        assert missing.status_code == 404
        children = _children(proc.pid)
        assert len(children) >= 4, "one shim per model"
        # Every snippet `up` printed (before the gateway listened) runs as pasted, on its model's endpoint.
        snippets = _snippets(log.read_text())
        assert set(snippets) == set(served)
        for name, (shell, python) in snippets.items():
            ran = subprocess.run([sys.executable, "-c", python], capture_output=True, text=True, timeout=120)
            assert ran.returncode == 0 and ran.stdout, f"{name}: {python}\n{ran.stderr}"
            if shutil.which("curl"):
                ran = subprocess.run(["bash", "-c", shell.replace("curl ", "curl -sf ", 1)],
                                     capture_output=True, text=True, timeout=120)
                assert ran.returncode == 0 and '"model"' in ran.stdout, f"{name}: {shell}\n{ran.stderr}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
    err = log.read_text()
    assert proc.returncode == 0, err
    assert f"Serving {', '.join(FOUR[e][0] for e in FOUR)} at" in err
    assert err.splitlines()[-2:] == ["turnout up: stopping …", "turnout up: stopped"]
    deadline = time.monotonic() + 10
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [c for c in children if _alive(c)], "no orphan processes after SIGTERM"


@pytest.mark.parametrize(("model_type", "path", "keys", "call"), [
    ("llm", "/v1/chat/completions", {"model", "messages", "max_tokens"}, "client.chat.completions.create("),
    ("embedding", "/v1/embeddings", {"model", "input"}, "client.embeddings.create("),
    ("rerank", "/v1/rerank", {"model", "query", "documents"}, "httpx.post("),
])
def test_snippet_matches_the_model_type(model_type: str, path: str, keys: set[str], call: str) -> None:
    import json

    text = local.snippets("http://127.0.0.1:8000", "m", model_type)
    shell, _, python = text.partition("\n\n")
    assert shell.startswith(f"  curl http://127.0.0.1:8000{path} ")
    body = json.loads(shell.split("-d '", 1)[1].rsplit("'", 1)[0])
    assert set(body) == keys and body["model"] == "m"
    code = "\n".join(line[2:] for line in python.splitlines())
    compile(code, "snippet", "exec")  # pastes as valid Python
    assert call in code and ('model="m"' in code or '"model": "m"' in code)
    other = {"llm": "embeddings", "embedding": "chat", "rerank": "openai"}[model_type]
    assert other not in text


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
