"""`turnout demo`: serve the bundled tiny model locally, ask it one question, print the answer, stop."""

from __future__ import annotations

import argparse
import sys
from importlib import resources

import yaml

from turnout import local
from turnout.api import ModelDeployment
from turnout.cli.up import pick, start
from turnout.freeport import free_port

DEMO_FILE = "tiny-chat.yaml"  # the copy of examples/tiny-chat.yaml shipped in the package


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filename", help="ModelDeployment to serve (default: the bundled tiny model)")
    p.add_argument("--prompt", default="Say hello to turnout.", help="what to ask (default: %(default)r)")
    p.add_argument("--max-tokens", type=int, default=24, help="most tokens in the answer (default 24)")
    p.add_argument("--timeout", type=float, default=600,
                   help="seconds to wait for the engine to be ready (default 600)")


def bundled() -> ModelDeployment:
    text = resources.files("turnout").joinpath("examples", DEMO_FILE).read_text()
    return ModelDeployment.model_validate(yaml.safe_load(text))


def run(args: argparse.Namespace) -> int:
    from turnout.cli import CLIError

    try:
        from openai import OpenAI
    except ImportError:
        raise CLIError("the demo talks to the server with the openai client: pip install openai") from None
    md = pick(args.filename, None) if args.filename else bundled()
    try:
        server = start(md, "127.0.0.1", free_port(), args.timeout)
    except local.LocalError as exc:
        raise CLIError(str(exc)) from None
    try:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model=md.served_name,
            messages=[{"role": "user", "content": args.prompt}],
            max_tokens=args.max_tokens,
            temperature=0,
        )
        print(f"\n> {args.prompt}\n{reply.choices[0].message.content}\n")
        usage = reply.usage
        print(
            f"({md.served_name} via {server.url}/v1: {usage.prompt_tokens} prompt + "
            f"{usage.completion_tokens} completion tokens; the tiny model learnt only a page of built-in text)",
            file=sys.stderr,
        )
    finally:
        code = server.stop()
    print(f"stopped ({'SIGTERM' if code == -15 else f'exit {code}'})", file=sys.stderr)
    return 0
