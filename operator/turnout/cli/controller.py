"""`turnout operator`: run the Kubernetes controller (kopf underneath)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from turnout.controller.options import add_arguments as controller_arguments

    controller_arguments(p)


def run(args: argparse.Namespace) -> int:
    from turnout.controller.options import options_from
    from turnout.controller.run import run_operator

    return run_operator(options_from(args))
