"""Kubeconfig files for tests: the form every cluster tool writes, read by the real loader."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from turnout.kube import Credentials, load_credentials


def kubeconfig(server: str, *, user: dict[str, Any] | None = None, cluster: dict[str, Any] | None = None,
               namespace: str | None = None, context: str = "test") -> dict[str, Any]:
    """A one-context kubeconfig document."""
    ctx: dict[str, Any] = {"cluster": "c", "user": "u"}
    if namespace:
        ctx["namespace"] = namespace
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "c", "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": "u", "user": user or {}}],
        "contexts": [{"name": context, "context": ctx}],
    }


def write_kubeconfig(path: Path, server: str, **kwargs: Any) -> Path:
    path.write_text(yaml.safe_dump(kubeconfig(server, **kwargs)))
    return path


async def credentials_for(server: str, **kwargs: Any) -> Credentials:
    """Credentials loaded, as the operator loads them, from a kubeconfig naming ``server``."""
    folder = Path(tempfile.mkdtemp(prefix="turnout-kubeconfig-"))
    return await load_credentials(str(write_kubeconfig(folder / "config", server, **kwargs)))
