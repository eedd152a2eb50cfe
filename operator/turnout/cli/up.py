"""`turnout up -f FILE [-f FILE ...]`: serve ModelDeployments on this machine until Ctrl-C or SIGTERM.

One file: its shim listens on ``--port`` itself. Several: each shim listens on
a loopback port of its own and the gateway (``turnout.gateway``, with static
endpoints) serves them all on ``--port``, routing by the request's ``model``.
``--port`` is checked (several: bound) before any engine starts. Each model
runs one local replica, whatever its ``replicas`` or ``autoscaling`` say (a
note says so).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from turnout import local
from turnout.api import ModelDeployment
from turnout.cli.plan import load_deployments
from turnout.freeport import free_port
from turnout.progress import Step

DEFAULT_PORT = 8000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filename", required=True, action="append",
                   help="YAML file with a ModelDeployment (repeat to serve several behind one port)")
    p.add_argument("--name", help="which ModelDeployment of each file (default: the first)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                   help=f"port to listen on (default {DEFAULT_PORT})")
    p.add_argument("--timeout", type=float, default=1800,
                   help="seconds to wait for each engine to be ready (default 1800)")


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1-65535."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return port


def replicas_note(md: ModelDeployment) -> str | None:
    """What ``up`` does with a deployment's replica count: it serves one replica locally."""
    spec = md.spec
    if spec.autoscaling is not None:
        wanted = f"autoscaling: {spec.autoscaling.min_replicas}-{spec.autoscaling.max_replicas} replicas"
    elif spec.replicas != 1:
        wanted = f"replicas: {spec.replicas}"
    else:
        return None
    return f"note: {md.metadata.name} has {wanted}; turnout up serves one local replica (a cluster runs the rest)"


def pick(path: str, name: str | None) -> ModelDeployment:
    from turnout.cli import CLIError

    deployments = load_deployments(path)
    if name is None:
        return deployments[0]
    for md in deployments:
        if md.metadata.name == name:
            return md
    raise CLIError(
        f"{path} has no ModelDeployment named {name!r} (it has {', '.join(m.metadata.name for m in deployments)})"
    )


def log_path(md: ModelDeployment) -> Path:
    from turnout.sources import cache_dir

    return cache_dir().parent / "logs" / f"{md.metadata.name}.log"


def start(md: ModelDeployment, host: str, port: int, timeout: float, out=sys.stderr) -> local.LocalServer:
    """Plan, check, fetch, start and wait: the steps of `up`, each named when it fails."""
    plan = local.plan_locally(md)
    print(f"turnout up: {md.metadata.name}: {plan.engine} on {plan.accelerator} — {plan.reason}", file=out)
    for note in plan.notes:
        print(f"  note: {note}", file=out)
    local.check_engine_installed(plan.engine, plan.model.model_type)
    path = local.fetch(plan, out)
    args = local.shim_command(plan, md, host, port, path, local.fetch_adapters(md, out))
    server = local.start_shim(args, log_path(md))
    try:
        with Step(out, f"starting {plan.engine} (log: {server.log_path})") as step:
            local.wait_ready(server, timeout, step.tick)
    except BaseException:
        server.stop(grace=5)
        raise
    return server


def run(args: argparse.Namespace) -> int:
    from turnout.cli import CLIError

    files = args.filename if isinstance(args.filename, list) else [args.filename]
    if len(files) > 1:
        return run_several(files, args)
    md = pick(files[0], args.name)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        local.check_port(args.host, args.port)
        _print_replicas_notes([md])
        server = start(md, args.host, args.port, args.timeout)
    except local.LocalError as exc:
        raise CLIError(str(exc)) from None
    print(f"\nServing {md.served_name} at {server.url}/v1 — Ctrl-C to stop.\n", file=sys.stderr)
    print(local.snippets(server.url, md.served_name, server.model_type), file=sys.stderr, flush=True)
    while not stop.is_set() and server.alive():
        stop.wait(0.5)
    if not server.alive():
        print(f"turnout up: the shim exited ({server.process.returncode}):\n{server.tail()}", file=sys.stderr)
        return 1
    print("turnout up: stopping …", file=sys.stderr, flush=True)
    server.stop()
    print("turnout up: stopped", file=sys.stderr, flush=True)
    return 0


def _print_replicas_notes(mds: list[ModelDeployment]) -> None:
    for md in mds:
        if note := replicas_note(md):
            print(f"turnout up: {note}", file=sys.stderr)


def run_several(files: list[str], args: argparse.Namespace) -> int:
    """Start each file's model on a loopback port, then serve them all behind the gateway on ``--port``."""
    from turnout.cli import CLIError

    mds = [pick(path, args.name) for path in files]
    served = [md.served_name for md in mds]
    twice = sorted({s for s in served if served.count(s) > 1})
    if twice:
        raise CLIError(f"several files serve the same model name {', '.join(twice)}: give each a servedModelName "
                       "of its own")
    try:
        sockets = local.listen(args.host, args.port)
    except local.LocalError as exc:
        raise CLIError(str(exc)) from None
    _print_replicas_notes(mds)
    servers: dict[str, local.LocalServer] = {}
    try:
        for md in mds:
            try:
                servers[md.served_name] = start(md, "127.0.0.1", free_port(), args.timeout)
            except local.LocalError as exc:
                raise CLIError(str(exc)) from None
        url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
        print(f"\nServing {', '.join(servers)} at {url}/v1 — Ctrl-C to stop.\n", file=sys.stderr)
        for served, server in servers.items():
            print(f"  # {served}\n{local.snippets(url, served, server.model_type)}", file=sys.stderr, flush=True)
        code = local.serve_behind_gateway(servers, sockets)
        print("turnout up: stopping …", file=sys.stderr, flush=True)
    finally:
        for sock in sockets:
            sock.close()
        for server in servers.values():
            server.stop()
    print("turnout up: stopped", file=sys.stderr, flush=True)
    return code
