"""``kubectl apply`` of the tiny GGUF → Ready → first token on a real node, with the image already there.

    sudo env KUBECONFIG=PATH python benchmarks/bench_realnode.py [--runs 3]

Runs ``e2e/test_realnode_e2e.py::test_apply_to_first_token_of_the_tiny_gguf_with_the_image_on_the_node``
``--runs`` times with ``TURNOUT_E2E_RESULTS`` set (a cluster with a real node and containerd on this machine,
as the real-node tier needs; the first run builds and loads the images when the checkout changed) and
collects the share of each step: the operator and the Deployment controller (apply → pod), the scheduler,
the kubelet and containerd (bound → container started), the engine's start (→ the shim's first healthy
answer, polled every 0.2 s), the kubelet's probes (→ Ready), and the first streamed token through the
model's Service. Writes ``benchmarks/results/realnode.json`` and prints a markdown table (medians).
"""

from __future__ import annotations

from pathlib import Path

import e2ebench

ROOT = Path(__file__).resolve().parent.parent
TEST = "e2e/test_realnode_e2e.py::test_apply_to_first_token_of_the_tiny_gguf_with_the_image_on_the_node"
OUT = ROOT / "benchmarks" / "results" / "realnode.json"
ROWS = (
    ("kubectl apply → first token (s)", ("apply_to_first_token_s",)),
    ("  apply → pod created: operator, Deployment and ReplicaSet controllers (s)", ("apply_to_pod_created_s",)),
    ("  pod created → bound by the scheduler (s)", ("pod_created_to_scheduled_s",)),
    ("  bound → container started: kubelet, CNI, containerd (s)", ("scheduled_to_container_started_s",)),
    ("  container started → the shim's /health first 200: engine start, model load (s)",
     ("container_started_to_shim_healthy_s",)),
    ("  shim healthy → pod Ready: the kubelet's probes (s)", ("shim_healthy_to_ready_s",)),
    ("  Ready seen → first streamed token through the Service (s)", ("ready_to_first_token_s",)),
    ("kubectl apply → ModelDeployment Ready seen (s)", ("apply_to_ready_seen_s",)),
    ("startupProbe periodSeconds", ("startup_probe_period_s",)),
)


def main(argv: list[str] | None = None) -> int:
    return e2ebench.main(__doc__.splitlines()[0], TEST, ROWS, OUT, argv, timeout=3600)


if __name__ == "__main__":
    raise SystemExit(main())
