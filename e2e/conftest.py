"""End-to-end fixtures: a real cluster from KUBECONFIG, the CRDs, a namespace, fake nodes, the operator.

Everything is skipped (with the reason) when KUBECONFIG does not point at a reachable cluster; the
suite needs nothing else from it. A control plane without kubelets is enough: :mod:`kwok` plays
the kubelet for fake Nodes (CPU and GPU), and the host agents of test_agent_e2e.py and
test_gateway_e2e.py (:mod:`hostagents`, the ``hosts`` fixture) are real nodes.
On a failed test, the namespace's objects, its Events, the fake kubelet's errors, the
operator's log and the logs of the module's host agents are printed. ``TURNOUT_E2E_KEEP=1`` keeps the namespace.

Each client, apply, status and watch behaviour that ``tests/`` proves against the API emulator
(tests/controller/fakekube.py) has its twin here, against the real API server (``emulator test``
→ ``e2e test``; the file is test_operator_e2e.py unless named):

tests/controller/test_reconcile.py
  create_applies_children_with_owner_references_and_reports_status
    → create_reports_status_events_and_becomes_ready, children_are_server_side_applied_and_owned
  rejection_names_every_engine_then_a_gpu_node_resolves_it
  losing_the_gpu_node_re_resolves_and_a_cpu_model_stays_put
    → gpu_node_joining_resolves_a_rejected_plan_onto_it_and_leaving_fails_it (the real scheduler places
      the GPU plan on the GPU node and keeps the CPU plan off it)
  a_new_gpu_does_not_move_a_placed_deployment_and_scaling_keeps_the_engine → the same name
  spec_update_rolls_out_a_new_template → the same name
  pod_failure_degrades_and_recovery_returns_to_ready[crashloop, oomkilled, imagepull]
    → pod_failure_degrades_and_recovery_returns_to_ready (the fake kubelet's pod states)
  pod_failure_degrades_and_recovery_returns_to_ready[unschedulable]
    → unschedulable_by_the_scheduler_then_recovers (the real scheduler's "Insufficient cpu")
  restarted_operator_writes_nothing → the same name (turnout_operator_writes_total stays 0, no resourceVersion moves)
  a_spec_changed_while_the_operator_was_down_rolls_out_on_start → restarted_operator_writes_nothing, second half
  delete_garbage_collects_children_through_owner_references → delete_garbage_collects_the_children (the GC controller)
  invalid_object_fails_with_the_reason_and_others_still_deploy → crd_rejects_impossible_specs_at_admission (schema, CEL)
  killed_mid_reconcile_converges_after_restart_without_duplicates_or_orphans
    → killed_operator_converges_after_restart_without_duplicates (SIGKILL)
  without_nodes_it_waits_then_deploys_when_one_joins → an_empty_cluster_waits_for_nodes_then_deploys_when_one_joins
  a_child_the_api_refuses_fails_the_object_with_the_servers_message
    → a_child_admission_refuses_fails_the_object_then_recovers (a ValidatingAdmissionPolicy refuses it)
  children_changed_or_deleted_behind_its_back_are_restored → the same name
  transient_api_errors_are_retried_with_backoff → test_credentials_e2e: an_api_outage_is_retried_and_converges
tests/controller/test_prune.py → test_prune_e2e.py
  removing_the_cache_deletes_the_claim_after_the_deployment_stops_mounting_it → removing_the_cache_prunes_the_claim
  only_children_it_owns_are_pruned, an_engine_change_updates_in_place_and_prunes_what_the_new_plan_does_not_use,
  a_rejected_first_spec_without_children_is_a_plain_failure, hardware_that_can_serve_a_rejected_update_rolls_it_out
    → the same names
  a_rejected_update_keeps_the_previous_plan_serving_and_says_so_then_a_fix_recovers
    → a_rejected_update_keeps_the_previous_plan_serving_then_a_fix_recovers
  a_refused_delete_is_reported_and_tried_again_on_the_next_change
    → a_refused_delete_is_reported_and_tried_again (an admission policy refuses the DELETE)
  client_delete_is_guarded_by_the_uid_and_treats_gone_as_done
    → test_credentials_e2e: client_delete_is_guarded_by_the_uid_and_treats_gone_as_done
tests/controller/fakekube.py's contract (list, then watch from its resourceVersion)
    → test_credentials_e2e: watch_from_a_resource_version
tests/controller/test_rbac_and_metrics.py
  recorded_api_use_equals_the_declared_rbac
    → test_credentials_e2e: operator_with_an_exec_plugin_and_the_generated_role (the generated ClusterRole suffices)
  metrics_and_liveness_endpoints → operator_metrics_count_reconciles (and /healthz at every operator start)
  namespaced_mode_watches_only_its_namespaces_and_nodes_cluster_wide
    → a_namespaced_operator_leaves_other_namespaces_alone
tests/controller/test_controller_units.py
  client_classifies_failures → test_credentials_e2e: client_classifies_failures
  credentials_come_from_the_kubeconfig_with_its_namespace → test_credentials_e2e: current_context_and_a_named_context
tests/kube/test_credentials_tls.py → test_credentials_e2e.py
  embedded_base64_data_as_kind_and_eks_write_it → operator_with_the_admin_kubeconfig
  file_paths_relative_to_the_kubeconfig, insecure_skip_tls_verify_and_an_unknown_ca → the same names
  bearer_token_and_token_file_that_rotates → token_file_that_rotates
  exec_plugin_runs_again_when_its_token_expires_or_is_refused, kopf_session_carries_the_same_identity_and_renews_on_401
    → operator_with_an_exec_plugin_and_the_generated_role (its first token is refused: 401, the plugin runs again)
  in_cluster_service_account_token_is_read_again_when_it_rotates → operator_in_cluster_with_the_service_account_files
  tls_server_name_verifies_a_certificate_issued_for_another_name
    → test_agent_e2e: every agent (server https://10.250.N.1, tls-server-name localhost)
  current_context_and_a_named_context → the same name
  no_credentials_say_what_was_tried → none (no server involved)
tests/agent/ (the emulator with field selectors, Leases, graceful pod deletion) → test_agent_e2e.py
  nodes, Leases, scheduling onto agents, serving, restarts after a kill, two agents sharing a host, deletes
tests/agent/test_bootstrap.py (clusterfake: TLS, bootstrap tokens, CSR approval and signing, node rules)
    → test_agent_e2e.py
  an_agent_joins_with_a_bootstrap_token... → agents_join_by_tls_bootstrapping_as_their_nodes (the real
    kube-controller-manager approves and signs; renewal is not run: the real signer's minimum is 10 minutes)
  the_node_identity_uses_only_what_the_node_authorizer_grants
    → the_node_identity_gets_only_what_the_node_authorizer_grants (the real Node authorizer and NodeRestriction)
tests/gateway/test_kube_gateway.py → test_gateway_e2e.py (the gateway as a process, models served by host agents)
  models_listed_and_requests_routed_by_model, unknown_model_bad_json_and_missing_model (its 404)
    → one_base_url_serves_a_llamacpp_and_a_transformers_model (real llama.cpp and transformers pods)
  scale_from_zero_holds_requests_and_wakes_once → scale_from_zero_through_the_gateway_up_to_two_and_back
  recorded_api_use_equals_the_declared_rbac → both (the gateway runs as a ServiceAccount bound to the generated Role)
tests/controller/test_scaleloop.py
  scales_up_under_gateway_load_down_after_the_delay_and_to_zero_and_back
    → scale_from_zero_through_the_gateway_up_to_two_and_back (test_gateway_e2e: the operator scrapes the real gateway)
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hostagents import Hosts, stop_agents
from kubectl import cluster_problem, kubectl, poll
from kwok import FakeKubelet
from netns import AGENT_LABEL, clean_leftovers
from netns import problem as netns_problem
from procs import OperatorProcess

from turnout.agent.rbac import bootstrap_binding_name, bootstrap_bindings

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
CRD_NAME = "modeldeployments.turnout.dev"
RUN = uuid.uuid4().hex[:5]  # in names of cluster-scoped objects of this run
#: Label of the nodes a test makes for itself (value: the test's own); specs select it in nodeSelector.
TEST_NODE_LABEL = "e2e.turnout.dev/test"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "empty_cluster: runs first, before this suite has made any node")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if HERE in Path(str(item.path)).resolve().parents]
    problem = cluster_problem() if mine else None
    if problem:
        skip = pytest.mark.skip(reason=f"e2e: {problem}")
        for item in mine:
            item.add_marker(skip)
    first = [item for item in mine if item.get_closest_marker("empty_cluster")]
    items[:] = first + [item for item in items if item not in first]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[FAILED] = report.failed


FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def crds() -> None:
    """Install (or update) the generated CRDs with server-side apply and wait until they are served."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")


def _delete_leftover_namespaces() -> None:
    """Namespaces of an earlier run that crashed (``turnout-e2e-*``)."""
    for line in kubectl("get", "namespaces", "-o", "name").split():
        if line.startswith("namespace/turnout-e2e-"):
            kubectl("delete", line, "--wait=false", check=False)


@pytest.fixture(scope="session")
def namespace(crds: None) -> Iterator[str]:
    _delete_leftover_namespaces()
    name = f"turnout-e2e-{RUN}"
    kubectl("create", "namespace", name)
    yield name
    if not os.environ.get("TURNOUT_E2E_KEEP"):
        kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def kwok() -> Iterator[FakeKubelet]:
    """The fake kubelet (no nodes yet); every fake node it made is removed at the end, pods first."""
    kubelet = FakeKubelet().start()
    yield kubelet
    kubelet.stop()


@pytest.fixture(scope="session")
def fake_nodes(kwok: FakeKubelet) -> dict[str, str]:
    """The suite's shared fake nodes: a CPU node and a GPU node (1 × A10G, tainted nvidia.com/gpu)."""
    names = {"cpu": f"e2e-cpu-{RUN}", "gpu": f"e2e-gpu-{RUN}"}
    kwok.add_node(names["cpu"])
    kwok.add_node(names["gpu"], gpus=1, cpu="8", memory="30Gi")
    return names


class NodeSet:
    """Fake nodes of one test, all labelled ``e2e.turnout.dev/test=<this test>``: a spec whose nodeSelector
    is :attr:`selector` sees only them, so the test decides which hardware there is."""

    def __init__(self, kwok: FakeKubelet, value: str) -> None:
        self.kwok = kwok
        self.selector = {TEST_NODE_LABEL: value}
        self.names: list[str] = []

    def add(self, kind: str = "cpu", **kwargs: Any) -> str:
        name = f"e2e-{kind}-{self.selector[TEST_NODE_LABEL]}-{len(self.names)}"
        if kind == "gpu":
            kwargs = {"gpus": 1, "cpu": "8", "memory": "30Gi", **kwargs}
        self.kwok.add_node(name, labels={**self.selector, **kwargs.pop("labels", {})}, **kwargs)
        self.names.append(name)
        return name

    def remove(self, name: str) -> None:
        self.kwok.remove_node(name)
        self.names.remove(name)


@pytest.fixture
def own_nodes(kwok: FakeKubelet) -> Iterator[NodeSet]:
    nodes = NodeSet(kwok, uuid.uuid4().hex[:6])
    yield nodes
    for name in list(nodes.names):
        nodes.remove(name)


@pytest.fixture(scope="session")
def operator(namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """``python -m turnout operator --namespace NS`` for the test namespace (the admin kubeconfig of KUBECONFIG)."""
    proc = OperatorProcess(["--namespace", namespace], tmp_path_factory.mktemp("operator") / "operator.log")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def operator_paused(operator: OperatorProcess) -> Iterator[OperatorProcess]:
    """The session operator stopped for the test (which runs an operator of its own), started again after."""
    operator.stop()
    yield operator
    operator.start()


@pytest.fixture(scope="session")
def tiny_model() -> Any:
    """The project's tiny model (HF folder and GGUF), built once and cached (turnout.tinymodel)."""
    from turnout.tinymodel import build_tiny_model

    return build_tiny_model()


@pytest.fixture(scope="module")
def bootstrap_bindings_applied() -> Iterator[None]:
    """The standard bootstrapper ClusterRoleBindings (turnout.agent.rbac, as the chart renders them)."""
    bindings = bootstrap_bindings()
    for binding in bindings:
        binding["metadata"]["name"] = bootstrap_binding_name(binding["roleRef"]["name"], f"turnout-e2e-{RUN}")
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": bindings}))
    yield
    for binding in bindings:
        kubectl("delete", "clusterrolebinding", binding["metadata"]["name"], "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, bootstrap_bindings_applied: None) -> Iterator[Hosts]:
    """Network namespaces for the module's host agents (e2e/hostagents.py); a crashed run's are removed first.

    Agents join by TLS bootstrapping (the bindings above). Agents still running at the end are
    stopped, then the namespaces deleted. Skipped without root.
    """
    why = netns_problem()
    if why:
        pytest.skip(why)
    clean_leftovers()
    kubectl("delete", "nodes", "-l", f"{AGENT_LABEL}=true", "--ignore-not-found", check=False)
    made = Hosts(tmp_path_factory.mktemp("hosts"))
    try:
        yield made
    finally:
        stop_agents([a for a in made.agents if a["process"].poll() is None])
        made.close()


@pytest.fixture
def cleanup() -> Iterator[Callable[..., None]]:
    """``cleanup(kind, name, namespace=None)``: delete it after the test, whatever the outcome."""
    items: list[tuple[str, str, str | None]] = []

    def add(kind: str, name: str, namespace: str | None = None) -> None:
        items.append((kind, name, namespace))

    yield add
    if os.environ.get("TURNOUT_E2E_KEEP"):
        return
    for kind, name, namespace in reversed(items):
        kubectl("delete", kind, name, *(["-n", namespace] if namespace else []), "--ignore-not-found",
                "--wait=false", check=False)


@pytest.fixture(autouse=True)
def dump_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print objects, Events, the fake kubelet's errors and the operator log when the test failed."""
    yield
    if not request.node.stash.get(FAILED, False) or "namespace" not in request.fixturenames:
        return
    ns = request.getfixturevalue("namespace")
    sections = [
        ("nodes", ["get", "nodes", "-o", "wide", "--show-labels"]),
        ("objects", ["get", "modeldeployments,deployments,services,persistentvolumeclaims,pods", "-n", ns,
                     "-o", "yaml"]),
        ("events", ["get", "events", "-n", ns, "--sort-by=.lastTimestamp"]),
    ]
    for title, args in sections:
        print(f"\n===== {title} =====\n{kubectl(*args, check=False)}")
    if "kwok" in request.fixturenames:
        print(f"\n===== fake kubelet errors =====\n{request.getfixturevalue('kwok').errors[-50:]}")
    if "operator" in request.fixturenames:
        print(f"\n===== operator log =====\n{request.getfixturevalue('operator').tail()}")
    if "hosts" in request.fixturenames:
        for agent in request.getfixturevalue("hosts").agents:
            print(f"\n===== agent {agent['name']} log =====\n{Path(agent['log']).read_text()[-20000:]}")


__all__ = ["NodeSet", "poll"]
