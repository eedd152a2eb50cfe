"""The tiny model served by the engines' own OpenAI servers (vLLM CPU, mlx_lm), from their venvs.

The venvs come from ``scripts/engine-venvs.sh``; their interpreters are found through
``TURNOUT_VLLM_PYTHON`` / ``TURNOUT_MLX_PYTHON`` (the shim's variables) or at
``<repo>/.venv-vllm`` / ``<repo>/.venv-mlx``. A missing venv skips these tests, unless
``TURNOUT_REQUIRE_ENGINES=1`` (CI), where it fails them.

Both engines must give transformers' greedy answer: vLLM when run in float32 (its CPU
default is to downcast float32 weights to bfloat16), mlx_lm as it is.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from turnout.tinymodel import TinyModel

REPO = Path(__file__).resolve().parents[2]
CHAT = [
    {"role": "system", "content": "You answer in one sentence."},
    {"role": "user", "content": "Tell me about the harbour."},
]
N_NEW = 24


def _engine_python(env_var: str, venv: str) -> Path:
    path = Path(os.environ.get(env_var) or REPO / venv / "bin" / "python")
    if not path.exists():
        msg = f"{path} not found: run scripts/engine-venvs.sh (or set {env_var})"
        if os.environ.get("TURNOUT_REQUIRE_ENGINES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


class EngineServer:
    """One engine server process on localhost; its log goes to a file shown on failure."""

    def __init__(self, cmd: list[str], port: int, log: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, cwd=log.parent)

    def wait_healthy(self, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"engine exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        pytest.fail(f"engine not healthy after {limit_s:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()


@pytest.fixture(scope="module")
def hf_greedy(tiny_model: TinyModel) -> Callable[[list[dict[str, str]]], str]:
    """transformers' greedy chat answer (stops at the end token), the reference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model.hf_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.hf_dir, dtype=torch.float32).eval()

    def answer(messages: list[dict[str, str]]) -> str:
        inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**inputs, max_new_tokens=N_NEW, do_sample=False)
        return tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    return answer


@pytest.fixture(scope="module")
def vllm_server(
    tiny_model: TinyModel, free_port_factory: Callable[[], int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineServer]:
    python = _engine_python("TURNOUT_VLLM_PYTHON", ".venv-vllm")
    port = free_port_factory()
    cmd = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(tiny_model.hf_dir),
        "--served-model-name", tiny_model.served_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--dtype", "float32", "--max-model-len", "512",
        # An explicit KV cache size: by default vLLM CPU claims most of the machine's free memory
        # (21 GiB here) and, with eager mode, this also skips its warm-up pass.
        "--kv-cache-memory-bytes", str(256 * 2**20),
    ]  # fmt: skip
    server = EngineServer(cmd, port, tmp_path_factory.mktemp("vllm") / "vllm.log")
    try:
        server.wait_healthy(limit_s=300)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlx_server(
    tiny_model: TinyModel, free_port_factory: Callable[[], int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineServer]:
    python = _engine_python("TURNOUT_MLX_PYTHON", ".venv-mlx")
    port = free_port_factory()
    cmd = [str(python), "-m", "mlx_lm", "server", "--model", str(tiny_model.hf_dir),
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    server = EngineServer(cmd, port, tmp_path_factory.mktemp("mlx") / "mlx.log")
    try:
        server.wait_healthy(limit_s=120)
        yield server
    finally:
        server.stop()


def _chat(server: EngineServer, model: str, stream: bool) -> tuple[str, str | None]:
    """Send the chat with the official client; return (text, finish_reason)."""
    from openai import OpenAI

    client = OpenAI(base_url=server.base + "/v1", api_key="unused", timeout=120)
    if not stream:
        r = client.chat.completions.create(model=model, messages=CHAT, max_tokens=N_NEW, temperature=0)  # type: ignore[arg-type]
        return r.choices[0].message.content or "", r.choices[0].finish_reason
    text, finish = [], None
    for chunk in client.chat.completions.create(
        model=model,
        messages=CHAT,
        max_tokens=N_NEW,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    ):
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(text), finish


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_vllm_serves_the_tiny_model(
    vllm_server: EngineServer, tiny_model: TinyModel, hf_greedy: Callable[..., str], stream: bool
) -> None:
    models = httpx.get(vllm_server.base + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == [tiny_model.served_name]
    text, finish = _chat(vllm_server, tiny_model.served_name, stream)
    assert text == hf_greedy(CHAT)
    assert finish in ("stop", "length")


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_mlx_serves_the_tiny_model(mlx_server: EngineServer, hf_greedy: Callable[..., str], stream: bool) -> None:
    # mlx_lm has no served-name flag: "default_model" means the model given by --model
    # (any other name is looked up on the Hugging Face hub).
    text, finish = _chat(mlx_server, "default_model", stream)
    assert text == hf_greedy(CHAT)
    assert finish in ("stop", "length")


@pytest.mark.slow
def test_mlx_completions(mlx_server: EngineServer) -> None:
    r = httpx.post(
        mlx_server.base + "/v1/completions",
        json={"model": "default_model", "prompt": "The harbour", "max_tokens": 8, "temperature": 0},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["text"].strip()
    assert body["usage"]["completion_tokens"] >= 1
