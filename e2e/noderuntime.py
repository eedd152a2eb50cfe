"""The real node's container runtime, seen from this machine: a container's process, killed or counted.

For the fault and soak tiers on a node whose containerd runs here (the same runtime :mod:`nodeimages` loads
images into): ``ctr`` finds a pod container's task, kills it as a crash would, and gives its host pid so the
tests read its open file descriptors from ``/proc``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from nodeimages import CONTAINERD_SOCKET

CTR = ["ctr", "--address", CONTAINERD_SOCKET, "-n", "k8s.io"]


def problem() -> str | None:
    """Why this machine cannot reach the node's containers, or None."""
    if shutil.which("ctr") is None or not os.path.exists(CONTAINERD_SOCKET):
        return f"the node's containerd is not on this machine (no ctr with {CONTAINERD_SOCKET})"
    if not os.access(CONTAINERD_SOCKET, os.R_OK | os.W_OK):
        return f"no access to {CONTAINERD_SOCKET} (the fault tier runs as a user that may talk to containerd)"
    return None


def container_id(pod: dict[str, Any], container: str | None = None) -> str:
    """The runtime id of the pod's (first, or named) running container."""
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if container in (None, status["name"]) and status.get("containerID"):
            return status["containerID"].split("://", 1)[1]
    raise AssertionError(f"pod {pod['metadata']['name']} has no running container {container or ''}")


def pid(cid: str) -> int:
    """The host pid of a container's task."""
    out = subprocess.run([*CTR, "tasks", "ls"], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines()[1:]:
        task, task_pid, _status = line.split()
        if task == cid:
            return int(task_pid)
    raise AssertionError(f"no task for container {cid}")


def kill(cid: str, signal: str = "SIGKILL") -> None:
    """Send ``signal`` to every process of the container, as the kernel's OOM killer or a crash would end it."""
    subprocess.run([*CTR, "tasks", "kill", "--all", "--signal", signal, cid], check=True, capture_output=True)


def open_fds(task_pid: int) -> int:
    """How many file descriptors the process has open."""
    return len(os.listdir(f"/proc/{task_pid}/fd"))
