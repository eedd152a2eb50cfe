"""A soak on the real node: mixed traffic through the in-cluster gateway for ``TURNOUT_E2E_SOAK_SECONDS``.

The chart (its defaults) serves the tiny GGUF chat model and the MiniLM embedding example. Eight clients send,
through the gateway Service, a mix of chats, streamed chats, embeddings and streams the client closes after the
first chunks (cancels). In the middle the chat model is given ``minReplicas: 0``, idles to zero while its clients
wait, and the next requests wake it (the one injected fault: requests wait, none may fail). Every minute the
resident memory and open file descriptors of the gateway, operator and embedding shim containers' processes are
read from ``/proc`` (their host pids from the node's containerd).

Passes when no request was lost (every one answered 200, streams whole or closed by the client), the resident
memory of each process ends within 10 % of its level after the warm-up, and no descriptors grew: the median
count of the samples' second half at most ``FD_SLACK`` above the first half's (after the warm-up), for each
process and for the gateway replicas together. Open connections come and go with the eight clients, so two
single readings differ by one or two either way, and the clients' connections move between the gateway
replicas behind their Service (one replica's count falls as the other's rises: the replicas are judged as one);
a leak of one descriptor per request, per watch restart or per scale-up climbs past that over the run.
Skipped unless ``TURNOUT_E2E_SOAK_SECONDS`` is set (the issue's soak is 1800); ``TURNOUT_E2E_RESULTS=<file>``
records the figures under ``soak``.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import nodeimages
import noderuntime
import pytest
import realnode
from hostagents import model_pods
from kubectl import kubectl, poll, settled
from realnode import chart_values, example, gateway_url, ready, stream_end
from results import record_results

from conftest import RUN

# The real-node tier's fixtures: the node, its taints, the images built and loaded, the other nodes cordoned.
real_node = realnode.real_node
tolerations = realnode.tolerations
images = realnode.images
only_the_real_node = realnode.only_the_real_node

SECONDS = float(os.environ.get("TURNOUT_E2E_SOAK_SECONDS") or 0)
#: Growth allowed between the first sample after the warm-up and the last.
RSS_SLACK = 0.10
#: Descriptors allowed between the medians of the first and the second half of the samples after the warm-up.
FD_SLACK = 2
COMPONENT = "app.kubernetes.io/component"


@pytest.fixture(scope="module")
def soaked(crds: None, real_node: dict[str, Any], images: nodeimages.Images,
           tolerations: list[dict[str, Any]]) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    if not SECONDS:
        pytest.skip("TURNOUT_E2E_SOAK_SECONDS is not set (the soak runs only when asked for)")
    if why := noderuntime.problem():
        pytest.skip(why)
    with (realnode.chart_namespaces(f"turnout-soak-{RUN}-sys", f"turnout-soak-{RUN}-models") as (system, models),
          realnode.installed_chart(system, models, chart_values(images, tolerations, models))):
        docs = [example(n, tolerations) for n in ("tiny-chat-gguf.yaml", "embedding-minilm.yaml")]
        for doc in docs:
            kubectl("apply", "-n", models, "-f", "-", stdin=json.dumps(doc))
        for doc in docs:
            poll(lambda d=doc: ready(models, d["metadata"]["name"]), timeout=300, interval=1,
                 what=f"{doc['metadata']['name']} Ready")
        yield system, models, docs


def _processes(system: str, models: str, embedding: str) -> tuple[dict[str, int], dict[str, str]]:
    """Host pid of each watched container's process (gateway and operator pods, the embedding model's pod), and
    the group each one's descriptors are judged in: the gateway replicas together, every other process alone."""
    pods = json.loads(kubectl("get", "pods", "-n", system, "-o", "json"))["items"]
    pods += model_pods(models, embedding)
    running = [p for p in pods if p.get("status", {}).get("phase") == "Running"]
    pids = {p["metadata"]["name"]: noderuntime.pid(noderuntime.container_id(p)) for p in running}
    groups = {p["metadata"]["name"]: "gateways" if (p["metadata"].get("labels") or {}).get(COMPONENT) == "gateway"
              else p["metadata"]["name"] for p in running}
    return pids, groups


def _fds_by_group(sample: dict[str, tuple[int, int]], groups: dict[str, str]) -> dict[str, int]:
    """Open descriptors of each group in one sample."""
    out: Counter[str] = Counter()
    for name, (_, fds) in sample.items():
        out[groups[name]] += fds
    return dict(out)


def _sample(pids: dict[str, int]) -> dict[str, tuple[int, int]]:
    """(resident KiB, open descriptors) of each process."""
    out = {}
    for name, pid in pids.items():
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        out[name] = (rss, noderuntime.open_fds(pid))
    return out


def _client(url: str, chat: str, embed: str, kind: str, stop: threading.Event, quiet: threading.Event,
            seen: Counter[str], lock: threading.Lock) -> None:
    """One client sending ``kind`` requests back to back until ``stop`` (chat clients hold off while ``quiet``);
    each outcome counted in ``seen``."""
    with httpx.Client(base_url=url, timeout=300, trust_env=False) as http:
        while not stop.is_set():
            if kind != "embed" and quiet.is_set():
                time.sleep(0.5)
                continue
            outcome = kind
            try:
                if kind == "embed":
                    reply = http.post("/embeddings", json={"model": embed, "input": ["soak", "turnout"]})
                    ok = reply.status_code == 200 and len(reply.json()["data"]) == 2
                elif kind == "chat":
                    reply = http.post("/chat/completions", json={"model": chat, "max_tokens": 16,
                                                                 "messages": [{"role": "user", "content": "soak"}]})
                    ok = reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] is not None
                else:
                    body = {"model": chat, "max_tokens": 64, "stream": True,
                            "messages": [{"role": "user", "content": "soak stream"}]}
                    with http.stream("POST", "/chat/completions", json=body) as reply:
                        # a cancel: the client goes away mid-stream, after the first chunks
                        end = stream_end(reply, close_after=3 if kind == "cancel" else 0)
                    ok = end == "whole" or (kind == "cancel" and end in ("closed", "cut without an error"))
                outcome += " ok" if ok else f" failed ({reply.status_code})"
            except httpx.HTTPError as exc:
                outcome += f" failed ({type(exc).__name__})"
            with lock:
                seen[outcome] += 1


def test_soak_mixed_traffic_through_the_gateway_loses_nothing_and_memory_stays_flat(
        soaked: tuple[str, str, list[dict[str, Any]]]) -> None:
    system, models, (chat_doc, embed_doc) = soaked
    url = gateway_url(system)
    chat, embed = chat_doc["spec"]["servedModelName"], embed_doc["spec"]["servedModelName"]
    pids, groups = _processes(system, models, embed_doc["metadata"]["name"])
    seen: Counter[str] = Counter()
    lock, stop, quiet = threading.Lock(), threading.Event(), threading.Event()
    kinds = ["chat", "chat", "stream", "stream", "cancel", "embed", "embed", "chat"]
    samples: list[tuple[float, dict[str, tuple[int, int]]]] = []
    start = time.monotonic()
    scaled: dict[str, float] = {}
    with ThreadPoolExecutor(len(kinds)) as pool:
        clients = [pool.submit(_client, url, chat, embed, k, stop, quiet, seen, lock) for k in kinds]
        while (elapsed := time.monotonic() - start) < SECONDS:
            samples.append((elapsed, _sample(pids)))
            if "asked" not in scaled and elapsed >= SECONDS / 2:
                scaled["asked"] = round(elapsed, 1)
                _scale_to_zero_and_back(models, chat_doc, quiet, scaled)
            for future in clients:
                if future.done():
                    future.result()  # a client that died is a failure of the test, not a quiet stop
            time.sleep(min(60.0, max(1.0, SECONDS - elapsed)))
        stop.set()
        for future in clients:
            future.result()
    samples.append((time.monotonic() - start, _sample(pids)))
    settled_at = min(120.0, SECONDS / 5)
    warm = next(s for t, s in samples if t >= settled_at)
    last = samples[-1][1]
    growth = {n: round(last[n][0] / warm[n][0] - 1, 3) for n in warm}
    after = [s for t, s in samples if t >= settled_at]
    early, late = after[:max(1, len(after) // 2)], after[len(after) // 2:]
    counts = [_fds_by_group(s, groups) for s in after]
    first, second = counts[:max(1, len(counts) // 2)], counts[len(counts) // 2:]
    fds = {g: (statistics.median(c[g] for c in first), statistics.median(c[g] for c in second),
               max(c[g] for c in counts)) for g in counts[0]}
    fds_each = {n: (statistics.median(s[n][1] for s in early), statistics.median(s[n][1] for s in late),
                    max(s[n][1] for s in after)) for n in warm}
    lost = {k: v for k, v in seen.items() if not k.endswith(" ok")}
    figures = {"seconds": round(SECONDS), "requests": dict(seen), "lost": lost, "rss_growth": growth,
               "rss_kib": {n: (warm[n][0], last[n][0]) for n in warm}, "fds": fds, "fds_each": fds_each,
               "scale_to_zero": scaled,
               "samples": len(samples)}
    print(f"\nsoak: {json.dumps(figures)}")
    record_results({"soak": figures})
    assert not lost, lost
    assert all(g <= RSS_SLACK for g in growth.values()), growth
    assert all(second <= first + FD_SLACK for first, second, _ in fds.values()), fds


def _scale_to_zero_and_back(models: str, doc: dict[str, Any], quiet: threading.Event,
                            scaled: dict[str, float]) -> None:
    """Give the chat model ``minReplicas: 0`` and hold its clients off until it is down to zero; their next
    requests wake it through the gateway (they wait for the pod; none may fail)."""
    name = doc["metadata"]["name"]
    spec = json.loads(json.dumps(doc))
    spec["spec"]["autoscaling"] = {"minReplicas": 0, "maxReplicas": 1, "scaleDownDelaySeconds": 10}
    quiet.set()
    began = time.monotonic()
    try:
        kubectl("apply", "-n", models, "-f", "-", stdin=json.dumps(spec))
        poll(lambda: (settled(models, name) or {}).get("status", {}).get("phase") == "ScaledToZero"
             and not model_pods(models, name), timeout=300, interval=1, what=f"{name} idle to zero")
        scaled["to_zero_s"] = round(time.monotonic() - began, 1)
    finally:
        quiet.clear()
    woke = time.monotonic()
    poll(lambda: ready(models, name), timeout=300, interval=1, what=f"{name} woken by its clients")
    scaled["woken_s"] = round(time.monotonic() - woke, 1)
