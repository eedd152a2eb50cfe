"""End to end: `turnout gateway` in front of models that host agents really serve, and scale from zero.

Two CPU host agents (e2e/hostagents.py: each ``python -m turnout.agent`` in a network namespace of
its own, so each pod has its own address) are the cluster's nodes for these tests. The gateway is
``python -m turnout gateway -n NS`` as a process on this host, logged in as a ServiceAccount bound
only to the Role that ``python -m turnout.gateway.rbac --namespace NS`` prints: its generated RBAC is
enough on a real API server. The operator runs with ``--gateway-metrics-url`` naming that gateway's
``/metrics`` (and short autoscaler intervals), so its autoscaler reads the gateway's in-flight and
queued requests as in a cluster.

* A llama.cpp model (the tiny GGUF) and a transformers model (the tiny safetensors folder), one per
  agent, answer the official ``openai`` client through the gateway's one base URL: ``/v1/models``
  lists both, chat and streamed chat come back from each; an unknown model is a 404 naming both.
* A deployment with ``spec.autoscaling`` (0..2, one request in flight per replica) at zero replicas:
  its first request is held while the gateway wakes it (scale subresource), the operator scales
  the Deployment, the scheduler binds the pod to an agent, the agent starts the engine; the
  request is then answered without error. Idle for ``scaleDownDelaySeconds``, it goes back to zero.
  Four clients streaming back to back wake it again and take it to two replicas, one per agent,
  both serving; when they stop, it goes back to zero. No client sees an error.

``TURNOUT_E2E_RESULTS=<file>`` makes the scale test write what it measured (time to first token
from zero, its phases, client errors, how long scaling took) to that JSON file;
benchmarks/bench_scale_from_zero.py runs it that way. No timing is asserted.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hostagents import (
    TOLERATE_AGENT,
    Hosts,
    delete_and_wait,
    model_pods,
    ready_endpoints,
    start_agent,
    stop_agents,
    wait_ready,
)
from kubectl import apply, events, get_json, kubectl, model_deployment, poll
from podtimes import FirstHealthy, pod_times
from procs import PACKAGE_ROOT, GatewayProcess, OperatorProcess, parse_metrics
from results import record_results

PAIR_LABEL = "turnout.dev/e2e-gateway"
#: Autoscaler settings of the operator here: a sample every 2 s, averaged over 6 s (defaults 15 s, 60 s).
AUTOSCALE_ARGS = ["--autoscale-interval", "2", "--autoscale-window", "6"]
SCALE_DOWN_DELAY = 20
HI = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def agents(hosts: Hosts) -> Iterator[list[dict[str, Any]]]:
    """Two CPU agents with addresses of their own, labelled ``turnout.dev/e2e-gateway=<suffix>``."""
    suffix = uuid.uuid4().hex[:5]
    out = [start_agent(hosts, f"e2e-gw-{i}-{suffix}", "--accelerator", "cpu", "--label", f"{PAIR_LABEL}={suffix}",
                       address=True) for i in range(2)]
    try:
        wait_ready(out)
        for agent in out:
            agent["label"] = suffix
        yield out
    finally:
        stop_agents(out)


def _token_kubeconfig(path: Path, token: str) -> Path:
    """The admin kubeconfig's cluster (CA embedded) with a bearer token as its only user."""
    config = yaml.safe_load(kubectl("config", "view", "--raw", "--minify", "--flatten"))
    config["users"] = [{"name": config["contexts"][0]["context"]["user"], "user": {"token": token}}]
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def gateway(namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The gateway for the test namespace, as ServiceAccount ``turnout-gateway`` bound to the generated Role."""
    root = tmp_path_factory.mktemp("gateway")
    name = "turnout-gateway"
    role = subprocess.run([sys.executable, "-m", "turnout.gateway.rbac", "--namespace", namespace, "--name", name],
                          check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": PACKAGE_ROOT}).stdout
    kubectl("apply", "-f", "-", stdin=role)
    kubectl("create", "serviceaccount", name, "-n", namespace)
    kubectl("create", "rolebinding", name, "-n", namespace, f"--role={name}", f"--serviceaccount={namespace}:{name}")
    token = kubectl("create", "token", name, "-n", namespace, "--duration=2h").strip()
    kubeconfig = _token_kubeconfig(root / "kubeconfig", token)
    proc = GatewayProcess(["-n", namespace, "--kubeconfig", str(kubeconfig), "--hold-timeout", "600", "-v"],
                          root / "gateway.log", env={"KUBECONFIG": None})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def operator(operator: OperatorProcess, gateway: GatewayProcess, namespace: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The session operator stopped for this module; in its place one that scrapes the gateway's metrics."""
    operator.stop()
    own = OperatorProcess(["--namespace", namespace, "--gateway-metrics-url",
                           f"http://127.0.0.1:{gateway.metrics_port}/metrics", *AUTOSCALE_ARGS, "-v"],
                          tmp_path_factory.mktemp("operator") / "operator.log")
    own.start()
    yield own
    own.stop()
    operator.start()


@pytest.fixture(autouse=True)
def gateway_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed != failed_before and "gateway" in request.fixturenames:
        print(f"\n===== gateway log =====\n{request.getfixturevalue('gateway').tail()}")


def _can(namespace: str, verb: str, resource: str, subresource: str = "") -> bool:
    """``kubectl auth can-i`` as the gateway's ServiceAccount: the API server's own authorizer decides."""
    out = kubectl("auth", "can-i", verb, resource, "-n", namespace, f"--as=system:serviceaccount:{namespace}:"
                  "turnout-gateway", *([f"--subresource={subresource}"] if subresource else []), check=False)
    return out.strip() == "yes"


def _client(gateway: GatewayProcess) -> Any:
    """The official client on the gateway's base URL: no retries (an error is an error), no proxy."""
    from openai import OpenAI

    return OpenAI(base_url=gateway.url, api_key="unused", max_retries=0, timeout=600,
                  http_client=httpx.Client(trust_env=False, timeout=600))


def _spec(uri: str, served: str, node_selector: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"model": {"uri": uri, "type": "llm", "size": 0.01, **extra.pop("model", {})},
            "servedModelName": served, "accelerator": {"type": "cpu"}, "tolerations": [TOLERATE_AGENT],
            "nodeSelector": node_selector, **extra}


def _status(namespace: str, name: str) -> dict[str, Any]:
    return ((get_json("modeldeployment", name, "-n", namespace) or {}).get("status")) or {}


def _stream(client: Any, model: str, max_tokens: int) -> tuple[float | None, str]:
    """A streamed chat: (seconds to the first chunk with text, the text)."""
    started, first, text = time.monotonic(), None, []
    for chunk in client.chat.completions.create(model=model, messages=HI, max_tokens=max_tokens, stream=True):
        piece = chunk.choices[0].delta.content if chunk.choices else None
        if piece:
            first = first if first is not None else time.monotonic() - started
            text.append(piece)
    return first, "".join(text)


def _shim_answers(address: str, port: int) -> float:
    """Chat completions a model pod's shim answered (its ``turnout_requests_total``); 0 while it cannot say."""
    try:
        text = httpx.get(f"http://{address}:{port}/metrics", timeout=5, trust_env=False).text
    except httpx.HTTPError:
        return 0
    return sum(v for (n, labels), v in parse_metrics(text).items()
               if n == "turnout_requests_total" and ("endpoint", "/v1/chat/completions") in labels)


def test_one_base_url_serves_a_llamacpp_and_a_transformers_model(operator: OperatorProcess, gateway: GatewayProcess,
                                                                  agents: list[dict[str, Any]], namespace: str,
                                                                  tiny_model: Any) -> None:
    models = {  # deployment -> (served name, spec), one per agent (pods on one agent would share its port)
        "e2e-gw-gguf": ("tiny-gguf", _spec(f"file://{tiny_model.gguf_path}", "tiny-gguf",
                                           {"kubernetes.io/hostname": agents[0]["name"]}, model={"format": "gguf"})),
        "e2e-gw-hf": ("tiny-hf", _spec(f"file://{tiny_model.hf_dir}", "tiny-hf",
                                       {"kubernetes.io/hostname": agents[1]["name"]})),
    }
    try:
        for name, (_, spec) in models.items():
            apply(model_deployment(name, spec), namespace)
        for name in models:
            poll(lambda name=name: _status(namespace, name).get("phase") == "Ready", timeout=600, interval=2,
                 what=f"{name} Ready")
        assert {n: _status(namespace, n)["engine"] for n in models} == {"e2e-gw-gguf": "llama.cpp",
                                                                         "e2e-gw-hf": "transformers"}
        client = _client(gateway)
        listed = poll(lambda: (ids := {m.id for m in client.models.list().data}) >= {"tiny-gguf", "tiny-hf"} and ids,
                      timeout=60, what="both models in the gateway's /v1/models")
        assert listed == {"tiny-gguf", "tiny-hf"}
        for agent, (name, (served, _)) in zip(agents, models.items(), strict=True):
            reply = client.chat.completions.create(model=served, messages=HI, max_tokens=4, temperature=0)
            assert reply.model == served and reply.choices[0].message.content, reply
            first, text = _stream(client, served, 8)
            assert first is not None and text
            # The gateway counted both for this deployment, and the pod at its agent's address answered them.
            assert gateway.total("turnout_gateway_requests_total", deployment=name, code="200") >= 2
            ((address, port),) = ready_endpoints(namespace, name).items()
            assert address == agent["address"] and _shim_answers(address, port) >= 2

        from openai import NotFoundError

        with pytest.raises(NotFoundError) as missing:
            client.chat.completions.create(model="no-such-model", messages=HI, max_tokens=4)
        error = missing.value.response.json()["error"]
        assert error["code"] == "model_not_found"
        assert "tiny-gguf" in error["message"] and "tiny-hf" in error["message"], error

        # All of it as the ServiceAccount with the generated Role, which grants that and no more.
        md = "modeldeployments.turnout.dev"
        assert all(_can(namespace, verb, res, sub) for verb, res, sub in (
            ("list", md, ""), ("watch", md, ""), ("get", md, "scale"), ("patch", md, "scale"),
            ("list", "endpointslices", ""), ("watch", "endpointslices", ""), ("get", f"secret/{KEYS_SECRET}", "")))
        assert not any(_can(namespace, verb, res, sub) for verb, res, sub in (
            ("patch", md, ""), ("delete", md, ""), ("list", "secrets", ""), ("get", "secrets", ""),
            ("get", "secret/user-api-key", ""), ("list", "pods", "")))
    finally:
        for name in models:  # the agents' port is free again for the next test's pods
            delete_and_wait(namespace, name)


KEYS_SECRET = "turnout-gateway-keys"  # turnout.api.GATEWAY_KEYS_SECRET: the API key digests the operator publishes


def test_the_gateways_cluster_role_reads_no_secret_but_the_published_key_digests(namespace: str) -> None:
    """The generated ClusterRole (the chart's cluster-wide install) bound to a ServiceAccount: the API
    server's authorizer lets it get ``turnout-gateway-keys`` in any namespace and no other Secret, kube-system's
    included (``kubectl auth can-i`` as that identity)."""
    name = f"turnout-gateway-e2e-{uuid.uuid4().hex[:6]}"
    role = subprocess.run([sys.executable, "-m", "turnout.gateway.rbac", "--name", name],
                          check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": PACKAGE_ROOT}).stdout
    assert yaml.safe_load(role)["kind"] == "ClusterRole"
    try:
        kubectl("apply", "-f", "-", stdin=role)
        kubectl("create", "serviceaccount", name, "-n", namespace)
        kubectl("create", "clusterrolebinding", name, f"--clusterrole={name}",
                f"--serviceaccount={namespace}:{name}")
        who = f"--as=system:serviceaccount:{namespace}:{name}"

        def can(verb: str, resource: str, ns: str) -> str:
            return kubectl("auth", "can-i", verb, resource, "-n", ns, who, check=False).strip()

        for verb, resource, ns, allowed in (
                ("get", f"secret/{KEYS_SECRET}", "kube-system", "yes"),
                ("get", f"secret/{KEYS_SECRET}", namespace, "yes"),
                ("get", "secret/bootstrap-token-abcdef", "kube-system", "no"),
                ("get", "secret/user-api-key", namespace, "no"),
                ("get", "secrets", "kube-system", "no"),
                ("list", "secrets", "kube-system", "no"),
                ("watch", "secrets", namespace, "no"),
                ("patch", f"secret/{KEYS_SECRET}", namespace, "no")):
            assert can(verb, resource, ns) == allowed, (verb, resource, ns)
    finally:
        kubectl("delete", "clusterrolebinding", name, "--ignore-not-found", check=False)
        kubectl("delete", "clusterrole", name, "--ignore-not-found", check=False)


class Load:
    """``workers`` threads, each streaming chat requests back to back through the gateway until stopped."""

    def __init__(self, gateway: GatewayProcess, model: str, workers: int, max_tokens: int) -> None:
        self.errors: list[str] = []
        self.done = 0
        self.first_ttft: list[float] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(_client(gateway), model, max_tokens), daemon=True)
                         for _ in range(workers)]

    def _run(self, client: Any, model: str, max_tokens: int) -> None:
        first = True
        while not self._stop.is_set():
            try:
                ttft, _ = _stream(client, model, max_tokens)
            except Exception as exc:  # every client error counts; the goal is none
                with self._lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with self._lock:
                self.done += 1
                if first and ttft is not None:
                    self.first_ttft.append(ttft)
            first = False

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=600)


def test_scale_from_zero_through_the_gateway_up_to_two_and_back(operator: OperatorProcess, gateway: GatewayProcess,
                                                                 agents: list[dict[str, Any]], namespace: str,
                                                                 tiny_model: Any) -> None:
    name, served = "e2e-gw-auto", "tiny-auto"
    autoscaling = {"minReplicas": 0, "maxReplicas": 2, "targetInFlightPerReplica": 1,
                   "scaleDownDelaySeconds": SCALE_DOWN_DELAY}
    apply(model_deployment(name, _spec(f"file://{tiny_model.gguf_path}", served, {PAIR_LABEL: agents[0]["label"]},
                                       model={"format": "gguf"}, replicas=0, autoscaling=autoscaling)), namespace)
    results: dict[str, Any] = {"model": "tiny GGUF (llama.cpp, CPU)", "agents": len(agents),
                               "scaleDownDelaySeconds": SCALE_DOWN_DELAY, "autoscaler": AUTOSCALE_ARGS}
    try:
        poll(lambda: _status(namespace, name).get("phase") == "ScaledToZero", timeout=120, interval=1,
             what=f"{name} ScaledToZero")
        assert not model_pods(namespace, name)
        client = _client(gateway)
        poll(lambda: served in {m.id for m in client.models.list().data}, timeout=60,
             what=f"{served} in /v1/models while at zero")

        # 1. The first request, from zero: held, woken, answered.
        healthy = FirstHealthy(namespace, name)
        healthy.start()
        wall, started = time.time(), time.monotonic()
        try:
            ttft, text = _stream(client, served, 16)
        finally:
            healthy_at = healthy.stop()
        total = time.monotonic() - started
        assert ttft is not None and text, "the first request from zero got an answer with text"
        (pod,) = model_pods(namespace, name)
        assert pod["spec"]["nodeName"] in {a["name"] for a in agents}
        assert pod["status"]["podIP"] == next(a["address"] for a in agents if a["name"] == pod["spec"]["nodeName"])
        times = pod_times(pod)
        results["cold_start"] = {
            "ttft_s": round(ttft, 2), "answer_s": round(total, 2), "client_errors": 0,
            # Phases from the pod's timestamps (whole seconds, so each is ±1 s): wake and scale, bind, start.
            "request_to_pod_created_s": round(times["created"] - wall, 1),
            "pod_created_to_scheduled_s": round(times["scheduled"] - times["created"], 1),
            "scheduled_to_ready_s": round(times["ready"] - times["scheduled"], 1),
            "ready_to_first_token_s": round(wall + ttft - times["ready"], 1),
            # The shim's own /health first 200 (polled every 0.2 s here), against the request's start.
            "request_to_engine_healthy_s": round(healthy_at - wall, 2) if healthy_at else None,
            "startup_probe_period_s": (pod["spec"]["containers"][0].get("startupProbe") or {}).get("periodSeconds"),
        }
        assert gateway.total("turnout_gateway_requests_total", deployment=name, code="200") >= 1
        wakes = [line for line in gateway.tail(10**7).splitlines() if "waking" in line]
        assert wakes and not any("failed" in line for line in wakes), wakes  # its patch was allowed
        warm, _ = _stream(client, served, 16)  # the same request once warm, for comparison
        results["warm_ttft_s"] = round(warm, 3) if warm is not None else None
        # Woken: spec.replicas (written through the scale subresource) stays up until the delay has passed.
        assert get_json("modeldeployment", name, "-n", namespace)["spec"]["replicas"] >= 1

        # 2. Idle: back to zero after scaleDownDelaySeconds without load.
        idle = time.monotonic()
        poll(lambda: _status(namespace, name).get("phase") == "ScaledToZero" and not model_pods(namespace, name),
             timeout=SCALE_DOWN_DELAY + 180, interval=1, what=f"{name} back to zero after idling")
        results["idle_to_zero_s"] = round(time.monotonic() - idle, 1)
        assert any("→ 0" in e.get("message", "") for e in events(namespace, name, "Autoscaled"))

        # 3. Four clients streaming back to back, from zero: up to two replicas, one per agent, both serving.
        with Load(gateway, served, workers=4, max_tokens=256) as load:
            loaded = time.monotonic()

            def two_serving() -> dict[str, int] | None:
                endpoints = ready_endpoints(namespace, name)
                return endpoints if len(endpoints) == 2 and all(_shim_answers(a, p) > 0
                                                                for a, p in endpoints.items()) else None

            endpoints = poll(two_serving, timeout=600, interval=2, what="two ready replicas, each answering")
            results["load_to_two_serving_s"] = round(time.monotonic() - loaded, 1)
            time.sleep(5)  # both replicas under load a little longer
        assert set(endpoints) == {a["address"] for a in agents}, endpoints
        assert {p["spec"]["nodeName"] for p in model_pods(namespace, name)} == {a["name"] for a in agents}
        assert get_json("modeldeployment", name, "-n", namespace)["spec"]["replicas"] == 2
        assert any("→ 2" in e.get("message", "") for e in events(namespace, name, "Autoscaled"))
        results["load"] = {"workers": 4, "max_tokens": 256, "answers": load.done, "client_errors": len(load.errors),
                           "first_ttft_s": sorted(round(t, 2) for t in load.first_ttft)}
        assert not load.errors, load.errors[:5]
        assert load.done > 0

        # 4. The load stops: back to zero.
        quiet = time.monotonic()
        poll(lambda: _status(namespace, name).get("phase") == "ScaledToZero" and not model_pods(namespace, name),
             timeout=SCALE_DOWN_DELAY + 180, interval=1, what=f"{name} back to zero after the load")
        results["load_stop_to_zero_s"] = round(time.monotonic() - quiet, 1)
        results["gateway_upstream_errors"] = gateway.total("turnout_gateway_upstream_errors_total",
                                                            deployment=name)
    finally:
        with contextlib.suppress(OSError):  # merged: other tiers record their figures in the same file
            record_results(results)
        delete_and_wait(namespace, name)
