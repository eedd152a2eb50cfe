"""Local mode: resolve a ModelDeployment for this machine and run the shim as a local process.

The same resolver the operator uses picks the engine from this machine's
hardware (``turnout.localhw``); the model is located or fetched
(``turnout.sources``); the shim runs in its own process group and is
stopped with SIGTERM (then SIGKILL after a grace period), so no engine
process outlives ``turnout up``.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from turnout.api import ModelDeployment
from turnout.config import OperatorConfig
from turnout.hardware import parse_nodes
from turnout.localhw import Probes, detect_node
from turnout.procgroup import terminate
from turnout.progress import Step
from turnout.render import shim_args
from turnout.resolver import Plan, Rejection, explain_rejection, resolve
from turnout.shimargs import LoraModule, ShimArgs

#: engine -> (extra that installs it, modules it needs)
ENGINE_EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "transformers": ("transformers", ("torch", "transformers")),
    "llama.cpp": ("llamacpp", ("xllamacpp",)),
    "vllm": ("vllm", ("vllm",)),
    "sglang": ("sglang", ("sglang",)),
    "mlx": ("mlx", ("mlx_lm",)),
}
#: proxy engines may live in their own virtual environment: this variable names its python
ENGINE_PYTHON_ENV = {
    "vllm": "TURNOUT_VLLM_PYTHON",
    "sglang": "TURNOUT_SGLANG_PYTHON",
    "mlx": "TURNOUT_MLX_PYTHON",
}
STOP_GRACE_SECONDS = 30.0


class LocalError(RuntimeError):
    """A step of local mode failed; the message names the step and the cause."""


def plan_locally(md: ModelDeployment, config: OperatorConfig | None = None, probes: Probes | None = None) -> Plan:
    """Resolve a deployment for this machine; LocalError with every engine's reason when none fits."""
    result = resolve(md.spec, parse_nodes([detect_node(probes)]), config)
    if isinstance(result, Rejection):
        head, *rest = explain_rejection(result.message, ((r.engine, r.reason) for r in result.rejected))
        raise LocalError("\n  ".join([f"resolving {md.metadata.name}: {head}", *rest]))
    return result


def check_engine_installed(engine: str, model_type: str) -> None:
    """Fail early, naming the pip command, when the chosen engine is not installed."""
    extra, modules = ENGINE_EXTRAS[engine]
    if engine == "transformers" and model_type != "llm":
        modules = (*modules, "sentence_transformers")
    python = os.environ.get(ENGINE_PYTHON_ENV.get(engine, ""), "") or sys.executable
    if python == sys.executable:
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
    else:
        probe = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))"
        done = subprocess.run([python, "-c", probe, *modules], capture_output=True, check=False)
        missing = list(modules) if done.returncode else []
    if missing:
        raise LocalError(
            f'checking the {engine} engine: {", ".join(missing)} not installed; run: pip install "turnout[{extra}]"'
        )


def shim_command(plan: Plan, md: ModelDeployment, host: str, port: int, model_path: str | None = None,
                 adapter_paths: Mapping[str, str] | None = None) -> ShimArgs:
    """The shim's arguments for a local run (same contract as in a pod, with local host/port); the adapters of
    ``md`` are loaded at start, from ``adapter_paths`` (:func:`fetch_adapters`) where given."""
    args = shim_args(plan, md.spec, md.served_name, OperatorConfig())
    if md.spec.api_key_secret_ref:
        raise LocalError("apiKeySecretRef names a Kubernetes Secret; locally, run the shim with --api-key-file")
    # One process serves every adapter of the file, so it holds as many as there are.
    paths = adapter_paths or {}
    lora = tuple(LoraModule(a.name, paths.get(a.name, a.uri)) for a in md.spec.adapters or [])
    return replace(args, host=host, port=port, model=model_path or args.model, lora_modules=lora,
                   max_loras=max(args.max_loras, len(lora)))


def fetch(plan: Plan, out: TextIO) -> str:
    """Locate, build or download the model, showing progress; returns a local path."""
    return _fetch(plan.model.uri, "model", out, plan.model.quantization)


def fetch_adapters(md: ModelDeployment, out: TextIO) -> dict[str, str]:
    """Each LoRA adapter of ``md`` located, built or downloaded like the model: name -> local path."""
    return {a.name: _fetch(a.uri, f"adapter {a.name}", out, folder=True) for a in md.spec.adapters or []}


def _fetch(uri: str, what: str, out: TextIO, quantization: str | None = None, *, folder: bool = False) -> str:
    """``uri`` as a local path (``folder``: a ``file://`` one too, else as it is: the shim reads it)."""
    from turnout.sources import SourceError, builtin_is_built, locate, parse

    source = parse(uri)
    if source.scheme == "file" and not folder:
        return uri
    try:
        if source.scheme in ("pvc", "file") or (source.scheme == "builtin" and builtin_is_built(source.location)):
            path = str(locate(uri))
            print(f"• {what} {uri}: {path}", file=out, flush=True)
            return path
        building = source.scheme == "builtin"
        with Step(out, f"{'building' if building else 'downloading'} {what} {uri}",
                  unit="" if building else "B") as step:
            path = str(locate(uri, quantization=quantization, progress=step))
            if not building and step.total is None:
                step.note = "already in the cache"
            return path
    except SourceError as exc:
        raise LocalError(f"{'building' if source.scheme == 'builtin' else 'fetching'} the {what}: {exc}") from None


@dataclass
class LocalServer:
    """A running shim process."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    model_type: str = "llm"
    adapters: dict[str, str] = field(default_factory=dict)  # LoRA adapters it serves: name -> source URI

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> int:
        """SIGTERM the shim's process group, then SIGKILL after ``grace`` seconds; returns its exit status."""
        return terminate(self.process, grace)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_shim(args: ShimArgs, log_path: Path, env: dict[str, str] | None = None) -> LocalServer:
    """Start ``turnout-shim`` in its own process group, logging to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "turnout.shim", *args.to_argv()[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    return LocalServer(process, f"http://{host}:{args.port}", log_path, args.model_type,
                       {m.name: m.path for m in args.lora_modules})


def wait_ready(server: LocalServer, timeout: float, tick: Callable[[str], None] = lambda _: None) -> None:
    """Poll ``/health`` until 200; LocalError when the shim exits, reports a dead engine, or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise LocalError(f"starting the engine: the shim exited ({server.process.returncode}):\n{server.tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            if '"dead"' in body or "failed to start" in body:
                raise LocalError(f"starting the engine: {_message(body)}\n{server.tail()}") from None
            tick(_message(body) or "loading")
        except (urllib.error.URLError, OSError):
            tick("starting")
        time.sleep(0.2)
    raise LocalError(f"starting the engine: not ready after {timeout:.0f}s (log: {server.log_path})")


def _message(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200]
    error = data.get("error") if isinstance(data.get("error"), dict) else {}
    return str(error.get("message") or data.get("status") or "")


def snippets(url: str, served: str, model_type: str = "llm") -> str:
    """Ready-to-paste calls for a running endpoint, by model type: chat (llm), embeddings, rerank."""
    if model_type == "embedding":
        body = {"model": served, "input": ["Hello!", "How are you?"]}
        path = "embeddings"
        python = (
            "  from openai import OpenAI\n"
            f'  client = OpenAI(base_url="{url}/v1", api_key="unused")\n'
            f'  reply = client.embeddings.create(model="{served}", input=["Hello!", "How are you?"])\n'
            "  print(len(reply.data), len(reply.data[0].embedding))\n"
        )
    elif model_type == "rerank":
        body = {"model": served, "query": "Where do rivers begin?",
                "documents": ["Rivers begin as small streams.", "To make tea, boil water."]}
        path = "rerank"
        python = (  # the openai client has no rerank call: plain HTTP
            "  import httpx\n"
            f'  reply = httpx.post("{url}/v1/rerank", json={json.dumps(body)})\n'
            '  print([(r["index"], r["relevance_score"]) for r in reply.json()["results"]])\n'
        )
    else:
        body = {"model": served, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}
        path = "chat/completions"
        python = (
            "  from openai import OpenAI\n"
            f'  client = OpenAI(base_url="{url}/v1", api_key="unused")\n'
            f'  reply = client.chat.completions.create(model="{served}", '
            'messages=[{"role": "user", "content": "Hello!"}], max_tokens=32)\n'
            "  print(reply.choices[0].message.content)\n"
        )
    curl = f"  curl {url}/v1/{path} -H 'Content-Type: application/json' \\\n    -d '{json.dumps(body)}'\n"
    return f"{curl}\n{python}"


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of ``host`` at ``port``, bound as uvicorn binds them.

    Called before any engine starts, so a port in use is one LocalError that names the fix
    rather than a bind error after minutes of loading.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise LocalError(f"--host {host}: {exc.strerror}; pass an address of this machine, "
                         "e.g. --host 127.0.0.1") from None
    sockets: list[socket.socket] = []
    unavailable: OSError | None = None
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
                sock.listen()
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise LocalError(_listen_error(host, port, exc)) from None
                unavailable = exc  # a family not enabled here (asyncio skips it too, bpo-30945)
                sockets.pop().close()
        if not sockets and unavailable is not None:
            raise LocalError(_listen_error(host, port, unavailable))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def check_port(host: str, port: int) -> None:
    """LocalError naming the fix when ``host:port`` cannot be listened on now."""
    for sock in listen(host, port):
        sock.close()


def _listen_error(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is in use on {host}; pass --port N or stop what listens there"
    if exc.errno == errno.EACCES and port < 1024:
        return f"port {port} needs privileges on this machine; pass --port N with N of 1024 or more"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine; pass --host 127.0.0.1 (or 0.0.0.0 for every address)"
    return f"cannot listen on {host}:{port}: {exc.strerror}"


def serve_behind_gateway(
    servers: dict[str, LocalServer], sockets: list[socket.socket], out: TextIO = sys.stderr
) -> int:
    """Serve every running shim (by served name) behind one gateway on ``sockets`` until a signal or a shim exits.

    The gateway is the cluster's (:mod:`turnout.gateway`) with static endpoints: requests go by ``model``,
    ``/v1/models`` lists them all. ``sockets`` come from :func:`listen`, bound before the engines
    started. Returns 0 after a signal, 1 when a shim exited on its own.
    """
    import asyncio

    import uvicorn

    from turnout.gateway.app import GatewayApp
    from turnout.gateway.server import config, run_async
    from turnout.gateway.source import StaticModel, StaticSource

    models = []
    for served, server in servers.items():
        address = server.url.removeprefix("http://")
        shim_host, _, shim_port = address.rpartition(":")
        models.append(StaticModel(served, shim_host, int(shim_port), adapters=dict(server.adapters)))
    died: list[str] = []

    async def main() -> int:
        host, port = sockets[0].getsockname()[:2]
        gateway = uvicorn.Server(config(GatewayApp(StaticSource(models)), host, port, log_level="warning"))

        async def watch() -> None:
            while not gateway.should_exit:
                for served, server in servers.items():
                    if not server.alive():
                        died.append(served)
                        gateway.should_exit = True
                await asyncio.sleep(0.5)

        watcher = asyncio.ensure_future(watch())
        try:
            await gateway.serve(sockets=sockets)
        finally:
            watcher.cancel()
        return 0 if gateway.started else 1

    code = run_async(main)
    for served in died:
        server = servers[served]
        print(f"turnout up: the shim of {served} exited ({server.process.returncode}):\n{server.tail()}", file=out)
    return 1 if died else code
