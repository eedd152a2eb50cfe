"""Detect this machine's hardware and describe it as a Kubernetes Node.

``turnout plan`` (without ``--nodes``) and ``turnout up`` resolve for the
local machine through the same resolver the operator uses, so the machine is
turned into the same Node shape the resolver reads. Probes are injectable so
each hardware class is testable without the hardware.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from turnout.hardware import (
    ACCELERATOR_LABEL,
    MEMORY_LABEL,
    NVIDIA_CC_MAJOR,
    NVIDIA_CC_MINOR,
    NVIDIA_MEMORY,
    NVIDIA_PRODUCT,
    NVIDIA_RESOURCE,
)

Runner = Callable[[list[str]], str | None]


def run_command(argv: list[str]) -> str | None:
    """stdout of a command, or None when it is missing or fails."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


@dataclass
class Probes:
    """Where detection looks; tests replace these."""

    run: Runner = run_command
    system: Callable[[], str] = platform.system
    machine: Callable[[], str] = platform.machine
    cpu_count: Callable[[], int] = lambda: os.cpu_count() or 1
    memory_bytes: Callable[[], int] = _memory_bytes
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))


def _nvidia(probes: Probes) -> dict[str, Any] | None:
    out = probes.run(["nvidia-smi", "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"])
    if not out or not out.strip():
        return None
    rows = [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line.strip()]
    name, mem, cc = (rows[0] + ["", "", ""])[:3]
    labels = {NVIDIA_PRODUCT: "NVIDIA-" + name.replace("NVIDIA ", "").replace(" ", "-")}
    if mem.isdigit():
        labels[NVIDIA_MEMORY] = mem
    if "." in cc:
        labels[NVIDIA_CC_MAJOR], labels[NVIDIA_CC_MINOR] = cc.split(".", 1)
    return {"labels": labels, "resources": {NVIDIA_RESOURCE: str(len(rows))}}


def _ascend(probes: Probes) -> dict[str, Any] | None:
    out = probes.run(["npu-smi", "info", "-l"])
    if not out:
        return None
    count = sum(1 for line in out.splitlines() if "NPU ID" in line) or 1
    model = "Ascend910B" if "910B" in out else ("Ascend310P" if "310P" in out else "Ascend910")
    return {"labels": {"accelerator": f"huawei-{model}"}, "resources": {f"huawei.com/{model}": str(count)}}


def detect_node(probes: Probes | None = None) -> dict[str, Any]:
    """This machine as a Node object (only the fields the resolver reads)."""
    probes = probes or Probes()
    memory = probes.memory_bytes()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(probes.machine(), probes.machine())
    labels = {"kubernetes.io/os": probes.system().lower(), "kubernetes.io/arch": arch}
    allocatable = {"cpu": str(probes.cpu_count()), "memory": str(memory)}
    found = None if probes.env.get("TURNOUT_FORCE_CPU") else (_nvidia(probes) or _ascend(probes))
    if found:
        labels.update(found["labels"])
        allocatable.update(found["resources"])
    elif probes.system() == "Darwin" and arch == "arm64" and not probes.env.get("TURNOUT_FORCE_CPU"):
        labels[ACCELERATOR_LABEL] = "metal"
        labels[MEMORY_LABEL] = str(memory)
        allocatable["turnout.dev/metal"] = "1"
    return {
        "metadata": {"name": platform.node() or "localhost", "labels": labels},
        "status": {"allocatable": allocatable},
    }
