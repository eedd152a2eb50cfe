"""The real-node tier: the project's images as pods under a real kubelet, the user's journey from the checkout.

Runs where the cluster has a node with a real container runtime (``status.nodeInfo.containerRuntimeVersion``
of containerd, CRI-O or Docker; fake and host-agent nodes do not count) whose runtime this machine can load
images into (:mod:`nodeimages`); skipped with the reason elsewhere. A node with taints is tolerated by the
specs here and by the chart's pods; nothing else is changed in the examples. Every other node (the other
tiers' fake nodes) is cordoned while this tier runs, so the examples resolve for the real node alone.

The journey (one test, in the order a user takes it):

1. build the ``operator``, ``llamacpp-cpu`` and ``transformers-cpu`` images from this checkout and load them
   into the node's runtime (reused while the inputs are unchanged);
2. ``helm install`` ``charts/turnout`` (CRDs, operator, gateway) with those images (Helm's own engine through
   helm-python-sdk, against the real API server);
3. ``kubectl apply`` the project's examples, unchanged: ``examples/tiny-chat-gguf.yaml`` (llama.cpp),
   ``examples/tiny-chat.yaml`` (transformers) and the embedding example; wait for ``Ready`` through the real
   startup and readiness probes;
4. ask each through the gateway Service's ClusterIP (kube-proxy) with the official ``openai`` client: chat,
   streamed chat and completions, embeddings for the embedding model;
5. ``helm upgrade`` to a rebuilt operator image: the serving model pods keep their UIDs and restart counts;
6. delete the ModelDeployments: garbage collection removes every child; ``helm uninstall``.

Then what real kubelets say, each turned into a ``Degraded`` status with the reason within a minute and
recovered by a fix: OOMKilled, an image the node does not have (ErrImageNeverPull), engine arguments that make
the shim exit (CrashLoopBackOff), an engine that cannot load its model (the engine's own error in the status),
more replicas than the node holds (Unschedulable).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import nodeimages
import pytest
import realnode
import yaml
from hostagents import model_pods
from kubectl import apply, condition, get_json, kubectl, model_deployment, poll, settled
from podtimes import FirstHealthy, epoch, pod_times
from procs import OperatorProcess
from realnode import MODEL_LABELS, chart_values, example, gateway_url, labelled_model_pods, ready, restarts
from results import record_results

from conftest import RUN
from turnout.render.manifests import child_name

# The real-node tier's fixtures: the node, its taints, the images built and loaded, the other nodes cordoned.
real_node = realnode.real_node
tolerations = realnode.tolerations
images = realnode.images
only_the_real_node = realnode.only_the_real_node

#: Examples the journey serves, applied unchanged but for the node's tolerations.
JOURNEY = ("tiny-chat-gguf.yaml", "tiny-chat.yaml", "embedding-minilm.yaml")


def _cpu_and_memory(node: str, namespace: str) -> dict[str, tuple[int, float]]:
    """Per pod of ``namespace`` on ``node``: (CPU core-nanoseconds used so far, working-set MiB), from the
    kubelet's summary API."""
    summary = json.loads(kubectl("get", "--raw", f"/api/v1/nodes/{node}/proxy/stats/summary"))
    return {p["podRef"]["name"]: (int(p.get("cpu", {}).get("usageCoreNanoSeconds", 0)),
                                  round(p.get("memory", {}).get("workingSetBytes", 0) / 2**20, 1))
            for p in summary.get("pods", []) if p["podRef"]["namespace"] == namespace}


def _usage(before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]],
           seconds: float) -> dict[str, dict[str, float]]:
    """CPU (millicores, averaged between two samples) and memory (MiB, at the second) of each pod."""
    return {name: {"cpu_m": round((used - before[name][0]) / seconds / 1e6, 1), "memory_mib": mib}
            for name, (used, mib) in after.items() if name in before}


def _load(client: Any, model: str, seconds: float, workers: int = 4) -> int:
    """``workers`` clients asking ``model`` back to back for ``seconds``; the number of answers."""
    stop = time.monotonic() + seconds

    def run() -> int:
        done = 0
        while time.monotonic() < stop:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "load"}], max_tokens=8)
            done += 1
        return done

    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(lambda _: run(), range(workers)))


def _ask(client: Any, doc: dict[str, Any]) -> dict[str, Any]:
    """Every call the model's type answers; what came back, for the assertions and the log."""
    model = doc["spec"]["servedModelName"]
    if doc["spec"]["model"].get("type") == "embedding":
        vectors = client.embeddings.create(model=model, input=["turnout on a real node", "hello"])
        assert len(vectors.data) == 2 and len(vectors.data[0].embedding) > 0
        return {"embedding": len(vectors.data[0].embedding)}
    messages = [{"role": "user", "content": "Hello from a real node"}]
    start = time.monotonic()
    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=8)
    assert chat.choices[0].message.content is not None and chat.usage.completion_tokens > 0
    first: float | None = None
    pieces = []
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=8, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.monotonic()
            pieces.append(chunk.choices[0].delta.content)
    assert pieces, "the streamed chat sent no content"
    completion = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8)
    assert completion.choices[0].text is not None and completion.usage.completion_tokens > 0
    return {"chat": chat.choices[0].message.content, "stream_chunks": len(pieces),
            "completion": completion.choices[0].text, "seconds": round(time.monotonic() - start, 2)}


def _operator_pods_on(system: str, tag: str) -> list[dict[str, Any]] | None:
    """The operator pods once every one of them runs the image tagged ``tag``, else None."""
    pods = json.loads(kubectl("get", "pods", "-n", system, "-l", "app.kubernetes.io/component=operator",
                              "-o", "json"))["items"]
    return pods if pods and all(p["spec"]["containers"][0]["image"].endswith(f":{tag}") for p in pods) else None


def _scale_from_zero(client: Any, doc: dict[str, Any], namespace: str) -> dict[str, Any]:
    """Give the model ``autoscaling: minReplicas 0``, wait for zero, then time the first streamed request."""
    name, served = doc["metadata"]["name"], doc["spec"]["servedModelName"]
    scaled = json.loads(json.dumps(doc))
    scaled["spec"]["autoscaling"] = {"minReplicas": 0, "maxReplicas": 1, "scaleDownDelaySeconds": 10}
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(scaled))
    poll(lambda: (settled(namespace, name) or {}).get("status", {}).get("phase") == "ScaledToZero"
         and not model_pods(namespace, name), timeout=300, interval=1, what=f"{name} idle to zero")
    healthy = FirstHealthy(namespace, name)
    healthy.start()
    wall, start = time.time(), time.monotonic()
    ttft = None
    try:
        for chunk in client.chat.completions.create(model=served, messages=[{"role": "user", "content": "wake"}],
                                                    max_tokens=8, stream=True):
            if ttft is None and chunk.choices and chunk.choices[0].delta.content:
                ttft = time.monotonic() - start
    finally:
        healthy_at = healthy.stop()
    assert ttft is not None, "the first request from zero got no content"
    (pod,) = model_pods(namespace, name)
    stamps = pod_times(pod)
    started = epoch(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
    return {
        "ttft_s": round(ttft, 2), "client_errors": 0,
        "request_to_pod_created_s": round(stamps["created"] - wall, 1),
        "pod_created_to_scheduled_s": round(stamps["scheduled"] - stamps["created"], 1),
        "scheduled_to_container_started_s": round(started - stamps["scheduled"], 1),
        "container_started_to_shim_healthy_s": round(healthy_at - started, 2) if healthy_at else None,
        "shim_healthy_to_first_token_s": round(wall + ttft - healthy_at, 2) if healthy_at else None,
        "request_to_shim_healthy_s": round(healthy_at - wall, 2) if healthy_at else None,
    }


@pytest.fixture(scope="module")
def journey_namespaces() -> Iterator[tuple[str, str]]:
    with realnode.chart_namespaces(f"turnout-e2e-{RUN}-sys", f"turnout-e2e-{RUN}-models") as made:
        yield made


def test_the_user_journey_with_the_chart_and_the_examples_on_a_real_node(
        crds: None, real_node: dict[str, Any], images: nodeimages.Images, tolerations: list[dict[str, Any]],
        journey_namespaces: tuple[str, str]) -> None:
    from openai import OpenAI

    system, models = journey_namespaces
    with realnode.installed_chart(system, models, chart_values(images, tolerations, models)) as chart:
        installed = chart.install_s
        docs = [example(name, tolerations) for name in JOURNEY]
        names = [d["metadata"]["name"] for d in docs]
        applied = time.monotonic()
        for doc in docs:
            kubectl("apply", "-n", models, "-f", "-", stdin=json.dumps(doc))
        ready_after = {}
        for name in names:
            poll(lambda n=name: ready(models, n), timeout=300, interval=0.5, what=f"{name} Ready")
            ready_after[name] = round(time.monotonic() - applied, 1)

        client = OpenAI(base_url=gateway_url(system), api_key="unused", max_retries=0, timeout=120)
        listed = {m.id for m in client.models.list()}
        assert {d["spec"]["servedModelName"] for d in docs} <= listed, listed
        answers = {d["metadata"]["name"]: _ask(client, d) for d in docs}
        print(f"\nhelm install {installed:.1f}s; Ready after apply: {ready_after}; answers: {answers}")
        node = real_node["metadata"]["name"]
        rest_start, started = _cpu_and_memory(node, system), time.monotonic()
        time.sleep(15)
        load_start, rested = _cpu_and_memory(node, system), time.monotonic()
        at_rest = _usage(rest_start, load_start, rested - started)
        load_answers = _load(client, docs[0]["spec"]["servedModelName"], 25)
        under_load = _usage(load_start, _cpu_and_memory(node, system), time.monotonic() - rested)
        print(f"operator and gateway pods at rest: {at_rest}; under load ({load_answers} answers in 25 s through "
              f"the gateway, 4 clients): {under_load}")

        # helm upgrade to a rebuilt operator image: a plan that did not change restarts no model pod.
        before = labelled_model_pods(models)
        deployments = {d["metadata"]["name"]: d["metadata"]["generation"] for d in
                       json.loads(kubectl("get", "deployments", "-n", models, "-o", "json"))["items"]}
        rebuilt_tag = f"{images.tag}-rebuilt"
        images.ensure("operator", tag=rebuilt_tag, build_args=(f"REVISION={rebuilt_tag}",))
        chart.upgrade(chart_values(images, tolerations, models, rebuilt_tag))
        # The old replicas may still be stopping (two by default: a stopping leader hands its Lease over first).
        operator_pods = poll(lambda: _operator_pods_on(system, rebuilt_tag), timeout=120,
                             what="only operator pods of the rebuilt image left")
        assert {c["image"] for p in operator_pods for c in p["spec"]["containers"]} == \
            {f"{images.refs['operator'].rsplit(':', 1)[0]}:{rebuilt_tag}"}
        # The new operator has reconciled every deployment (status written by it: observedGeneration current).
        for name in names:
            kubectl("annotate", "--overwrite", "-n", models, f"modeldeployment/{name}", f"e2e.turnout.dev/poke={RUN}")
            poll(lambda n=name: ready(models, n), timeout=60, what=f"{name} Ready after the upgrade")
        time.sleep(5)
        after = labelled_model_pods(models)
        assert {n: p["metadata"]["uid"] for n, p in after.items()} == \
            {n: p["metadata"]["uid"] for n, p in before.items()}
        assert {n: restarts(p) for n, p in after.items()} == {n: restarts(p) for n, p in before.items()}
        assert {d["metadata"]["name"]: d["metadata"]["generation"] for d in
                json.loads(kubectl("get", "deployments", "-n", models, "-o", "json"))["items"]} == deployments
        assert {d["spec"]["servedModelName"] for d in docs} <= {m.id for m in client.models.list()}

        # Scale from zero through the gateway pod: the model idles to zero, the first request wakes it.
        figures = _scale_from_zero(client, docs[0], models)
        print(f"scale from zero through the gateway pod: {figures}")
        record_results({"journey": {"helm_install_s": round(installed, 1), "ready_after_apply_s": ready_after,
                                    "pods_at_rest": at_rest, "pods_under_load": under_load,
                                    "load_answers_25s": load_answers},
                        "scale_from_zero": figures})

        # Delete: owner references take every child away.
        for name in names:
            kubectl("delete", "-n", models, f"modeldeployment/{name}", "--wait=true", "--timeout=60s")
        poll(lambda: not json.loads(kubectl("get", "deployments,services,pods,persistentvolumeclaims", "-n", models,
                                            "-l", MODEL_LABELS, "-o", "json"))["items"],
             timeout=120, what="garbage collection of the children")
    assert not json.loads(kubectl("get", "deployments,services", "-n", system, "-o", "json"))["items"]


# ----- what real kubelets say ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def absent_image(images: nodeimages.Images) -> Iterator[str]:
    """A transformers image reference the node does not have (until a test tags it)."""
    ref = f"{images.refs['transformers-cpu'].rsplit(':', 1)[0]}:absent-{RUN}"
    yield ref
    nodeimages.untag_in_runtime(ref)


@pytest.fixture(scope="module")
def node_operator(images: nodeimages.Images, absent_image: str, namespace: str, operator: OperatorProcess,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """This checkout's operator on the suite's namespace with the loaded images (transformers: one the node
    lacks) and ``imagePullPolicy: Never``, as a node with preloaded images runs; the session operator waits."""
    config = tmp_path_factory.mktemp("node-operator") / "config.yaml"
    config.write_text(yaml.safe_dump({"images": {"llama.cpp": {"cpu": images.refs["llamacpp-cpu"]},
                                                 "transformers": {"cpu": absent_image}},
                                      "imagePullPolicy": "Never"}))
    operator.stop()
    mine = OperatorProcess(["--namespace", namespace, "--config", str(config)], config.parent / "operator.log")
    mine.start()
    yield mine
    mine.stop()
    operator.start()


TINY_GGUF = {"uri": "builtin://tiny-llama.gguf", "type": "llm", "size": 0.01}


def _on_node(real_node: dict[str, Any], tolerations: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    model = spec.pop("model", TINY_GGUF)
    return {"model": model, "servedModelName": spec.pop("servedModelName", "tiny"),
            "nodeSelector": {"kubernetes.io/hostname": real_node["metadata"]["labels"]["kubernetes.io/hostname"]},
            "tolerations": tolerations, **spec}


def _degraded(namespace: str, name: str, reason: str) -> dict[str, Any] | None:
    md = settled(namespace, name)
    cond = condition(md, "Degraded")
    return cond if (md or {}).get("status", {}).get("phase") == "Degraded" and cond.get("reason") == reason else None


FAULTS = {
    # name: (broken spec fields, the Degraded reason, words the message must hold, the fix)
    "oomkilled": ({"resources": {"requests": {"memory": "24Mi"}, "limits": {"memory": "24Mi"}}},
                  "OOMKilled", ("more memory than its limit",), {}),
    "image-not-on-node": ({"model": {"uri": "builtin://tiny-llama", "type": "llm", "size": 0.01}},
                          "ErrImageNeverPull", ("absent-",), "tag"),
    "engine-args-exit": ({"engineArgs": {"no-such-llama-option": 1}}, "CrashLoopBackOff", ("no-such-llama-option",),
                         {}),
    "engine-cannot-load": ({"model": {"uri": "file:///etc/os-release", "format": "gguf", "type": "llm",
                                      "size": 0.01}},
                           "CrashLoopBackOff", ("os-release", "not a GGUF file"), {"model": TINY_GGUF}),
    "unschedulable": ({"replicas": 4, "resources": {"requests": {"cpu": "1"}}}, "Unschedulable",
                      ("Insufficient cpu",), {}),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_what_a_real_kubelet_reports_degrades_with_the_reason_and_a_fix_recovers(
        fault: str, real_node: dict[str, Any], tolerations: list[dict[str, Any]], node_operator: OperatorProcess,
        namespace: str, images: nodeimages.Images, absent_image: str, cleanup: Any) -> None:
    broken, reason, words, fix = FAULTS[fault]
    name = f"fault-{fault}"
    cleanup("modeldeployment", name, namespace)
    spec = _on_node(real_node, tolerations, **json.loads(json.dumps(broken)))
    apply(model_deployment(name, spec), namespace, manager="e2e")
    start = time.monotonic()
    cond = poll(lambda: _degraded(namespace, name, reason), timeout=60, interval=1,
                what=f"{name} Degraded with {reason}")
    seconds = time.monotonic() - start
    for word in words:
        assert word in cond["message"], cond
    print(f"\n{fault}: Degraded ({reason}) {seconds:.1f}s after apply: {cond['message'][:300]}")
    if fix == "tag":
        nodeimages.tag_in_runtime(images.refs["transformers-cpu"], absent_image)
    else:
        fixed = {k: v for k, v in spec.items() if k not in broken}
        fixed.update(fix)
        apply(model_deployment(name, fixed), namespace, manager="e2e")
    poll(lambda: ready(namespace, name), timeout=360, interval=1, what=f"{name} Ready after the fix")
    assert condition(get_json("modeldeployment", name, "-n", namespace), "Degraded").get("status") == "False"


def _first_token(url: str) -> float | None:
    """When the first streamed token of a chat through ``url`` arrived; None while nothing listens there."""
    try:
        with httpx.stream("POST", url, json={"model": "tiny-first", "messages": [{"role": "user", "content": "hi"}],
                                            "max_tokens": 4, "stream": True}, timeout=60, trust_env=False) as reply:
            assert reply.status_code == 200, reply.read()
            for line in reply.iter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    return time.time()
    except httpx.ConnectError:
        return None
    raise AssertionError("the stream ended with no content")


# ----- apply → Ready → first token, measured ----------------------------------------------------------------


def test_apply_to_first_token_of_the_tiny_gguf_with_the_image_on_the_node(
        real_node: dict[str, Any], tolerations: list[dict[str, Any]], node_operator: OperatorProcess,
        namespace: str, cleanup: Any) -> None:
    """``kubectl apply`` of the tiny GGUF → Ready → first streamed token through its Service, and the share of
    each step (pod stamps have the API server's one-second resolution; the shim's first healthy answer is
    polled every 0.2 s). ``TURNOUT_E2E_RESULTS=<file>`` writes the figures (benchmarks/bench_realnode.py)."""
    name = f"first-token-{RUN}"
    cleanup("modeldeployment", name, namespace)
    healthy = FirstHealthy(namespace, name)
    healthy.start()
    applied = time.time()
    apply(model_deployment(name, _on_node(real_node, tolerations, servedModelName="tiny-first")), namespace,
          manager="e2e")
    md = poll(lambda: ready(namespace, name), timeout=120, interval=0.1, what=f"{name} Ready")
    ready_seen = time.time()
    healthy_at = healthy.stop()
    service = get_json("service", child_name(name), "-n", namespace)
    assert service is not None, md["status"]
    url = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}/v1/chat/completions"
    first = poll(lambda: _first_token(url), timeout=30, interval=0.1,
                 what="the first token through the Service (kube-proxy programs its rules after Ready)")
    pods = model_pods(namespace, name)
    assert len(pods) == 1
    stamps = pod_times(pods[0])
    started = pods[0]["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    results = {
        "apply_to_first_token_s": round(first - applied, 2),
        "apply_to_ready_seen_s": round(ready_seen - applied, 2),
        "apply_to_pod_created_s": round(stamps["created"] - applied, 2),
        "pod_created_to_scheduled_s": round(stamps["scheduled"] - stamps["created"], 2),
        "scheduled_to_container_started_s": round(epoch(started) - stamps["scheduled"], 2),
        "container_started_to_shim_healthy_s": round(healthy_at - epoch(started), 2) if healthy_at else None,
        "shim_healthy_to_ready_s": round(stamps["ready"] - healthy_at, 2) if healthy_at else None,
        "ready_to_first_token_s": round(first - ready_seen, 2),
        "startup_probe_period_s": pods[0]["spec"]["containers"][0]["startupProbe"]["periodSeconds"],
    }
    print(f"\n{json.dumps(results)}")
    record_results({"first_token": results})
