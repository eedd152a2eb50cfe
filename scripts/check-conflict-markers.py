#!/usr/bin/env python3
"""Fail when a tracked text file holds merge-conflict markers (``make verify`` runs this).

A marker is a line that starts with ``<<<<<<< ``, ``||||||| `` or ``>>>>>>> ``, or is ``=======``
alone: what git writes into a file it could not merge. ``git grep`` searches the tracked files
of the repository (binary files skipped), so build outputs and virtual environments are not read.

Usage: ``scripts/check-conflict-markers.py [REPO]`` (default: this repository). Exits 0 when
clean, 1 listing ``path:line: text`` for each marker, 2 when git cannot search ``REPO``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: git's markers at its default size (7), as an extended regular expression
MARKERS = r"^(<<<<<<< |\|\|\|\|\|\|\| |>>>>>>> |=======[[:space:]]*$)"


def find_markers(repo: Path) -> list[str]:
    """``path:line: text`` for every marker line in ``repo``'s tracked text files."""
    done = subprocess.run(
        ["git", "-C", str(repo), "grep", "--line-number", "-I", "--no-color", "-E", MARKERS],
        capture_output=True, text=True, check=False,
    )
    if done.returncode == 1:  # git grep: nothing matched
        return []
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip() or f"git grep exited {done.returncode}")
    return done.stdout.splitlines()


def main(argv: list[str]) -> int:
    repo = Path(argv[0]) if argv else ROOT
    try:
        found = find_markers(repo)
    except (OSError, RuntimeError) as exc:
        print(f"check-conflict-markers: cannot search {repo}: {exc}", file=sys.stderr)
        return 2
    if not found:
        return 0
    for line in found:
        print(line, file=sys.stderr)
    print(f"check-conflict-markers: {len(found)} merge-conflict marker line(s) in tracked files: "
          "resolve the conflict and remove them", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
