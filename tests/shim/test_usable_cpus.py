"""How the transformers backend counts the CPUs it may use: affinity capped by the cgroup quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from turnout.shim.backends.transformers import torch_threads, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_caps_affinity(tmp_path: Path) -> None:
    _write(tmp_path / "kubepods" / "pod1" / "cpu.max", "150000 100000\n")
    assert usable_cpus(tmp_path, "0::/kubepods/pod1\n") == min(AFFINITY, 2)  # 1.5 CPUs round up


def test_cgroup_v2_in_a_container_namespace_reads_the_root(tmp_path: Path) -> None:
    _write(tmp_path / "cpu.max", "100000 100000\n")  # the container sees its own cgroup as /
    assert usable_cpus(tmp_path, "0::/\n") == 1


def test_cgroup_v2_unlimited_is_the_affinity(tmp_path: Path) -> None:
    _write(tmp_path / "cpu.max", "max 100000\n")
    assert usable_cpus(tmp_path, "0::/\n") == AFFINITY


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    _write(tmp_path / "cpu" / "cpu.cfs_quota_us", "50000\n")
    _write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000\n")
    cgroup = "4:memory:/x\n3:cpu,cpuacct:/\n0::/\n"
    assert usable_cpus(tmp_path, cgroup) == 1
    _write(tmp_path / "cpu" / "cpu.cfs_quota_us", "-1\n")
    assert usable_cpus(tmp_path, cgroup) == AFFINITY


def test_no_cgroup_files_is_the_affinity(tmp_path: Path) -> None:
    assert usable_cpus(tmp_path, "") == AFFINITY
    assert usable_cpus(tmp_path / "missing", "0::/a/b\n") == AFFINITY


def test_this_machine_is_at_most_its_affinity() -> None:
    assert 1 <= usable_cpus() <= AFFINITY


def test_engine_arg_wins() -> None:
    assert torch_threads({"threads": 7}) == 7
    assert torch_threads({}) == max(1, usable_cpus() - 1)  # a CPU left to the event loop
    with pytest.raises(ValueError):
        torch_threads({"threads": 0})
