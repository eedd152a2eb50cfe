"""The per-container supervisor the host agent starts (standard library only; run by file path).

``python runner.py --exit-file F --marker M -- ARGV...`` leads a new process
group (the agent starts it with ``start_new_session``), runs ARGV in that group
with stdout/stderr inherited (the agent points them at the container's log),
forwards SIGTERM/SIGINT/SIGHUP to it, and when it ends writes
``{"exitCode", "finishedAt", "error"}`` to the exit file (atomically) and exits
with the same code (128+N for a signal N, as kubelet reports).

Why a supervisor: the agent may restart while containers keep running; it then
adopts them (by pid and the ``--marker`` on this process's command line) and
can no longer ``wait()`` for them. The exit file keeps the exit code.
``--marker`` is not used here; it only makes the process findable with ``ps``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write(path: str, record: dict[str, object]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exit-file", required=True)
    parser.add_argument("--marker", required=True)
    parser.add_argument("--cwd", default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        _write(args.exit_file, {"exitCode": 127, "finishedAt": _now(), "error": "no command"})
        return 127
    try:
        child = subprocess.Popen(command, cwd=args.cwd)
    except OSError as exc:
        print(f"turnout-agent: cannot start {command[0]!r}: {exc}", file=sys.stderr, flush=True)
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        _write(args.exit_file, {"exitCode": code, "finishedAt": _now(), "error": str(exc)})
        return code

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for safety
            continue
    if code < 0:
        code = 128 - code
    _write(args.exit_file, {"exitCode": code, "finishedAt": _now(), "error": None})
    return code


if __name__ == "__main__":
    sys.exit(main())
