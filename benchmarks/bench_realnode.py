"""Real pods on a real node: apply → first token, scale from zero through the gateway pod, pod footprints.

    sudo env KUBECONFIG=PATH python benchmarks/bench_realnode.py [--runs 3]

Runs two tests of ``e2e/test_realnode_e2e.py`` ``--runs`` times with ``TURNOUT_E2E_RESULTS`` set (a cluster
with a real node and containerd on this machine, as the real-node tier needs; a run builds and loads the
images when the checkout changed):

- ``kubectl apply`` of the tiny GGUF → Ready → first token, image already on the node, and the share of each
  step: the operator and the Deployment controller (apply → pod), the scheduler, the kubelet and containerd
  (bound → container started), the engine's start (→ the shim's first healthy answer, polled every 0.2 s),
  the kubelet's probes (→ Ready), the first streamed token through the model's Service;
- the user journey with the chart: how long each example took to be Ready, the operator's and gateway's pod
  CPU and memory at rest and under four clients (the kubelet's summary API), and scale from zero through
  the gateway pod (the first request's time to first token and its phases).

Writes ``benchmarks/results/realnode.json`` and prints a markdown table (medians).
"""

from __future__ import annotations

from pathlib import Path

import e2ebench

ROOT = Path(__file__).resolve().parent.parent
TEST = ("e2e/test_realnode_e2e.py::test_apply_to_first_token_of_the_tiny_gguf_with_the_image_on_the_node",
        "e2e/test_realnode_e2e.py::test_the_user_journey_with_the_chart_and_the_examples_on_a_real_node")
OUT = ROOT / "benchmarks" / "results" / "realnode.json"
ROWS = (
    ("kubectl apply → first token (s)", ("first_token", "apply_to_first_token_s")),
    ("  apply → pod created: operator, Deployment and ReplicaSet controllers (s)",
     ("first_token", "apply_to_pod_created_s")),
    ("  pod created → bound by the scheduler (s)", ("first_token", "pod_created_to_scheduled_s")),
    ("  bound → container started: kubelet, CNI, containerd (s)",
     ("first_token", "scheduled_to_container_started_s")),
    ("  container started → the shim's /health first 200: engine start, model load (s)",
     ("first_token", "container_started_to_shim_healthy_s")),
    ("  shim healthy → pod Ready: the kubelet's probes (s)", ("first_token", "shim_healthy_to_ready_s")),
    ("  Ready seen → first streamed token through the Service (s)", ("first_token", "ready_to_first_token_s")),
    ("kubectl apply → ModelDeployment Ready seen (s)", ("first_token", "apply_to_ready_seen_s")),
    ("startupProbe periodSeconds", ("first_token", "startup_probe_period_s")),
    ("journey: tiny-chat-gguf Ready after kubectl apply of three examples (s)",
     ("journey", "ready_after_apply_s", "tiny-chat-gguf")),
    ("journey: tiny-chat (transformers) Ready (s)", ("journey", "ready_after_apply_s", "tiny-chat")),
    ("journey: minilm (embeddings) Ready (s)", ("journey", "ready_after_apply_s", "minilm")),
    ("scale from zero through the gateway pod: time to first token (s)", ("scale_from_zero", "ttft_s")),
    ("  request → pod created: gateway wake, operator's scale, controllers (s)",
     ("scale_from_zero", "request_to_pod_created_s")),
    ("  pod created → bound (s)", ("scale_from_zero", "pod_created_to_scheduled_s")),
    ("  bound → container started (s)", ("scale_from_zero", "scheduled_to_container_started_s")),
    ("  container started → shim healthy: the engine's own start (s)",
     ("scale_from_zero", "container_started_to_shim_healthy_s")),
    ("  shim healthy → first token: probe, EndpointSlice, gateway, generation (s)",
     ("scale_from_zero", "shim_healthy_to_first_token_s")),
    ("  client errors", ("scale_from_zero", "client_errors")),
)


def main(argv: list[str] | None = None) -> int:
    return e2ebench.main(__doc__.splitlines()[0], TEST, ROWS, OUT, argv, timeout=3600)


if __name__ == "__main__":
    raise SystemExit(main())
