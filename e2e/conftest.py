"""End-to-end fixtures: a real cluster from KUBECONFIG, the CRDs, a namespace, the operator as a subprocess.

Everything is skipped (with the reason) when KUBECONFIG does not point at a reachable cluster.
On a failed test, the namespace's objects, its Events and the operator's log are printed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubectl import cluster_problem, kubectl, poll

ROOT = Path(__file__).resolve().parent.parent
CRD_NAME = "modeldeployments.turnout.dev"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problem = cluster_problem()
    if problem:
        skip = pytest.mark.skip(reason=f"e2e: {problem}")
        here = Path(__file__).resolve().parent
        for item in items:
            if here in Path(str(item.path)).resolve().parents:
                item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[FAILED] = report.failed


FAILED = pytest.StashKey[bool]()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def crds() -> None:
    """Install (or update) the generated CRDs with server-side apply and wait until they are served."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")


@pytest.fixture(scope="session")
def namespace(crds: None) -> Iterator[str]:
    name = f"turnout-e2e-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    yield name
    if not os.environ.get("TURNOUT_E2E_KEEP"):
        kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def operator(namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """``python -m turnout.controller`` for the test namespace, logging to a file."""
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    health, metrics = _free_port(), _free_port()
    cmd = [sys.executable, "-m", "turnout.controller", "--namespace", namespace,
           "--health-port", str(health), "--metrics-port", str(metrics), "--bind-address", "127.0.0.1"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    info: dict[str, object] = {"process": proc, "log": log_path, "health": health, "metrics": metrics}

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the operator exited {proc.returncode}:\n{log_path.read_text()}")
        try:
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    poll(healthy, timeout=60, interval=0.5, what="the operator's /healthz")
    yield info
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(autouse=True)
def dump_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print objects, Events and the operator log when the test failed."""
    yield
    if not request.node.stash.get(FAILED, False) or "namespace" not in request.fixturenames:
        return
    ns = request.getfixturevalue("namespace")
    sections = [
        ("objects", ["get", "modeldeployments,deployments,services,persistentvolumeclaims,pods", "-n", ns,
                     "-o", "yaml"]),
        ("events", ["get", "events", "-n", ns, "--sort-by=.lastTimestamp"]),
    ]
    for title, args in sections:
        print(f"\n===== {title} =====\n{kubectl(*args, check=False)}")
    if "operator" in request.fixturenames:
        log = request.getfixturevalue("operator")["log"]
        print(f"\n===== operator log =====\n{Path(str(log)).read_text()[-20000:]}")
