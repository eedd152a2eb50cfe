"""When a model pod got where it is: its creation, binding and Ready stamps, and its shim's first healthy answer."""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import datetime
from typing import Any

import httpx
from hostagents import model_pods
from kubectl import condition


def epoch(stamp: str) -> float:
    """An API timestamp (RFC 3339, UTC) as epoch seconds."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def pod_times(pod: dict[str, Any]) -> dict[str, float]:
    """Wall-clock epoch seconds (the API server's one-second resolution) of a pod's creation, binding, Ready."""
    return {"created": epoch(pod["metadata"]["creationTimestamp"]),
            "scheduled": epoch(condition(pod, "PodScheduled")["lastTransitionTime"]),
            "ready": epoch(condition(pod, "Ready")["lastTransitionTime"])}


class FirstHealthy(threading.Thread):
    """Watches for the first pod of a deployment and stamps when its shim's ``/health`` first answers 200.

    The agent probes as kubelet does (startupProbe every ``periodSeconds``); this says how much of the
    wait for Ready was the engine starting and how much the probe's period.
    """

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(daemon=True)
        self.namespace, self.name = namespace, name
        self.at: float | None = None
        self._done = threading.Event()

    def run(self) -> None:
        url = None
        while not self._done.is_set() and self.at is None:
            if url is None:
                pods = [p for p in model_pods(self.namespace, self.name) if (p.get("status") or {}).get("podIP")]
                if pods:
                    port = pods[0]["spec"]["containers"][0]["ports"][0]["containerPort"]
                    url = f"http://{pods[0]['status']['podIP']}:{port}/health"
            else:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                        self.at = time.time()
                        break
            self._done.wait(0.2 if url else 0.5)

    def stop(self) -> float | None:
        self._done.set()
        self.join(timeout=10)
        return self.at
