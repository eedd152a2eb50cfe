"""Scale from zero through the gateway on a real cluster: time to first token, and client errors.

    sudo env KUBECONFIG=PATH python benchmarks/bench_scale_from_zero.py [--runs 3]

Runs the end-to-end test ``e2e/test_gateway_e2e.py::test_scale_from_zero_through_the_gateway_up_to_two_and_back``
``--runs`` times with ``TURNOUT_E2E_RESULTS`` set, and collects what it measured: host agents (real
nodes, each in a network namespace of this machine: needs root and a reachable cluster, as e2e/ does)
serve the tiny GGUF with llama.cpp; the gateway holds the first request for a deployment at zero
replicas, wakes it through the scale subresource, and the operator, scheduler and agent start a pod.
Per run: the first request's time to first token from zero and its phases (from the pod's
timestamps), the client errors of that request and of four streaming clients that then take it to
two replicas, and how long each scale step took. Writes ``benchmarks/results/scale_from_zero.json``
(each run's pytest output in ``benchmarks/results/logs/``) and prints a markdown table (medians over
the runs). The test asserts no timing; this reports them.
"""

from __future__ import annotations

from pathlib import Path

import e2ebench

ROOT = Path(__file__).resolve().parent.parent
TEST = "e2e/test_gateway_e2e.py::test_scale_from_zero_through_the_gateway_up_to_two_and_back"
OUT = ROOT / "benchmarks" / "results" / "scale_from_zero.json"
ROWS = (  # (label, path into a run's figures)
    ("time to first token from zero (s)", ("cold_start", "ttft_s")),
    ("  request → pod created: gateway wake, operator, Deployment controller (s)",
     ("cold_start", "request_to_pod_created_s")),
    ("  pod created → bound by the scheduler (s)", ("cold_start", "pod_created_to_scheduled_s")),
    ("  bound → Ready: the agent's startupProbe passes (s)",
     ("cold_start", "scheduled_to_ready_s")),
    ("  Ready → first token: EndpointSlice, gateway, generation (s)", ("cold_start", "ready_to_first_token_s")),
    ("  request → the shim's /health first 200 (polled every 0.2 s) (s)",
     ("cold_start", "request_to_engine_healthy_s")),
    ("  startupProbe periodSeconds of the pod", ("cold_start", "startup_probe_period_s")),
    ("time to first token of the same request once warm (s)", ("warm_ttft_s",)),
    ("client errors, first request", ("cold_start", "client_errors")),
    ("idle → back at zero (s)", ("idle_to_zero_s",)),
    ("4 streaming clients from zero → 2 replicas serving (s)", ("load_to_two_serving_s",)),
    ("client errors under load (answers)", ("load", "client_errors")),
    ("load stops → back at zero (s)", ("load_stop_to_zero_s",)),
)


def main(argv: list[str] | None = None) -> int:
    return e2ebench.main(__doc__.splitlines()[0], TEST, ROWS, OUT, argv)


if __name__ == "__main__":
    raise SystemExit(main())
