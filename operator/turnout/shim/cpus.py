"""The CPUs a shim process may use, for its engines' thread counts (torch, llama.cpp)."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path


def _cgroup_cpus(root: Path, proc_cgroup: str) -> float | None:
    """The CPU quota (in CPUs) of this process's cgroup, v2 or v1, or None when unlimited."""
    paths: list[tuple[Path, Path | None]] = []
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        rel = path.lstrip("/")
        if hierarchy == "0" and not controllers:  # v2: cpu.max holds "<quota|max> <period>"
            for base in dict.fromkeys((root / rel, root)):
                paths.append((base / "cpu.max", None))
        elif "cpu" in controllers.split(","):
            for base in dict.fromkeys((root / "cpu" / rel, root / "cpu", root / "cpu,cpuacct")):
                paths.append((base / "cpu.cfs_quota_us", base / "cpu.cfs_period_us"))
    for quota_file, period_file in paths:
        try:
            if period_file is None:
                quota, _, period = quota_file.read_text().partition(" ")
            else:
                quota, period = quota_file.read_text(), period_file.read_text()
        except OSError:
            continue
        quota, period = quota.strip(), period.strip()
        if quota in ("max", "-1") or not period:
            return None
        with contextlib.suppress(ValueError):
            if int(quota) > 0 and int(period) > 0:
                return int(quota) / int(period)
    return None


def usable_cpus(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: str | None = None) -> int:
    """CPUs this process may actually use: its affinity mask, capped by its cgroup's CPU quota
    (a pod's CPU limit), rounded up; at least 1. ``os.cpu_count()`` counts the host's CPUs."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            proc_cgroup = ""
    quota = _cgroup_cpus(root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def engine_threads() -> int:
    """An engine's compute threads by default: :func:`usable_cpus` less one (at least 1).

    The shim's event loop (HTTP, templates, the relay) needs a CPU of its own: compute threads that
    share their CPUs with it wait for each other at every barrier of every step (spinning), so one
    thread fewer goes faster, not slower, when the cores are few.
    """
    cpus = usable_cpus()
    return cpus - 1 if cpus > 1 else 1
