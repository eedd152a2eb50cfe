"""`turnout operator`: run the Kubernetes controller (kopf underneath)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from turnout.controller.app import add_arguments as controller_arguments

    controller_arguments(p)


def run(args: argparse.Namespace) -> int:
    from turnout.controller.app import options_from, run_operator

    return run_operator(options_from(args))
