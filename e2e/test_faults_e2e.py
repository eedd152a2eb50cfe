"""What production clusters do to turnout, done to the real node: the chart installed, models serving, then faults.

The chart (its defaults: two operator replicas, two gateway replicas) serves the tiny GGUF with two replicas
(``steady``) on the real node; each test injects one fault and checks that nothing is lost:

* the API server restarted mid-reconcile: every watch resumes from a version from before the restart, which the
  new API server answers with ``410 Gone`` (shown here), so the operator and the gateway list again; what was
  created, deleted and scaled around the restart is all reflected;
* the real node stopped (its kubelet stopped reporting) and started with model pods on it: the deployment goes
  ``Degraded`` with ``NodeNotReady`` and comes back ``Ready`` with the same pods;
* a model pod's container killed mid-stream under load through the gateway: each stream ends whole or with an
  SSE error event, none hangs or is cut without one; non-streamed requests that never reached the dead engine
  are answered by the other replica.

Faults that need a hand on the control plane are commands of the cluster's owner, given in the environment
(each test is skipped with the reason without them):

* ``TURNOUT_E2E_RESTART_APISERVER``: restarts the API server (e.g. kill it under its supervisor);
* ``TURNOUT_E2E_STOP_NODE`` / ``TURNOUT_E2E_START_NODE``: stop and start the real node's kubelet.

``TURNOUT_E2E_RESULTS=<file>`` records each test's figures (``api_server_restart`` and ``watch_410``,
``node_stop_start``, ``pod_killed_mid_stream``, ``gateway_pod_killed``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import nodeimages
import noderuntime
import pytest
import realnode
from kubectl import cluster_settled, condition, get_json, kubectl, model_deployment, poll, settled
from realnode import chart_values, gateway_load, gateway_url, labelled_model_pods, ready, restarts
from results import record_results

from conftest import RUN

# The real-node tier's fixtures: the node, its taints, the images built and loaded, the other nodes cordoned.
real_node = realnode.real_node
tolerations = realnode.tolerations
images = realnode.images
only_the_real_node = realnode.only_the_real_node

GROUP_PATH = "/apis/turnout.dev/v1alpha1"
TINY_GGUF = {"uri": "builtin://tiny-llama.gguf", "type": "llm", "size": 0.01}


def _spec(real_node: dict[str, Any], tolerations: list[dict[str, Any]], served: str, **extra: Any) -> dict[str, Any]:
    return {"model": TINY_GGUF, "servedModelName": served, "tolerations": tolerations,
            "nodeSelector": {"kubernetes.io/hostname": real_node["metadata"]["labels"]["kubernetes.io/hostname"]},
            **extra}


def _apply(namespace: str, name: str, spec: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(model_deployment(name, spec)))


def _pods(system: str, component: str) -> list[dict[str, Any]]:
    return json.loads(kubectl("get", "pods", "-n", system, "-l", f"app.kubernetes.io/component={component}",
                              "-o", "json"))["items"]


def _listed(base_url: str) -> set[str] | None:
    """The model ids the gateway lists, or None while it does not answer."""
    try:
        reply = httpx.get(f"{base_url}/models", timeout=5, trust_env=False)
    except httpx.HTTPError:
        return None
    return {m["id"] for m in reply.json()["data"]} if reply.status_code == 200 else None


def _run(command: str) -> None:
    subprocess.run(command, shell=True, check=True, timeout=60)


@pytest.fixture(scope="module")
def installed(crds: None, real_node: dict[str, Any], images: nodeimages.Images,
              tolerations: list[dict[str, Any]]) -> Iterator[tuple[str, str, str]]:
    """The chart with its defaults and the project's images, and ``steady``: the tiny GGUF, two replicas, Ready."""
    with (realnode.chart_namespaces(f"turnout-faults-{RUN}-sys", f"turnout-faults-{RUN}-models") as (system, models),
          realnode.installed_chart(system, models, chart_values(images, tolerations, models))):
        _apply(models, "steady", _spec(real_node, tolerations, "steady", replicas=2))
        poll(lambda: ready(models, "steady"), timeout=300, interval=1, what="steady Ready")
        url = gateway_url(system)
        poll(lambda: "steady" in (_listed(url) or ()), timeout=60, what="the gateway lists steady")
        yield system, models, url


def _children(namespace: str, name: str) -> tuple[int, int]:
    selector = f"turnout.dev/deployment={name}"
    got = json.loads(kubectl("get", "deployments,services", "-n", namespace, "-l", selector, "-o", "json"))["items"]
    kinds = Counter(o["kind"] for o in got)
    return kinds["Deployment"], kinds["Service"]


def _api_ready() -> bool:
    return kubectl("get", "--raw", "/readyz", check=False, timeout=10).strip() == "ok"


def test_api_server_restarted_mid_reconcile_every_watch_relists_and_nothing_is_missed(
        installed: tuple[str, str, str], real_node: dict[str, Any], tolerations: list[dict[str, Any]]) -> None:
    restart = os.environ.get("TURNOUT_E2E_RESTART_APISERVER")
    if not restart:
        pytest.skip("TURNOUT_E2E_RESTART_APISERVER (a command that restarts the API server) is not set")
    system, models, url = installed
    _apply(models, "doomed", _spec(real_node, tolerations, "doomed", replicas=0))
    poll(lambda: "doomed" in (_listed(url) or ()), timeout=60, what="the gateway lists doomed")
    gateways = {p["metadata"]["name"]: restarts(p) for p in _pods(system, "gateway")}
    listing = json.loads(kubectl("get", "--raw", f"{GROUP_PATH}/namespaces/{models}/modeldeployments"))
    version = listing["metadata"]["resourceVersion"]

    # Mid-reconcile: a new deployment, a deleted one and a scale-down are in flight when the API server goes.
    _apply(models, "born", _spec(real_node, tolerations, "born", replicas=0))
    kubectl("delete", "-n", models, "modeldeployment/doomed", "--wait=false")
    kubectl("scale", "-n", models, "modeldeployment/steady", "--replicas=1")
    _run(restart)
    time.sleep(3)
    down = time.monotonic()
    poll(_api_ready, timeout=300, interval=1, what="the API server ready again")
    back = time.monotonic()
    poll(cluster_settled, timeout=300, interval=2, what="every node Ready and every API served again")

    # A watch from before the restart is answered 410 Gone: every watcher that resumes lists again.
    expired = kubectl("get", "--raw", f"{GROUP_PATH}/namespaces/{models}/modeldeployments"
                      f"?watch=1&resourceVersion={version}&timeoutSeconds=2", timeout=30)
    assert '"code":410' in expired, expired

    def converged() -> bool:
        steady = settled(models, "steady") or {}
        return (_children(models, "born") == (1, 1) and _children(models, "doomed") == (0, 0)
                and get_json("modeldeployment", "doomed", "-n", models) is None
                and (settled(models, "born") or {}).get("status", {}).get("phase") == "ScaledToZero"
                and steady.get("status", {}).get("phase") == "Ready"
                and steady.get("status", {}).get("replicas") == 1
                and len(labelled_model_pods(models)) == 1)

    poll(converged, timeout=300, interval=1, what="born, doomed and steady as changed around the restart")
    settled_s = time.monotonic() - back
    listed = poll(lambda: (m := _listed(url)) is not None and "born" in m and "doomed" not in m and m,
                  timeout=120, interval=1, what="the gateway lists born and not doomed")
    gateway_s = time.monotonic() - back
    # The gateways listed again in-process (their watches expired); none restarted.
    logs = {name: kubectl("logs", "-n", system, name, check=False) for name in gateways}
    assert all("watch expired (410)" in log for log in logs.values()), {n: log[-2000:] for n, log in logs.items()}
    assert {p["metadata"]["name"]: restarts(p) for p in _pods(system, "gateway")} == gateways
    figures = {"apiserver_down_s": round(back - down + 3, 1), "converged_after_ready_s": round(settled_s, 1),
               "gateway_listed_after_ready_s": round(gateway_s, 1), "gateway_models": sorted(listed),
               "operator_restarts": sum(restarts(p) for p in _pods(system, "operator"))}
    print(f"\nAPI server restart: {figures}")
    record_results({"api_server_restart": figures,
             "watch_410": {"watch_from_before_the_restart": "410 Expired",
                           "gateways_relisted_in_process": len(logs), "gateway_restarts": 0,
                           "missed_changes": 0}})
    kubectl("scale", "-n", models, "modeldeployment/steady", "--replicas=2")
    poll(lambda: ready(models, "steady") and len(labelled_model_pods(models)) == 2, timeout=300, interval=1,
         what="steady back to two replicas")


def test_the_node_stopped_and_started_degrades_with_the_reason_and_recovers(
        installed: tuple[str, str, str], real_node: dict[str, Any]) -> None:
    stop, start = os.environ.get("TURNOUT_E2E_STOP_NODE"), os.environ.get("TURNOUT_E2E_START_NODE")
    if not (stop and start):
        pytest.skip("TURNOUT_E2E_STOP_NODE and TURNOUT_E2E_START_NODE (stop and start the node's kubelet) are not set")
    _system, models, _url = installed
    node = real_node["metadata"]["name"]
    before = {n: (p["metadata"]["uid"], restarts(p)) for n, p in labelled_model_pods(models).items()}
    stopped = time.monotonic()
    _run(stop)
    try:
        poll(lambda: condition(get_json("node", node), "Ready").get("status") != "True", timeout=180, interval=1,
             what=f"node {node} not ready")
        not_ready_s = time.monotonic() - stopped
        try:
            cond = poll(lambda: (md := settled(models, "steady")) and md["status"].get("phase") == "Degraded"
                        and condition(md, "Degraded").get("reason") == "NodeNotReady" and condition(md, "Degraded"),
                        timeout=120, interval=1, what="steady Degraded with NodeNotReady")
        except AssertionError:
            md = get_json("modeldeployment", "steady", "-n", models) or {}
            print(f"\nsteady as the operator left it: {json.dumps(md.get('status'), indent=1)}")
            for pod in labelled_model_pods(models).values():
                print(f"{pod['metadata']['name']}: {pod['status'].get('conditions')}")
            raise
        degraded_s = time.monotonic() - stopped
        assert node in cond["message"], cond
    finally:
        _run(start)
    started = time.monotonic()
    poll(lambda: ready(models, "steady"), timeout=300, interval=1, what="steady Ready after the node is back")
    ready_s = time.monotonic() - started
    after = {n: (p["metadata"]["uid"], restarts(p)) for n, p in labelled_model_pods(models).items()}
    assert after == before, (before, after)
    figures = {"node_not_ready_after_stop_s": round(not_ready_s, 1), "degraded_after_stop_s": round(degraded_s, 1),
               "ready_after_start_s": round(ready_s, 1), "message": cond["message"]}
    print(f"\nnode stopped and started: {figures}")
    record_results({"node_stop_start": figures})


def test_a_model_pod_killed_mid_stream_ends_its_streams_cleanly_and_the_other_replica_answers(
        installed: tuple[str, str, str]) -> None:
    if why := noderuntime.problem():
        pytest.skip(why)
    _system, models, url = installed
    poll(lambda: ready(models, "steady") and len(labelled_model_pods(models)) == 2, timeout=300,
         what="steady with two replicas")
    victim = sorted(labelled_model_pods(models).values(), key=lambda p: p["metadata"]["name"])[0]
    with gateway_load(url, "steady") as load:
        time.sleep(5)
        noderuntime.kill(noderuntime.container_id(victim))
        killed = time.monotonic()
        time.sleep(15)
    streamed, answered = load.streamed, load.answered
    print(f"\nkilled {victim['metadata']['name']}: streams {dict(streamed)}; non-streamed {dict(answered)}")
    assert not {k for k in streamed if k not in ("whole", "error event")}, streamed
    assert streamed["whole"] > 0
    # Requests on the killed engine when it died may fail (they reached it); at most one per client in flight.
    failed = sum(v for k, v in answered.items() if k != "ok")
    assert "hung" not in answered and failed <= 4, answered
    assert answered["ok"] > 0
    poll(lambda: ready(models, "steady"), timeout=300, interval=1, what="steady Ready after the kill")
    recovered_s = time.monotonic() - killed
    record_results({"pod_killed_mid_stream": {"streams": dict(streamed), "non_streamed": dict(answered),
                                       "ready_again_after_kill_s": round(recovered_s, 1)}})


def test_a_gateway_pod_deleted_under_load_ends_its_streams_cleanly_and_the_other_serves(
        installed: tuple[str, str, str]) -> None:
    """A gateway pod deleted as a drain or a rollout does (SIGTERM after its preStop): streams on it finish or
    end with an error event, and the Service sends new requests to the other replica."""
    system, _models, url = installed
    gateways = sorted(p["metadata"]["name"] for p in _pods(system, "gateway"))
    assert len(gateways) == 2, f"the chart's default is two gateway replicas: {gateways}"
    with gateway_load(url, "steady") as load:
        time.sleep(5)
        deleted = time.monotonic()
        kubectl("delete", "pod", "-n", system, gateways[0], "--wait=false")
        time.sleep(30)
    streamed, answered = load.streamed, load.answered
    print(f"\ngateway {gateways[0]} deleted under load: streams {dict(streamed)}; non-streamed {dict(answered)}")
    assert not {k for k in streamed if k not in ("whole", "error event")}, streamed
    assert "hung" not in answered and answered["ok"] > 0, answered
    errors = sum(v for k, v in answered.items() if k != "ok") + sum(
        v for k, v in streamed.items() if k not in ("whole",))
    poll(lambda: len([p for p in _pods(system, "gateway") if ready_pod(p)]) == 2, timeout=180, interval=1,
         what="two gateways ready again")
    record_results({"gateway_pod_killed": {"streams": dict(streamed), "non_streamed": dict(answered),
                                    "client_errors": errors,
                                    "two_ready_again_after_s": round(time.monotonic() - deleted, 1)}})
    assert errors <= 4, (streamed, answered)


def ready_pod(pod: dict[str, Any]) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and condition(pod, "Ready").get("status") == "True"
