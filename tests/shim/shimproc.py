"""Helpers to run ``turnout-shim`` as a real process in front of a real engine process.

``start_shim_factory`` (fixture in ``conftest.py``) launches ``python -m turnout.shim`` with the command
line ``ShimArgs.to_argv()`` renders, waits until ``/health`` answers 200 (or
returns at once with ``wait=False``) and stops it at the end of the test or
module. With ``engine="sglang"`` the engine is the SGLang stand-in in
``standin/`` (put on ``PYTHONPATH``), so the whole proxy path runs: shim ->
child process -> HTTP.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

from turnout.shimargs import ShimArgs

STANDIN = Path(__file__).parent / "standin"
START_DEADLINE_S = 120.0


@dataclass
class RunningShim:
    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    api_key: str | None
    args: ShimArgs
    env: dict[str, str] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def http(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers(), timeout=60.0, **kw)

    def openai(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.base_url + "/v1", api_key=self.api_key or "unused", max_retries=0, timeout=60.0, **kw
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def engine_port(self) -> int:
        """The port the shim gave its engine, read from the shim's log."""
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            m = re.search(r"starting \S+: .*?--port (\d+)", self.log())
            if m:
                return int(m.group(1))
            time.sleep(0.05)
        raise AssertionError("the shim never logged its engine command:\n" + self.log())

    def engine_stats(self) -> dict[str, Any]:
        """The SGLang stand-in's counters (streams, disconnects, last request body, pid)."""
        r = httpx.get(f"http://127.0.0.1:{self.engine_port()}/standin/stats", timeout=10.0)
        r.raise_for_status()
        return r.json()

    def metrics(self) -> str:
        return httpx.get(self.base_url + "/metrics", timeout=10.0).text

    def wait_health(self, status: int = 200, deadline_s: float = START_DEADLINE_S) -> httpx.Response:
        deadline = time.monotonic() + deadline_s
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the shim exited with {self.proc.returncode}:\n{self.log()}")
            try:
                last = httpx.get(self.base_url + "/health", timeout=5.0)
                if last.status_code == status:
                    return last
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.05)
        raise AssertionError(f"/health never answered {status} (last: {last!r}):\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text output (0 when absent)."""
    # an empty label value is no label (Prometheus' rule): adapter="" is the base model's requests
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if v)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        got = ",".join(sorted(p for p in rest.rstrip("}").split(",") if p and not p.endswith('=""')))
        if got == want:
            return float(value)
    return 0.0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(predicate: Callable[[], bool], what: str, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting: {what}")


def sse_events(raw: bytes) -> list[bytes]:
    """The data payloads of an SSE body, in order."""
    return [e[len(b"data: ") :] for e in raw.split(b"\n\n") if e.startswith(b"data: ")]


def sse_json(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(e) for e in sse_events(raw) if e != b"[DONE]"]


def start_shim_process(
    tmp: Path,
    port: int,
    *,
    engine: str = "sglang",
    model: str = "/models/standin-7b",
    served: str = "standin-chat",
    model_type: str = "llm",
    api_key: str | None = None,
    max_queue: int = 64,
    engine_args: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    device: str = "cpu",
    **more: Any,
) -> RunningShim:
    """Launch ``python -m turnout.shim`` with the argv ``ShimArgs.to_argv()`` renders (``more``: other fields)."""
    key_file = None
    if api_key:
        key_file = tmp / "api-key"
        key_file.write_text(api_key + "\n")
    args = ShimArgs(
        engine=engine,
        model=model,
        served_model_name=served,
        model_type=model_type,
        device=device,
        host="127.0.0.1",
        port=port,
        max_queue=max_queue,
        api_key_file=str(key_file) if key_file else None,
        engine_args=engine_args or {},
        **more,
    )
    full_env = dict(os.environ)
    full_env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(STANDIN), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "TURNOUT_SGLANG_PYTHON": sys.executable,
            "STANDIN_LOAD_SECONDS": "0.3",
            "TURNOUT_SHUTDOWN_GRACE_SECONDS": "5",
            "TURNOUT_ACCESS_LOG": "0",
        }
    )
    full_env.update(env or {})
    log_path = tmp / "shim.log"
    argv = args.to_argv()
    assert argv[0] == "turnout-shim"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "turnout.shim", *argv[1:]], env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    return RunningShim(
        proc=proc, base_url=f"http://127.0.0.1:{port}", log_path=log_path, api_key=api_key, args=args, env=full_env
    )


REPO = Path(__file__).resolve().parents[2]


def engine_python_or_skip(env_var: str, venv: str) -> str:
    """The engine venv's interpreter (``$env_var`` or ``<repo>/<venv>``); skip the test when absent.

    With ``TURNOUT_REQUIRE_ENGINES=1`` (CI) a missing venv fails instead of skipping.
    """
    import pytest

    path = Path(os.environ.get(env_var) or REPO / venv / "bin" / "python")
    if not path.exists():
        msg = f"{path} not found: create it with scripts/engine-venvs.sh (or set {env_var})"
        if os.environ.get("TURNOUT_REQUIRE_ENGINES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return str(path)


def ask_greedy(client: openai.OpenAI, model: str, prompt: str, max_tokens: int) -> str:
    """The greedy (temperature 0) chat answer of ``model`` to ``prompt``; asserts the reply names ``model``."""
    out = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                         max_tokens=max_tokens, temperature=0)
    assert out.model == model
    return out.choices[0].message.content or ""


@contextmanager
def serve(backend: Any, args: ShimArgs, port: int) -> Iterator[str]:
    """Run ``create_app(backend, args)`` on uvicorn in a thread until the block exits."""
    import uvicorn

    from turnout.shim.app import create_app

    server = uvicorn.Server(
        uvicorn.Config(create_app(backend, args), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert thread.is_alive(), "uvicorn exited during start-up"
            assert time.monotonic() < deadline, "the shim never became healthy"
            try:
                if httpx.get(base + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=60)
