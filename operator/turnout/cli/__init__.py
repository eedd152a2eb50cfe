"""The `turnout` command: one entry point, one module per subcommand."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import import_module

#: subcommand -> module defining ``add_arguments(parser)`` and ``run(args) -> int`` (relative to turnout.cli)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "plan": ("plan", "resolve ModelDeployments and print plans and manifests (no cluster needed)"),
    "operator": ("controller", "run the operator against the cluster in KUBECONFIG or the pod's service account"),
    "agent": ("turnout.agent.cli", "join this host to a cluster as a node that runs model pods natively"),
    "gateway": ("gateway", "one OpenAI endpoint routing to every ModelDeployment's pods (scale from zero, API keys)"),
    "up": ("up", "serve ModelDeployments on this machine (local mode; several behind one port)"),
    "demo": ("demo", "serve the bundled tiny model, ask it one question, print the answer, stop"),
    "crd": ("crd", "print or write the generated ModelDeployment CRD"),
}


class CLIError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that subcommand's options are loaded (the others import kopf, torch…)."""
    parser = argparse.ArgumentParser(prog="turnout", description="Serve LLMs on any accelerator a cluster has.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            mod = import_module(module if "." in module else f"turnout.cli.{module}")
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(chosen if chosen in SUBCOMMANDS else None).parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args._run
    try:
        return run(args)
    except CLIError as exc:
        print(f"turnout {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
