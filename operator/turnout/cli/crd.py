"""`turnout crd`: print the generated CRD, or write it to a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from turnout.api import crd


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", type=Path, help="write the CRD file here instead of printing it")
    p.add_argument("--check", action="store_true", help="with --output-dir: exit 1 when the file is stale")


def run(args: argparse.Namespace) -> int:
    if args.output_dir is None:
        print(crd.render_yaml(), end="")
        return 0
    return crd.main(["--output-dir", str(args.output_dir), *(["--check"] if args.check else [])])
