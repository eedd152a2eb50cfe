"""``python -m turnout.tinymodel [--cache-dir D] [--json]``: build (or reuse) and print the paths."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from turnout.tinymodel.builder import build_tiny_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m turnout.tinymodel",
        description="Build the tiny test model (HF safetensors + GGUF) into the cache and print its paths.",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache root (default: $TURNOUT_CACHE or ~/.cache/turnout)",
    )
    parser.add_argument("--json", action="store_true", help="print everything as one JSON object")
    args = parser.parse_args(argv)
    model = build_tiny_model(args.cache_dir)
    if args.json:
        print(json.dumps(model.to_json(), indent=2))
    else:
        print(f"served_name: {model.served_name}")
        print(f"version:     {model.version}")
        print(f"hf_dir:      {model.hf_dir}")
        print(f"gguf_path:   {model.gguf_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
