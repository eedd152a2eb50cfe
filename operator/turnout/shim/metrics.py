"""Prometheus metrics, with the same names whatever the engine.

Each app owns its own ``CollectorRegistry`` so several apps can live in one
process (tests, benchmarks).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

#: the label value for paths that match no route, so scanners cannot blow up cardinality
OTHER_ENDPOINT = "other"

ENDPOINTS = frozenset({
    "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank",
    "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/v1/responses",
    "/health", "/live", "/metrics",
})

#: the label naming the LoRA adapter a request asked for as its model; "" (no label) for the base model
ADAPTER = "adapter"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ShimMetrics:
    """The shim's metrics; names are part of the project's contract (dashboards, alerts)."""

    def __init__(self, engine: str, model: str, model_type: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.info = Info("turnout_shim", "The engine and model this shim serves", registry=r)
        self.info.info({"engine": engine, "model": model, "model_type": model_type})
        self.requests = Counter(
            "turnout_requests", "Requests answered, by endpoint, HTTP status and LoRA adapter",
            ["endpoint", "status", ADAPTER], registry=r)
        self.latency = Histogram(
            "turnout_request_duration_seconds",
            "Time from request to the last byte of the answer", ["endpoint", ADAPTER],
            buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(
            "turnout_time_to_first_token_seconds",
            "Time from request to the first streamed chunk", ["endpoint", ADAPTER],
            buckets=TTFT_BUCKETS, registry=r)
        self.prompt_tokens = Counter(
            "turnout_prompt_tokens", "Prompt tokens processed", ["endpoint", ADAPTER], registry=r)
        self.completion_tokens = Counter(
            "turnout_completion_tokens", "Completion tokens generated", ["endpoint", ADAPTER],
            registry=r)
        self.in_flight = Gauge(
            "turnout_requests_in_flight", "Requests admitted and not yet answered", registry=r)
        self.cancelled = Counter(
            "turnout_requests_cancelled",
            "Streams stopped because the client disconnected", ["endpoint"], registry=r)
        self.rejected = Counter(
            "turnout_requests_rejected",
            "Requests refused before reaching the engine, by reason", ["reason"], registry=r)
        self.ready = Gauge(
            "turnout_backend_ready", "1 when the engine is ready to serve, else 0", registry=r)

    def endpoint(self, path: str) -> str:
        return path if path in ENDPOINTS else OTHER_ENDPOINT
