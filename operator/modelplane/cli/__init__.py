"""The `modelplane` command: one entry point, one module per subcommand."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import import_module

#: subcommand -> module under modelplane.cli defining ``add_arguments(parser)`` and ``run(args) -> int``
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "plan": ("plan", "resolve ModelDeployments and print plans and manifests (no cluster needed)"),
    "up": ("up", "serve a ModelDeployment on this machine (local mode)"),
    "demo": ("demo", "serve the bundled tiny model, ask it one question, print the answer, stop"),
    "crd": ("crd", "print or write the generated ModelDeployment CRD"),
}


class CLIError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelplane", description="Serve LLMs on any accelerator a cluster has.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        mod = import_module(f"modelplane.cli.{module}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args._run
    try:
        return run(args)
    except CLIError as exc:
        print(f"modelplane {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
