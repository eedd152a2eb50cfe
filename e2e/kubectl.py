"""kubectl helpers for the end-to-end tests: run, read JSON, poll with a bound."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class KubectlError(RuntimeError):
    def __init__(self, args: Sequence[str], code: int, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited {code}: {stderr.strip()}")
        self.code = code
        self.stderr = stderr


def cluster_problem() -> str | None:
    """Why the end-to-end tests cannot run here, or None when a cluster answers."""
    config = os.environ.get("KUBECONFIG")
    if not config:
        return "KUBECONFIG is not set: point it at a test cluster (kind, k3d, minikube) to run e2e/"
    missing = [p for p in config.split(os.pathsep) if p and not os.path.exists(p)]
    if missing:
        return f"KUBECONFIG names files that do not exist: {', '.join(missing)}"
    if shutil.which("kubectl") is None:
        return "kubectl is not on PATH"
    try:
        kubectl("get", "--raw", "/readyz", timeout=15)
    except (KubectlError, subprocess.TimeoutExpired) as exc:
        return f"the cluster in KUBECONFIG does not answer: {exc}"
    return None


def kubectl(*args: str, stdin: str | None = None, timeout: float = 60, check: bool = True) -> str:
    proc = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise KubectlError(args, proc.returncode, proc.stderr)
    return proc.stdout


def get_json(*args: str) -> dict[str, Any] | None:
    """``kubectl get ... -o json``, or None when the object does not exist."""
    try:
        return json.loads(kubectl("get", *args, "-o", "json"))
    except KubectlError as exc:
        if "NotFound" in exc.stderr or "not found" in exc.stderr:
            return None
        raise


def poll(fn: Callable[[], T | None], *, timeout: float = 120, interval: float = 1.0, what: str = "condition") -> T:
    """Call ``fn`` until it returns something truthy; fail after ``timeout`` seconds saying what was awaited.

    A real API server has no change notification for a test to wait on short of a watch,
    so this polls: bounded, with the last value in the failure message.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return {}


# ----- ModelDeployments ------------------------------------------------------------------------------------


def apply(obj: dict[str, Any], namespace: str, *, manager: str | None = None) -> None:
    """Server-side apply (one ``--field-manager`` for every apply of a test: a field left out is removed)."""
    kubectl("apply", "--server-side", *([f"--field-manager={manager}"] if manager else []), "-n", namespace,
            "-f", "-", stdin=json.dumps(obj))


def model_deployment(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": spec}


def settled(namespace: str, name: str, generation: int | None = None) -> dict[str, Any] | None:
    """The ModelDeployment once the operator reconciled its current generation (and that is ``generation``)."""
    md = get_json("modeldeployment", name, "-n", namespace)
    if not md:
        return None
    seen = (md.get("status") or {}).get("observedGeneration")
    current = md["metadata"]["generation"]
    return md if seen == current and (generation is None or current == generation) else None


def phase(namespace: str, name: str, want: str, **fields: Any) -> dict[str, Any] | None:
    """The ModelDeployment when its phase is ``want`` (and its status has ``fields``) for the current generation."""
    md = settled(namespace, name)
    status = (md or {}).get("status") or {}
    if status.get("phase") == want and all(status.get(k) == v for k, v in fields.items()):
        return md
    return None


def events(namespace: str, name: str, reason: str | None = None) -> list[dict[str, Any]]:
    """core/v1 Events about an object, as ``kubectl describe`` reads them.

    The operator posts ``events.k8s.io/v1`` Events; the core/v1 view of the same objects selects on
    ``involvedObject.*`` (``regarding.*`` is the events.k8s.io/v1 name for it, refused by core/v1).
    """
    selector = f"involvedObject.name={name}" + (f",reason={reason}" if reason else "")
    out = kubectl("get", "events", "-n", namespace, "-o", "json", "--field-selector", selector)
    return json.loads(out)["items"]


def gguf(replicas: int = 0, **extra: Any) -> dict[str, Any]:
    """A small GGUF model spec (llama.cpp on CPU), at ``replicas: 0`` unless said otherwise."""
    return {"model": {"name": "qwen2.5-instruct", "size": 0.5, "format": "gguf", "quantization": "Q4_K_M"},
            "replicas": replicas, **extra}


def awq(replicas: int = 1, **extra: Any) -> dict[str, Any]:
    """A 7B AWQ model spec: vLLM on an NVIDIA GPU, or nothing on CPU."""
    return {"model": {"name": "qwen2.5-instruct", "size": 7, "format": "awq", "quantization": "Int4"},
            "replicas": replicas, **extra}


def cluster_settled() -> bool:
    """The API server ready, every CRD's API discoverable, and every Node Ready without the node controller's
    not-ready/unreachable taints: what a test that restarts the API server waits for before the next test
    (while it was down no kubelet could renew its lease, so the node controller marks nodes it then sees stale)."""
    if kubectl("get", "--raw", "/readyz", check=False, timeout=10).strip() != "ok":
        return False
    crds = json.loads(kubectl("get", "crds", "-o", "json", check=False) or '{"items": []}')["items"]
    for crd in crds:
        group = crd["spec"]["group"]
        for version in crd["spec"]["versions"]:
            if version.get("served") and not kubectl("get", "--raw", f"/apis/{group}/{version['name']}",
                                                     check=False, timeout=10):
                return False
    for node in json.loads(kubectl("get", "nodes", "-o", "json"))["items"]:
        taints = {t["key"] for t in node.get("spec", {}).get("taints") or []}
        if condition(node, "Ready").get("status") != "True" or taints & {"node.kubernetes.io/not-ready",
                                                                           "node.kubernetes.io/unreachable"}:
            return False
    return True
