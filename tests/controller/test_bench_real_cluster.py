"""The operator benchmark's real-cluster mode, run offline against the emulator served over HTTP.

It goes through the same steps it takes on a cluster: CRD install (and its
Established condition), scratch namespaces, bare creates, the operator as a
process logged in with the kubeconfig, a canary, watches, the operator's
/metrics, and cleanup (namespaces and the CRD it installed are gone
afterwards), and retries creates the API server answers with 429. No timing is asserted.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import kmock
import pytest
from aiohttp.test_utils import RawTestServer
from ctlharness import MDS, NODES, cpu_node
from fakekube import CRDS, NAMESPACES, FakeKube

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_operator  # noqa: E402

pytestmark = pytest.mark.slow


async def test_real_cluster_mode_measures_and_cleans_up(tmp_path, monkeypatch):
    server_cls = functools.partial(RawTestServer, keepalive_timeout=0.2)
    async with FakeKube() as api, kmock.Server(api, server_cls=server_cls):
        for i in range(2):  # the "cluster's own nodes"
            await api.put_object(NODES, cpu_node(f"node-{i}"))
        api.fail("POST", "modeldeployments", 429, times=2)  # priority and fairness pushing back: retried
        config = bench_operator.kubeconfig(str(api.url), tmp_path)
        monkeypatch.setenv("KUBECONFIG", str(config))  # restored afterwards (the benchmark sets it)
        try:
            row = await bench_operator.real_run(6, str(config), timeout=120, logdir=tmp_path)
        finally:
            api.close_watches()

    assert row["api"] == "real cluster" and row["n"] == 6 and row["nodes"] == 2
    assert row["crd_preexisting"] is False
    assert 0 < row["create_to_done_p50_s"] <= row["create_to_done_p99_s"] <= row["all_done_s"]
    assert row["bare_create_s"] > 0 and row["ratio_to_bare"] > 0
    writes = row["writes_by_resource"]
    assert writes["deployments+services (apply)"] == 12  # one Deployment and one Service each
    assert writes["modeldeployments/status"] >= 6
    assert writes["modeldeployments (kopf, from the watch)"] >= 0
    assert row["writes_per_deployment"] >= 3
    assert row["operator_rss_peak_mib"] > 0
    # The emulator is no local kube-apiserver: no control-plane CPU is read (nor waited for), the driver's is.
    assert row["control_plane_cpu_s"] is None and row["cpu_ratio_to_fair"] is None and row["waited_for_rest_s"] == 0
    assert row["driver_cpu_s"] > 0 and row["fair_driver_cpu_s"] > 0
    # Everything it made is gone: both namespaces with their contents, and the CRD it installed.
    assert not api.store.get(CRDS)
    assert not [k for k in api.store.get(NAMESPACES, {}) if k[1].startswith("turnout-bench-")]
    assert not api.store.get(MDS) and not api.store.get(("apps", "v1", "deployments"))
    creates = [r for r in api.requests if str(r.method.value).upper() == "POST" and r.resource is not None
               and r.resource.plural == "modeldeployments"]
    assert row["fair_create_s"] > 0 and row["ratio_to_fair"] > 0
    # bare, measured, the fair baseline's, the canary, and the two answered 429
    assert len(creates) == 3 * 6 + 1 + 2
    assert {r.params.get("watch") for r in api.requests if r.resource is not None
            and r.resource.plural == "modeldeployments" and r.namespace and r.namespace.startswith("turnout-bench-")
            and str(r.method.value).upper() == "GET"} >= {"true"}  # measured with watches


def test_only_a_local_kube_apiserver_on_the_servers_port_is_metered():
    assert not bench_operator.serves_locally("https://127.0.0.1:1")  # nothing of the kind listens there
