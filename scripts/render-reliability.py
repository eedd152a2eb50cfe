#!/usr/bin/env python3
"""Render docs/reliability.md's table of faults and bad input (issue 29) from the test results.

Each row names a fault or input class, what happens, the test that proves it and where its figure comes
from: a key of ``docs/reliability-figures.json`` (written by the unit and integration tests in a recording
run: ``TURNOUT_RECORD_FIGURES=1 pytest <the tests named below>``), of ``docs/reliability-e2e.json`` (the
real-cluster results: copy the file ``TURNOUT_E2E_RESULTS`` named in the e2e run), or of a benchmark's
results. A figure not recorded reads "not run". The table goes between the markers in
docs/reliability.md; ``--check`` exits 1 when the committed doc differs (tests/test_reliability_doc.py).

    python scripts/render-reliability.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"
FIGURES = ROOT / "docs" / "reliability-figures.json"
E2E = ROOT / "docs" / "reliability-e2e.json"
BENCH = ROOT / "benchmarks" / "results" / "gateway_ha.json"
BEGIN, END = "<!-- BEGIN issue-29 table: scripts/render-reliability.py -->", "<!-- END issue-29 table -->"
NOT_RUN = "not run"


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else {}


@dataclass(frozen=True)
class Row:
    what: str
    happens: str
    test: str
    source: str  # "figures", "e2e" or "bench"
    key: str
    figure: Callable[[Any], str]


def _plain(v: dict[str, Any]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {json.dumps(x) if isinstance(x, (dict, list)) else x}"
                     for k, x in v.items())


def _fuzz(v: dict[str, Any]) -> str:
    return f"{v['requests']} requests, {v['5xx']} 5xx, 0 hangs"


def _soak(v: dict[str, Any]) -> str:
    grew = max(second - first for first, second, _ in v["fds"].values())
    return (f"{v['seconds']} s, {sum(v['requests'].values()):,} requests, {sum(v['lost'].values())} lost; RSS "
            f"growth at most {max(v['rss_growth'].values()):+.1%}; descriptors (median of the second half − the "
            f"first's, gateway replicas together) at most {grew:+g}; scaled to zero and back")


def _balance(v: list[dict[str, Any]]) -> str:
    by = {(r["gateways"], r["routing"]): r["max_over_mean"] for r in v}
    return (f"max/mean in-flight across 4 engines: 1 gateway {by.get((1, 'LeastRequests'))}, 2 gateways "
            f"{by.get((2, 'LeastRequests'))}, random {by.get((1, 'Random'))}")


T_LEADER = "tests/controller/test_leader.py::"
T_GW = "tests/gateway/test_gateway_shutdown.py::"
T_FUZZ = "tests/gateway/test_gateway_fuzz.py::"
ROWS: tuple[Row, ...] = (
    Row("Operator leader stops renewing its Lease (crash)", "The standby takes the Lease once it has seen no "
        "renewal for the lease duration and starts reconciling; exactly one holder at any time",
        T_LEADER + "test_one_of_two_leads_and_the_standby_takes_over_within_the_lease_duration, "
        "::test_two_racing_for_a_free_lease_elect_exactly_one", "figures", "lease_failover_unit",
        lambda v: f"{v['seconds']} s after the last renewal (lease {v['lease_duration']} s, bound {v['bound']} s; "
                  "client-go timings scaled 7.5×)"),
    Row("Operator leader stopped gracefully (SIGTERM, rolling update)", "It releases the Lease; the standby "
        "leads at its next try and reconciles the next ModelDeployment",
        T_LEADER + "test_the_standby_operator_reconciles_only_after_the_leader_stops", "figures",
        "operator_handover_unit", lambda v: f"new ModelDeployment reconciled {v['seconds']} s after the stop"),
    Row("Operator leader cannot renew, or another took the Lease", "kopf stops and the process exits 1 "
        "(the pod restarts as a standby)", T_LEADER + "test_a_leader_that_cannot_renew_gives_up_within_the_renew"
        "_deadline, ::test_an_operator_that_loses_the_lease_stops_with_leadership_lost", "figures", "", lambda v: "—"),
    Row("Operator leader pod deleted on the real cluster (forced, then graceful)", "The standby reconciles a new "
        "ModelDeployment; one Deployment per ModelDeployment", "e2e/test_ha_e2e.py", "e2e", "operator_failover",
        lambda v: f"forced {v['forced_s']} s, graceful {v['graceful_s']} s (bound {v['bound_s']} s)"),
    Row("Gateway SIGTERM with streams open", "Stops accepting; streams that end within the grace finish whole; "
        "those still open end with an SSE error event (`gateway_shutting_down`) and `[DONE]`", T_GW +
        "test_sigterm_lets_short_streams_finish_and_ends_long_ones_with_an_error_event", "figures",
        "gateway_sigterm", lambda v: f"grace {v['grace_s']} s: the endless stream ended cleanly after "
                                     f"{v['long_stream_ended_after_s']} s"),
    Row("Model pod dies mid-stream", "The stream ends with an `engine_stream_lost` error event and `[DONE]` after "
        "what was relayed", T_GW + "test_a_model_pod_dying_mid_stream_ends_the_stream_with_an_error_event",
        "figures", "", lambda v: "—"),
    Row("Model pod refuses connections (removed, not yet out of the EndpointSlice)", "The request, never sent, "
        "goes to another replica", T_GW + "test_requests_to_a_pod_that_refuses_connections_go_to_the_other_replica",
        "figures", "gateway_connect_refused_retry", lambda v: f"{v['requests']} requests, {v['errors']} errors"),
    Row("Two gateway replicas, no shared state", "LeastRequests on each gateway's own in-flight count keeps most "
        "of its balance", "benchmarks/bench_gateway_ha.py", "bench", "", _balance),
    Row("Fuzzed shim API (schemathesis, its OpenAPI schema)", "Below 500, in the OpenAI envelope",
        "tests/shim/test_schemathesis_fuzz.py", "figures", "fuzz_schemathesis_shim", _fuzz),
    Row("Fuzzed gateway API (schemathesis, the shim's schema)", "Below 500, in the OpenAI envelope",
        "tests/shim/test_schemathesis_fuzz.py", "figures", "fuzz_schemathesis_gateway", _fuzz),
    Row("Gateway: malformed JSON, wrong types, huge and negative numbers, unicode, bytes, any path, oversized",
        "4xx in the envelope (413 past the body limit)", T_FUZZ + "test_json_bodies, ::test_raw_bytes, "
        "::test_unicode_that_is_almost_json, ::test_any_path_and_method, ::test_oversized_bodies_get_413",
        "figures", "fuzz_hypothesis_gateway", _fuzz),
    Row("Gateway: bodies that trickle (slowloris)", "408 `request_timeout` once the body timeout passes; the "
        "gateway serves others meanwhile", T_FUZZ + "test_a_body_that_trickles_is_answered_408_and_does_not_hold_"
        "the_gateway", "figures", "slowloris_gateway",
        lambda v: f"{v['connections']} connections, all 408 within {v['answered_408_within_s']} s "
                  f"(timeout {v['body_timeout_s']} s)"),
    Row("Shim: bodies that trickle (slowloris)", "408 `request_timeout` after `TURNOUT_BODY_TIMEOUT_SECONDS` "
        "(default 60); the shim serves others meanwhile",
        "tests/shim/test_schemathesis_fuzz.py::test_a_body_that_trickles_is_answered_408", "figures", "slowloris_shim",
        lambda v: f"{v['connections']} connections, all 408 within {v['answered_408_within_s']} s "
                  f"(timeout {v['body_timeout_s']} s)"),
    Row("Gateway: 1,000 concurrent streams, twice", "All whole; memory flat from one wave to the next",
        T_FUZZ + "test_a_thousand_concurrent_streams_twice_no_error_and_no_growth", "figures",
        "thousand_streams_gateway", lambda v: f"{v['errors']} errors, RSS +{v['rss_growth_wave2_kib']} KiB in "
                                              "wave 2 (test process)"),
    Row("ModelDeployment admission: fuzzed specs through the schema and CEL", "What is admitted the operator "
        "parses; every refusal has a message", "tests/reliability/test_fuzz_admission.py", "figures",
        "fuzz_admission", lambda v: f"{v['specs']} specs: {v['admitted']} admitted, {v['refused_by_schema']} "
                                    f"refused by the schema, {v['refused_by_cel']} by CEL; 0 parse failures"),
    Row("Host agent: fuzzed `$(VAR)`, command lines, shim binding, mounts", "A value or a ConfigProblem (the "
        "pod's status says why), never another exception", "tests/agent/test_fuzz_inputs.py", "figures",
        "fuzz_agent_inputs", lambda v: f"{v['inputs']} inputs, {v['unexpected_exceptions']} unexpected exceptions"),
    Row("API server restarted mid-reconcile", "Operator, gateway and agent reconnect and converge; a deployment "
        "created, one deleted and one scaled around the restart are all reflected",
        "e2e/test_faults_e2e.py::test_api_server_restarted_mid_reconcile_every_watch_relists_and_nothing_is_missed",
        "e2e", "api_server_restart", _plain),
    Row("Watches expired (410 Gone: a watch resumed from before an API server restart)", "Re-list in-process, no "
        "restart; no change missed (the gateways' and the host agent's logs show the 410 re-list; the agent's in "
        "`e2e/test_agent_e2e.py::test_an_api_server_restart_makes_the_agent_list_again_and_miss_no_pod`)",
        "e2e/test_faults_e2e.py::test_api_server_restarted_mid_reconcile_every_watch_relists_and_nothing_is_missed",
        "e2e", "watch_410", _plain),
    Row("Real node stopped and started with model pods", "Degraded with NodeNotReady, then Ready with the same pods",
        "e2e/test_faults_e2e.py::test_the_node_stopped_and_started_degrades_with_the_reason_and_recovers", "e2e",
        "node_stop_start", _plain),
    Row("Model pod killed mid-stream on the real node", "Clean end of the in-flight stream; non-streamed requests "
        "that never reached the engine retried",
        "e2e/test_faults_e2e.py::test_a_model_pod_killed_mid_stream_ends_its_streams_cleanly_and_the_other_replica_answers",
        "e2e", "pod_killed_mid_stream", _plain),
    Row("Gateway pod killed under load", "Streams on it end with an error event; new requests go to the other",
        "e2e/test_faults_e2e.py::test_a_gateway_pod_deleted_under_load_ends_its_streams_cleanly_and_the_other_serves",
        "e2e", "gateway_pod_killed", _plain),
    Row("Operator SIGKILLed during a 100-deployment burst", "No duplicate or orphaned children after restart",
        "e2e/test_operator_e2e.py::test_killed_during_a_100_deployment_burst_leaves_no_duplicate_or_orphan", "e2e",
        "operator_sigkill_burst", _plain),
    Row("Soak: 30 min of mixed traffic, scale to zero and back", "0 lost requests; RSS flat within 10 %; no fd "
        "growth",
        "e2e/test_soak_e2e.py::test_soak_mixed_traffic_through_the_gateway_loses_nothing_and_memory_stays_flat",
        "e2e", "soak", _soak),
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def figure(row: Row, sources: dict[str, Any]) -> str:
    data = sources[row.source]
    if row.source == "bench":
        return row.figure(data) if data else NOT_RUN
    if not row.key:
        return row.figure(None)
    value = data.get(row.key)
    return NOT_RUN if value is None else row.figure(value)


def table(sources: dict[str, Any] | None = None) -> str:
    sources = sources or {"figures": _load(FIGURES), "e2e": _load(E2E), "bench": _load(BENCH)}
    lines = ["| Fault or input | What happens | Proved by | Figure |", "|---|---|---|---|"]
    for row in ROWS:
        test = ", ".join(f"`{t.strip()}`" for t in row.test.split(", ")) if "::" in row.test or "/" in row.test \
            else row.test
        lines.append(f"| {_cell(row.what)} | {_cell(row.happens)} | {test} | {_cell(figure(row, sources))} |")
    return "\n".join(lines)


def render(doc: str, sources: dict[str, Any] | None = None) -> str:
    """``doc`` with the table between the markers replaced."""
    head, sep, rest = doc.partition(BEGIN)
    if not sep or END not in rest:
        raise SystemExit(f"{DOC.relative_to(ROOT)}: the markers {BEGIN!r} … {END!r} are missing")
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table(sources)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/reliability.md differs")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print("docs/reliability.md is out of date: run python scripts/render-reliability.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
