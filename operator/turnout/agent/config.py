"""The host agent's configuration: who it is, what it advertises, and which local environment each image stands for."""

from __future__ import annotations

import fnmatch
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from turnout.images import REGISTRY

#: The default mapping: every turnout image runs with the environment of the agent's own interpreter.
DEFAULT_ENV_MAP: tuple[tuple[str, str], ...] = ((f"{REGISTRY}/*", sys.prefix),)


class ConfigError(ValueError):
    """The agent's configuration is wrong; the message says what to change."""


@dataclass(frozen=True)
class LocalEnv:
    """A local environment an image stands for: a folder whose ``bin/`` holds the commands."""

    pattern: str
    root: str

    @property
    def bin_dir(self) -> str:
        root = Path(self.root)
        if root.is_file():  # a path to an executable such as /opt/venvs/mlx/bin/turnout-shim
            return str(root.parent)
        return str(root / "bin") if (root / "bin").is_dir() else str(root)

    @property
    def venv(self) -> str | None:
        """The virtualenv root (for ``VIRTUAL_ENV``) when the bin folder belongs to one."""
        parent = Path(self.bin_dir).parent
        return str(parent) if (parent / "pyvenv.cfg").is_file() else None

    def resolve(self, program: str, path: str) -> str | None:
        """``program`` as an absolute path: itself if absolute, else from the bin folder, else from ``path``."""
        if os.path.isabs(program):
            return program if os.access(program, os.X_OK) else None
        candidate = os.path.join(self.bin_dir, program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
        return shutil.which(program, path=path)


@dataclass(frozen=True)
class EnvMap:
    """Image patterns (fnmatch, on the full reference) to local environments; the first match wins."""

    entries: tuple[LocalEnv, ...] = field(default_factory=lambda: tuple(LocalEnv(p, r) for p, r in DEFAULT_ENV_MAP))

    def lookup(self, image: str) -> LocalEnv | None:
        for entry in self.entries:
            if fnmatch.fnmatchcase(image, entry.pattern):
                return entry
        return None

    @classmethod
    def from_mapping(cls, data: Any, *, source: str = "env map", defaults: bool = True) -> EnvMap:
        """From ``{"images": {pattern: path}}`` (or the bare ``{pattern: path}``), then the defaults."""
        if isinstance(data, Mapping) and "images" in data:
            data = data["images"]
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping of image patterns to local environment paths")
        entries = []
        for pattern, root in data.items():
            if not isinstance(pattern, str) or not isinstance(root, str) or not root:
                raise ConfigError(f"{source}: {pattern!r}: the value must be a path (a virtualenv, a bin folder "
                                  "or an executable)")
            expanded = os.path.expanduser(root)
            if not os.path.exists(expanded):
                raise ConfigError(f"{source}: {pattern!r}: {expanded} does not exist")
            entries.append(LocalEnv(pattern, expanded))
        if defaults:
            entries += [LocalEnv(p, r) for p, r in DEFAULT_ENV_MAP]
        return cls(tuple(entries))

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None) -> EnvMap:
        if path is None:
            return cls()
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the env map {path}: {exc.strerror}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_mapping(data, source=str(path))


@dataclass(frozen=True)
class AgentConfig:
    """Everything :func:`turnout.agent.run_agent` needs besides the API connection."""

    node_name: str
    accelerator: str = "auto"  # metal | cpu | auto
    address: str | None = None  # InternalIP and every pod's IP; detected when None
    env_map: EnvMap = field(default_factory=EnvMap)
    state_dir: str = field(default_factory=lambda: os.path.expanduser("~/.turnout/agent"))
    max_pods: int = 16
    lease_seconds: int = 40  # Lease duration
    heartbeat_seconds: float = 10.0  # Lease renewal period
    status_seconds: float = 60.0  # Node status refresh when nothing changed
    backoff_initial: float = 10.0  # CrashLoopBackOff, doubling per crash
    backoff_max: float = 300.0
    backoff_reset: float = 600.0  # a container that ran this long restarts without back-off
    stop_pods_on_exit: bool = False  # leave them running and adopt them on the next start (kubelet's way)
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    passthrough_env: Sequence[str] = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "SHELL", "LOGNAME")

    def __post_init__(self) -> None:
        if self.accelerator not in ("metal", "cpu", "auto"):
            raise ConfigError(f"--accelerator must be metal, cpu or auto, not {self.accelerator!r}")
        if not self.node_name or len(self.node_name) > 253 or self.node_name != self.node_name.lower():
            raise ConfigError(f"--node-name {self.node_name!r} is not a valid node name (lower-case DNS subdomain)")
