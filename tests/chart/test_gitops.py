"""GitOps: the Argo CD health check (Lua, run under Lua 5.1 as Argo CD's gopher-lua is) against
sample objects and against statuses built by the operator's own status functions; the Argo CD and
Flux examples carry values the chart accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import CHART, ROOT

from turnout.api import EngineReason
from turnout.controller import status as st
from turnout.controller.world import Problem

lua51 = pytest.importorskip("lupa.lua51", reason="lupa runs the Argo CD health check: pip install lupa")

GITOPS = ROOT / "deploy" / "gitops"
CUSTOMIZATION = GITOPS / "argocd" / "resource_customizations" / "turnout.dev" / "ModelDeployment"
SCRIPT = (CUSTOMIZATION / "health.lua").read_text()
NOW = "2026-11-25T01:00:00Z"


def health(obj: dict[str, Any]) -> dict[str, str]:
    """Run health.lua the way Argo CD does: the object as the global ``obj``, ``hs`` returned."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(SCRIPT)
    return {"status": hs["status"], "message": hs["message"]}


def md(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment",
                           "metadata": {"name": "qwen", "namespace": "models", "generation": generation},
                           "spec": {"model": {"name": "qwen2.5-instruct"}}}
    if status is not None:
        obj["status"] = status
    return obj


CASES = yaml.safe_load((CUSTOMIZATION / "health_test.yaml").read_text())["tests"]


@pytest.mark.parametrize("case", CASES, ids=[c["inputPath"] for c in CASES])
def test_health_check_on_argo_cd_style_test_cases(case: dict[str, Any]) -> None:
    obj = yaml.safe_load((CUSTOMIZATION / case["inputPath"]).read_text())
    assert health(obj) == case["healthStatus"]


def _planned(rollout: st.Rollout, desired: int = 2) -> dict[str, Any]:
    """A status the operator writes, as the API server (and so Argo CD) has it."""
    return st.wire(st.planned_status(generation=1, plan_fields=st.plan_status(engine="vllm", accelerator="nvidia"),
                                     reason="vllm on nvidia", rejected=[], desired_replicas=desired,
                                     rollout=rollout, previous=None, now=NOW))


def test_health_of_statuses_the_operator_writes() -> None:
    ready = _planned(st.Rollout(2, 2, 2, True, None))
    assert health(md(ready)) == {"status": "Healthy", "message": "ReplicasReady: 2/2 replicas ready"}

    rolling = _planned(st.Rollout(2, 1, 1, False, None))
    assert health(md(rolling)) == {"status": "Progressing",
                                   "message": "RolloutInProgress: 1/2 updated, 1/2 ready"}

    crashing = _planned(st.Rollout(2, 0, 2, False, Problem("CrashLoopBackOff", "engine exited with code 1")))
    assert health(md(crashing)) == {"status": "Degraded", "message": "CrashLoopBackOff: engine exited with code 1"}

    scaled_to_zero = _planned(st.Rollout(0, 0, 0, True, None), desired=0)
    assert health(md(scaled_to_zero))["status"] == "Healthy"

    rejected = st.wire(st.unresolved_status(phase="Failed", generation=1,
                                            resolved=st.Cond("Resolved", "False", "Rejected", "no GPU node fits 70B"),
                                            rejected=[EngineReason(engine="vllm", reason="no GPU")], rollout=None,
                                            previous=None, now=NOW))
    assert health(md(rejected)) == {"status": "Degraded", "message": "Rejected: no GPU node fits 70B"}

    waiting = st.wire(st.unresolved_status(phase="Resolving", generation=1,
                                           resolved=st.Cond("Resolved", "Unknown", "WaitingForNodes", "no node yet"),
                                           rejected=None, rollout=None, previous=None, now=NOW))
    assert health(md(waiting)) == {"status": "Progressing", "message": "WaitingForNodes: no node yet"}


def test_status_older_than_the_spec_is_progressing_never_healthy() -> None:
    ready = _planned(st.Rollout(2, 2, 2, True, None))
    assert health(md(ready, generation=2))["status"] == "Progressing"
    assert health(md(None))["status"] == "Progressing"


def test_conditions_alone_decide_without_a_phase() -> None:
    ready = _planned(st.Rollout(2, 2, 2, True, None))
    del ready["phase"]
    assert health(md(ready))["status"] == "Healthy"
    crashing = _planned(st.Rollout(2, 0, 2, False, Problem("OOMKilled", "out of memory")))
    del crashing["phase"]
    assert health(md(crashing)) == {"status": "Degraded", "message": "OOMKilled: out of memory"}


def test_argocd_cm_carries_the_same_lua() -> None:
    cm = yaml.safe_load((GITOPS / "argocd" / "argocd-cm-health.yaml").read_text())
    assert cm["data"]["resource.customizations.health.turnout.dev_ModelDeployment"] == SCRIPT


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_argo_cd_application_installs_the_chart_with_values_it_accepts() -> None:
    helm = pytest.importorskip("helm_python")
    apps = {d["metadata"]["name"]: d for d in _docs(GITOPS / "argocd" / "application.yaml")}
    chart_app = apps["turnout"]["spec"]
    assert (ROOT / chart_app["source"]["path"]) == CHART
    helm.Chart.load(CHART).validate_schema(chart_app["source"]["helm"]["valuesObject"])
    assert "ServerSideApply=true" in chart_app["syncPolicy"]["syncOptions"]
    models = apps["models"]["spec"]
    for name in models["source"]["directory"]["include"].strip("{}").split(","):
        assert (ROOT / models["source"]["path"] / name).is_file(), name
    assert "SkipDryRunOnMissingResource=true" in models["syncPolicy"]["syncOptions"]


def test_flux_helm_release_installs_the_chart_with_values_it_accepts() -> None:
    helm = pytest.importorskip("helm_python")
    docs = {d["kind"]: d for d in _docs(GITOPS / "flux" / "turnout.yaml")}
    release = docs["HelmRelease"]["spec"]
    assert (ROOT / release["chart"]["spec"]["chart"]).resolve() == CHART
    assert release["chart"]["spec"]["sourceRef"]["name"] == docs["GitRepository"]["metadata"]["name"]
    helm.Chart.load(CHART).validate_schema(release["values"])
    (check,) = _docs(GITOPS / "flux" / "models.yaml")[0]["spec"]["healthCheckExprs"]
    assert (check["apiVersion"], check["kind"]) == ("turnout.dev/v1alpha1", "ModelDeployment")
    assert set(check) == {"apiVersion", "kind", "inProgress", "failed", "current"}


def flux_health(obj: dict[str, Any]) -> str:
    """Flux's CEL status reader (RFC-0009): a generation mismatch is in progress; otherwise the first of
    inProgress, failed, current that is true decides; none true is in progress."""
    celpy = pytest.importorskip("celpy", reason="cel-python evaluates the Flux health expressions")
    (check,) = _docs(GITOPS / "flux" / "models.yaml")[0]["spec"]["healthCheckExprs"]
    status = obj.get("status") or {}
    if "observedGeneration" in status and status["observedGeneration"] != obj["metadata"].get("generation"):
        return "InProgress"
    env = celpy.Environment()
    activation = {k: celpy.json_to_cel(v) for k, v in obj.items()}
    for key, verdict in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        result = env.program(env.compile(check[key])).evaluate(activation)
        assert isinstance(result, celpy.celtypes.BoolType), f"{key}: {result!r}"
        if result:
            return verdict
    return "InProgress"


ARGO_TO_FLUX = {"Healthy": "Current", "Progressing": "InProgress", "Degraded": "Failed"}


@pytest.mark.parametrize("case", [c for c in CASES if c["inputPath"] != "testdata/new.yaml"],
                         ids=[c["inputPath"] for c in CASES if c["inputPath"] != "testdata/new.yaml"])
def test_flux_health_expressions_agree_with_the_argo_cd_check(case: dict[str, Any]) -> None:
    obj = yaml.safe_load((CUSTOMIZATION / case["inputPath"]).read_text())
    assert flux_health(obj) == ARGO_TO_FLUX[case["healthStatus"]["status"]]
