"""``turnout agent`` / ``python -m turnout.agent``: join this host to a cluster as a node.

``turnout agent join-token --node-name NAME`` (run by an admin) makes the bootstrap kubeconfig a
host joins with (:mod:`turnout.agent.jointoken`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from turnout.agent.config import AgentConfig, ConfigError, EnvMap
from turnout.agent.tasks import AgentFailed
from turnout.kube.credentials import CredentialsError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from turnout.agent import jointoken

    sub = parser.add_subparsers(dest="agent_command", title="commands", metavar="COMMAND",
                                description="optional: without one, the agent runs")
    join = sub.add_parser("join-token", help="(admin) make a host's bootstrap token and bootstrap kubeconfig",
                          description=jointoken.__doc__.split("\n")[0])
    jointoken.add_arguments(join)
    join.set_defaults(_agent_run=jointoken.run)
    parser.add_argument("--node-name", help="the Node's name (lower-case DNS name); required")
    parser.add_argument("--accelerator", choices=("metal", "cpu", "auto"), default="auto",
                        help="what to advertise; auto: metal on Apple silicon, else cpu (default: auto)")
    parser.add_argument("--address", help="the node's InternalIP and its pods' IP; pods listen on it only, so "
                                          "agents with distinct addresses can share a host (default: the address "
                                          "of the route to the API server, pods listening on 0.0.0.0)")
    parser.add_argument("--kubeconfig", help="kubeconfig to use (default: $KUBECONFIG, then ~/.kube/config); with "
                                             "--bootstrap-kubeconfig: where the node kubeconfig is written "
                                             "(default: STATE-DIR/kubeconfig)")
    parser.add_argument("--bootstrap-kubeconfig", help="a bootstrap kubeconfig (turnout agent join-token): without a "
                                                       "valid node certificate yet, get one with its token (TLS "
                                                       "bootstrapping); renewed before it expires")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument("--env-map", help="YAML file mapping image patterns to local environments "
                                          "(default: turnout images -> this Python environment)")
    parser.add_argument("--state-dir", help="where pod folders, logs and process records live; one per agent "
                                            "(default: ~/.turnout/agent/NODE-NAME)")
    parser.add_argument("--max-pods", type=int, default=16, help="the node's pod capacity (default: 16)")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="an extra node label")
    parser.add_argument("--stop-pods-on-exit", action="store_true",
                        help="stop the pods' processes when the agent exits (default: leave them running and "
                             "adopt them on the next start)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    # Set after add_subparsers, which derives the subcommand's prog from the usage: argparse would list the
    # optional subcommand as a required positional.
    parser.usage = ("%(prog)s --node-name NAME [--bootstrap-kubeconfig FILE] [options]   (run the agent)\n"
                    "       %(prog)s join-token --node-name NAME [-o FILE] [options]   (admin)")


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    state_dir = args.state_dir or os.path.join(os.path.expanduser("~/.turnout/agent"), args.node_name)
    return AgentConfig(node_name=args.node_name, accelerator=args.accelerator, address=args.address,
                       env_map=EnvMap.load(args.env_map), max_pods=args.max_pods, extra_labels=labels,
                       stop_pods_on_exit=args.stop_pods_on_exit, state_dir=state_dir)


async def _serve(config: AgentConfig, kubeconfig: str | None, context: str | None,
                 bootstrap_kubeconfig: str | None = None) -> None:
    from turnout.agent.agent import run_agent
    from turnout.kube import load_credentials

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if bootstrap_kubeconfig:
        await run_agent(config, kubeconfig=kubeconfig, bootstrap_kubeconfig=bootstrap_kubeconfig, stop=stop)
        return
    credentials = await load_credentials(kubeconfig, context=context)
    await run_agent(config, credentials=credentials, stop=stop)


def run(args: argparse.Namespace) -> int:
    sub_run = getattr(args, "_agent_run", None)
    if sub_run is not None:
        return int(sub_run(args))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if not args.node_name:
            raise ConfigError("--node-name is required")
        config = config_from_args(args)
        asyncio.run(_serve(config, args.kubeconfig, args.context, args.bootstrap_kubeconfig))
    except AgentFailed as exc:  # logged with its traceback; 1 (not 2): the service manager restarts the agent
        print(f"turnout agent: failed: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, CredentialsError, FileNotFoundError, RuntimeError) as exc:
        print(f"turnout agent: error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="turnout agent", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
