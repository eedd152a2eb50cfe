"""tinymodel (a test-asset builder) is loaded only when a builtin:// model is built, never at a program's start."""

from __future__ import annotations

import os
import subprocess
import sys

import turnout

ENTRY_MODULES = ("turnout.controller.run", "turnout.gateway.server", "turnout.agent.cli", "turnout.shim.app",
                 "turnout.cli")


def test_no_program_loads_tinymodel_when_it_starts() -> None:
    code = ("import importlib, sys\n"
            f"for name in {ENTRY_MODULES!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.startswith('turnout.tinymodel')))\n")
    root = os.path.dirname(os.path.dirname(turnout.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          check=True)
    assert done.stdout.strip() == "[]"
