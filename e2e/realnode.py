"""What the real-node tiers share: the node, the project's images on it, the chart installed with them.

A module that binds the fixtures (``real_node = realnode.real_node``; likewise ``only_the_real_node``,
``tolerations``, ``images``) runs only where the cluster has a Ready node with a real container runtime this
machine can load images into, and cordons every other node while it runs. :func:`installed_chart` (in the
namespaces of :func:`chart_namespaces`) installs the chart and always cleans up after it; :func:`gateway_load`
puts streaming and non-streaming chat clients on the gateway while a fault is injected.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nodeimages
import pytest
import yaml
from kubectl import condition, get_json, kubectl, settled

ROOT = Path(__file__).resolve().parent.parent
RUNTIMES = ("containerd://", "cri-o://", "docker://")
RELEASE = "turnout-e2e"
MODEL_LABELS = "app.kubernetes.io/managed-by=turnout"
EXAMPLES = ROOT / "examples"


def find_real_node() -> dict[str, Any] | None:
    for node in (get_json("nodes") or {}).get("items", []):
        runtime = node.get("status", {}).get("nodeInfo", {}).get("containerRuntimeVersion", "")
        if runtime.startswith(RUNTIMES) and condition(node, "Ready").get("status") == "True":
            return node
    return None


@pytest.fixture(scope="module")
def real_node() -> dict[str, Any]:
    node = find_real_node()
    if node is None:
        pytest.skip("no Ready node with a container runtime (containerd, CRI-O, Docker) in this cluster")
    why = nodeimages.problem()
    if why:
        pytest.skip(why)
    return node


@pytest.fixture(scope="module", autouse=True)
def only_the_real_node(real_node: dict[str, Any]) -> Iterator[None]:
    """Cordon every other node for this tier, as an admin keeps a model off nodes it must not use.

    The other tiers' fake nodes (kwok, with fake GPUs) stay in the cluster for the session; the operator
    counts only schedulable nodes, so the examples resolve for the real node alone, as on a one-node cluster.
    """
    cordoned = []
    for node in (get_json("nodes") or {}).get("items", []):
        name = node["metadata"]["name"]
        if name != real_node["metadata"]["name"] and not node.get("spec", {}).get("unschedulable"):
            kubectl("cordon", name)
            cordoned.append(name)
    yield
    for name in cordoned:
        kubectl("uncordon", name, check=False)


@pytest.fixture(scope="module")
def tolerations(real_node: dict[str, Any]) -> list[dict[str, Any]]:
    """Tolerations for every taint of the real node (none when it has none)."""
    return [{"key": t["key"], "operator": "Exists", "effect": t["effect"]}
            for t in real_node.get("spec", {}).get("taints") or []]


@pytest.fixture(scope="module")
def images(real_node: dict[str, Any]) -> nodeimages.Images:
    made = nodeimages.Images(nodeimages.content_tag())
    for name in ("operator", "llamacpp-cpu", "transformers-cpu"):
        made.ensure(name)
    print(f"\nimages {made.tag}: " + ", ".join(f"{k} {v:.0f}s" for k, v in made.seconds.items()))
    return made


def helm_config(namespace: str) -> Any:
    """Helm's action configuration for releases in ``namespace`` (Helm keeps a release's history there)."""
    import helm_python

    return helm_python.Config(kubeconfig_path=os.environ["KUBECONFIG"].split(os.pathsep)[0], namespace=namespace)


def chart_values(images: nodeimages.Images, tolerations: list[dict[str, Any]], models: str,
            operator_tag: str | None = None) -> dict[str, Any]:
    operator_ref = images.refs["operator"]
    return {
        "image": {"repository": operator_ref.rsplit(":", 1)[0], "tag": operator_tag or images.tag},
        "watchNamespaces": [models],
        "tolerations": tolerations,
        "config": {"images": {"llama.cpp": {"cpu": images.refs["llamacpp-cpu"]},
                              "transformers": {"cpu": images.refs["transformers-cpu"]}}},
    }


def delete_leftover_release(release: str = RELEASE) -> None:
    """Cluster-scoped objects of a release that never got uninstalled (an earlier run's, its namespace gone)."""
    kubectl("delete", "clusterroles,clusterrolebindings", "-l", f"app.kubernetes.io/instance={release}",
            "--ignore-not-found", check=False)


def adopt_crd(system: str) -> None:
    """Let the release own the CRD the suite applied (Helm adopts an object carrying its release's marks)."""
    crd = "crd/modeldeployments.turnout.dev"
    if get_json(crd):
        kubectl("annotate", "--overwrite", crd, f"meta.helm.sh/release-name={RELEASE}",
                f"meta.helm.sh/release-namespace={system}")
        kubectl("label", "--overwrite", crd, "app.kubernetes.io/managed-by=Helm")


def kept() -> bool:
    """``TURNOUT_E2E_KEEP`` is set: what a tier made stays in the cluster for a look after the run."""
    return bool(os.environ.get("TURNOUT_E2E_KEEP"))


@contextmanager
def chart_namespaces(system: str, models: str) -> Iterator[tuple[str, str]]:
    """The chart's namespace and the models' namespace, created; deleted afterwards (not waited for) unless kept."""
    made = []
    try:
        for ns in (system, models):
            kubectl("create", "namespace", ns)
            made.append(ns)
        yield system, models
    finally:
        if not kept():
            for ns in reversed(made):
                kubectl("delete", "namespace", ns, "--wait=false", check=False)


@dataclass(frozen=True)
class Chart:
    """The chart installed by :func:`installed_chart`: Helm's configuration for its release, the install's seconds."""

    helm: Any
    install_s: float
    release: str
    system: str

    def upgrade(self, values: dict[str, Any]) -> None:
        """``helm upgrade`` the release to ``values`` (Helm waits for its pods, 300 s)."""
        self.helm.upgrade(ROOT / "charts/turnout", self.release, values, namespace=self.system, wait="watcher",
                          timeout=300)


@contextmanager
def installed_chart(system: str, models: str, values: dict[str, Any], *, release: str = RELEASE,
                    adopt: bool = True, clear_models: bool = False, always_uninstall: bool = False) -> Iterator[Chart]:
    """``charts/turnout`` installed as ``release`` in ``system`` with ``values`` (Helm waits for its pods, 300 s).

    When the block fails, both namespaces' objects, Events and logs are printed. Afterwards, also when the
    install itself failed, the release is uninstalled and its cluster-scoped RBAC deleted, unless kept.
    ``adopt``: the release takes over the suite's CRD (else ``values`` must leave the chart's CRDs off);
    ``clear_models``: the ModelDeployments are deleted first, while the operator runs;
    ``always_uninstall``: uninstalled even when kept.
    """
    helm = helm_config(system)
    delete_leftover_release(release)
    if adopt:
        adopt_crd(system)
    try:
        start = time.monotonic()
        helm.install(ROOT / "charts/turnout", release, values, namespace=system, wait="watcher", timeout=300)
        yield Chart(helm, time.monotonic() - start, release, system)
    except BaseException:
        dump(models, system)
        raise
    finally:
        if clear_models:
            kubectl("delete", "modeldeployments", "--all", "-n", models, "--wait=true", timeout=180, check=False)
        if always_uninstall or not kept():
            try:
                helm.uninstall(release, ignore_not_found=True, wait="watcher", timeout=120)
            finally:
                delete_leftover_release(release)


def labelled_model_pods(namespace: str) -> dict[str, dict[str, Any]]:
    pods = json.loads(kubectl("get", "pods", "-n", namespace, "-l", MODEL_LABELS, "-o", "json"))["items"]
    return {p["metadata"]["name"]: p for p in pods}


def restarts(pod: dict[str, Any]) -> int:
    return sum(int(c.get("restartCount", 0)) for c in pod.get("status", {}).get("containerStatuses") or [])


def gateway_url(system: str) -> str:
    services = json.loads(kubectl("get", "services", "-n", system, "-l", "app.kubernetes.io/component=gateway",
                                  "-o", "json"))["items"]
    assert len(services) == 1, [s["metadata"]["name"] for s in services]
    spec = services[0]["spec"]
    return f"http://{spec['clusterIP']}:{spec['ports'][0]['port']}/v1"


def ready(namespace: str, name: str) -> dict[str, Any] | None:
    md = settled(namespace, name)
    return md if (md or {}).get("status", {}).get("phase") == "Ready" else None


def dump(*namespaces: str) -> None:
    """What a user would look at when the journey fails: objects, Events, every pod's log."""
    for ns in namespaces:
        for args in (["get", "modeldeployments,deployments,pods", "-o", "wide"],
                     ["get", "events", "--sort-by=.lastTimestamp"]):
            print(f"\n===== {ns}: {' '.join(args)} =====\n{kubectl(*args, '-n', ns, check=False)}")
        for pod in json.loads(kubectl("get", "pods", "-n", ns, "-o", "json", check=False) or "{}").get("items", []):
            name = pod["metadata"]["name"]
            print(f"\n===== {ns}/{name} log =====\n{kubectl('logs', '-n', ns, name, '--tail=60', check=False)}")


def stream_end(reply: httpx.Response, close_after: int = 0) -> str:
    """How a streamed chat's reply ended: ``whole`` (``data: [DONE]`` last), ``error event`` (an SSE error),
    ``cut without an error``, ``closed`` (the client went away after ``close_after`` data lines) or ``status N``."""
    if reply.status_code != 200:
        reply.read()
        return f"status {reply.status_code}"
    last, seen = "", 0
    for line in reply.iter_lines():
        if line.startswith("data: "):
            last, seen = line, seen + 1
            if '"error"' in line:
                return "error event"
            if seen == close_after:
                return "closed"
    return "whole" if last == "data: [DONE]" else "cut without an error"


def _streamed(url: str, model: str, stop: threading.Event) -> Counter[str]:
    """Streamed chats back to back until ``stop``; how each ended (:func:`stream_end`), hung or broke."""
    seen: Counter[str] = Counter()
    while not stop.is_set():
        body = {"model": model, "messages": [{"role": "user", "content": "tell a long story"}],
                "max_tokens": 200, "stream": True}
        try:
            with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=60, trust_env=False) as reply:
                seen[stream_end(reply)] += 1
        except httpx.TimeoutException:
            seen["hung"] += 1
        except httpx.HTTPError as exc:
            seen[f"broken: {type(exc).__name__}"] += 1
    return seen


def _answered(url: str, model: str, stop: threading.Event) -> Counter[str]:
    """Non-streamed chats back to back until ``stop``: ok, status N, hung or broken."""
    seen: Counter[str] = Counter()
    while not stop.is_set():
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
        try:
            reply = httpx.post(f"{url}/chat/completions", json=body, timeout=60, trust_env=False)
            seen["ok" if reply.status_code == 200 else f"status {reply.status_code}"] += 1
        except httpx.TimeoutException:
            seen["hung"] += 1
        except httpx.HTTPError as exc:
            seen[f"broken: {type(exc).__name__}"] += 1
    return seen


@dataclass
class GatewayLoad:
    """How the requests of :func:`gateway_load` ended, counted once the load has stopped."""

    streamed: Counter[str] = field(default_factory=Counter)
    answered: Counter[str] = field(default_factory=Counter)


@contextmanager
def gateway_load(url: str, model: str, clients: int = 4) -> Iterator[GatewayLoad]:
    """``clients`` streaming and ``clients`` non-streaming chat clients asking ``model`` through the gateway at
    ``url`` back to back while the block runs (a new connection and a 60 s timeout per request); when it ends
    they finish their requests and the counts are in ``streamed`` and ``answered``."""
    load, stop = GatewayLoad(), threading.Event()
    with ThreadPoolExecutor(2 * clients) as pool:
        streams = [pool.submit(_streamed, url, model, stop) for _ in range(clients)]
        plains = [pool.submit(_answered, url, model, stop) for _ in range(clients)]
        try:
            yield load
        finally:
            stop.set()
        load.streamed = sum((f.result() for f in streams), Counter())
        load.answered = sum((f.result() for f in plains), Counter())


def example(name: str, tolerations: list[dict[str, Any]]) -> dict[str, Any]:
    """A project example as a user applies it, with tolerations for the node's taints (none when untainted)."""
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    if tolerations:
        doc["spec"]["tolerations"] = tolerations
    return doc
