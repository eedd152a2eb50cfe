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
                              "Time from the request to the first bytes of a streamed answer", LABELS,
                              buckets=TTFT_BUCKETS, registry=r)
        self._children: dict[tuple[str, str, str], ModelMetrics] = {}

    def of(self, namespace: str, deployment: str, model: str) -> ModelMetrics:
        """The metrics of one deployment, its label children looked up once."""
        key = (namespace, deployment, model)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = ModelMetrics(self, key)
        return found


class ModelMetrics:
    """One deployment's children of the gateway metrics."""

    __slots__ = ("_codes", "_key", "_requests", "in_flight", "queue_length", "ttft", "upstream_errors")

    def __init__(self, metrics: GatewayMetrics, key: tuple[str, str, str]) -> None:
        self._key = key
        self._requests = metrics.requests
        self._codes: dict[int, Counter] = {}
        self.in_flight = metrics.in_flight.labels(*key)
        self.queue_length = metrics.queue_length.labels(*key)
        self.upstream_errors = metrics.upstream_errors.labels(*key)
        self.ttft = metrics.ttft.labels(*key)

    def answered(self, code: int) -> None:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self._requests.labels(*self._key, str(code))
        child.inc()
