"""Render the Helm chart offline with helm-python-sdk (Helm's own Go engine via libhelm_c; no
helm binary, no cluster, no network) and load the scripts that generate parts of it."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "turnout"
RELEASE = "turnout"
NAMESPACE = "turnout-system"

helm = None


def _helm() -> Any:
    global helm
    if helm is None:
        import helm_python

        helm = helm_python
    return helm


@functools.lru_cache(maxsize=1)
def chart() -> Any:
    """The chart, loaded once per test session (charts are immutable and thread-safe)."""
    return _helm().Chart.load(CHART)


@functools.lru_cache(maxsize=32)
def _render(values_json: str, name: str, namespace: str) -> tuple[tuple[str, str], ...]:
    out = chart().render(json.loads(values_json), name=name, namespace=namespace, is_install=True)
    return tuple(sorted(out.items()))


def render_files(values: dict[str, Any] | None = None, *, name: str = RELEASE,
                 namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text (cached per values)."""
    return dict(_render(json.dumps(values or {}, sort_keys=True), name, namespace))


def render(values: dict[str, Any] | None = None, *, name: str = RELEASE,
           namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Every rendered Kubernetes object (NOTES.txt excluded), in template order."""
    objs: list[dict[str, Any]] = []
    for path, text in render_files(values, name=name, namespace=namespace).items():
        if path.endswith("NOTES.txt"):
            continue
        objs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objs


def is_gateway(obj: dict[str, Any]) -> bool:
    """One of the gateway's objects (templates/gateway.yaml), told apart by its component label."""
    return ((obj.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/component") == "gateway"


def by_kind(objs: list[dict[str, Any]], kind: str, *, gateway: bool = False) -> list[dict[str, Any]]:
    """The objects of ``kind``: the operator's (and shared ones) by default, the gateway's with ``gateway``."""
    return [o for o in objs if o["kind"] == kind and is_gateway(o) == gateway]


def one(objs: list[dict[str, Any]], kind: str, *, gateway: bool = False) -> dict[str, Any]:
    found = by_kind(objs, kind, gateway=gateway)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def load_script(name: str) -> ModuleType:
    """A script from scripts/ (hyphenated file names) as a module."""
    path = ROOT / "scripts" / name
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Values that turn on every optional part and switch to namespaced mode.
EVERYTHING = {
    "watchNamespaces": ["team-a", "team-b"],
    "crds": {"enabled": False},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "podMonitor": {"enabled": True, "interval": "15s"},
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
    },
    "hostAgents": {"names": ["mac-studio-1"]},
    "verbose": True,
    "extraArgs": ["--bind-address=0.0.0.0"],
    "extraEnv": [{"name": "TZ", "value": "UTC"}],
    "image": {"digest": "sha256:" + "ab" * 32},
    "imagePullSecrets": [{"name": "regcred"}],
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
    "podAnnotations": {"example.com/team": "ml"},
    "serviceAccount": {"annotations": {"example.com/role": "turnout"}},
    "config": {
        "images": {"vllm": {"nvidia": "registry.example.com/vllm-cuda:0.1.0"}, "mlx": None},
        "autoEngines": ["vllm", "sglang", "llama.cpp"],
        "maxQueue": 64,
        "port": 9000,
    },
}

#: name -> values, the scenarios every structural test runs over.
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced-everything": EVERYTHING,
    "crds-kept-off": {"crds": {"keep": False}, "metrics": {"service": {"enabled": False}}},
    "one-namespace-monitors": {"watchNamespaces": ["models"], "podMonitor": {"enabled": True}},
}
