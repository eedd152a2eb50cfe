"""The gateway's Prometheus metrics (names and labels are a contract with the operator's autoscaler)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
LABELS = ("namespace", "deployment", "model")


class GatewayMetrics:
    """Per deployment: in flight, held in the queue, answered (by status), upstream errors, time to first token."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.in_flight = Gauge("turnout_gateway_in_flight", "Requests sent upstream and not finished",
                               LABELS, registry=r)
        self.queue_length = Gauge("turnout_gateway_queue_length", "Requests held waiting for a ready endpoint",
                                  LABELS, registry=r)
        self.requests = Counter("turnout_gateway_requests", "Requests answered, by HTTP status",
                                (*LABELS, "code"), registry=r)
        self.upstream_errors = Counter("turnout_gateway_upstream_errors",
                                       "Upstream connections that failed or broke off", LABELS, registry=r)
        self.ttft = Histogram("turnout_gateway_time_to_first_token_seconds",
                              "Time from the request to the first byte of the answer's body", LABELS,
                              buckets=TTFT_BUCKETS, registry=r)
