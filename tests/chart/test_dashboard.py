"""The Grafana dashboard (charts/turnout/dashboards/turnout.json): shipped as a ConfigMap for the Grafana
sidecar only when ``dashboard.enabled``, and every metric and label its PromQL reads is one that the
shim, the gateway or the operator exports (or that the chart's monitors attach to their series).

The exported names come from the three apps' own registries, rendered in the Prometheus text format
and parsed back; the queries are parsed with ``promql-parser`` (the Rust ``promql-parser`` crate's
Python binding) after Grafana's variable interpolation, and each expression's labels are followed
through selectors, functions, aggregations and vector matching.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import promql_parser as pq
import pytest
from chartkit import CHART, EVERYTHING, NAMESPACE, by_kind, one, render
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from turnout.controller.metrics import Metrics, Replicas
from turnout.gateway.metrics import GatewayMetrics
from turnout.shim.metrics import ShimMetrics

helm = pytest.importorskip("helm_python", reason="helm-python-sdk renders the chart: pip install helm-python-sdk")

DASHBOARD = CHART / "dashboards" / "turnout.json"
ON = {"dashboard": {"enabled": True}}
#: Target labels prometheus-operator gives every series a ServiceMonitor or PodMonitor scrapes
#: (its generated relabelings: namespace, service, pod, container, endpoint; Prometheus adds job, instance).
TARGET_LABELS = {"namespace", "service", "pod", "container", "endpoint", "job", "instance"}
#: Grafana's interpolation of the dashboard's variables, as a query sees it with "All" selected.
VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*", "$model": ".*"}


def dashboards(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in by_kind(render(values), "ConfigMap")
            if o["metadata"]["labels"].get("app.kubernetes.io/component") == "dashboard"]


def _scraped(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Sample name -> label names, as Prometheus reads the registry's /metrics text."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def _with_children(owner: object) -> CollectorRegistry:
    """The owner's registry after one child of each labelled metric exists (a labelled metric without
    children exposes no sample)."""
    for metric in vars(owner).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*("x" for _ in metric._labelnames))
    return owner.registry  # type: ignore[attr-defined,no-any-return]


@functools.lru_cache(maxsize=1)
def exported() -> dict[str, tuple[str, set[str]]]:
    """Sample name -> (which app, label names), from the shim's, the gateway's and the operator's registries."""
    gateway = GatewayMetrics()
    gateway.of("models", "tiny", "tiny-chat").answered(200)
    operator = Metrics(lambda: [{"engine": "vllm", "accelerator": "nvidia", "phase": "Ready"}],
                       lambda: [Replicas("models", "tiny", "tiny-chat", 2, 1)])
    out: dict[str, tuple[str, set[str]]] = {}
    for app, registry in (("shim", _with_children(ShimMetrics("vllm", "tiny-chat", "chat"))),
                          ("gateway", _with_children(gateway)), ("operator", _with_children(operator))):
        for name, labels in _scraped(registry).items():
            assert name not in out, f"{name} exported by both {out[name][0]} and {app}"
            out[name] = (app, labels)
    return out


@functools.lru_cache(maxsize=1)
def attached() -> dict[str, set[str]]:
    """App -> the labels its monitor attaches to every series (target labels, the PodMonitor's relabelings)."""
    objs = render({**EVERYTHING, **ON})
    (endpoint,) = one(objs, "PodMonitor")["spec"]["podMetricsEndpoints"]
    pod = TARGET_LABELS | {r["targetLabel"] for r in endpoint["relabelings"]}
    service = {"operator": TARGET_LABELS, "gateway": TARGET_LABELS}
    assert by_kind(objs, "ServiceMonitor", gateway=True), "the gateway's series need its ServiceMonitor"
    return {"shim": pod, **service}


def labels_of(name: str) -> set[str]:
    assert name in exported(), f"{name!r} is not exported by the shim, the gateway or the operator"
    app, labels = exported()[name]
    return labels | attached()[app]


def interpolate(expr: str) -> str:
    for var, value in VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"a variable the dashboard does not define: {expr}"
    return expr


class Unknown(AssertionError):
    pass


def check(node: Any, where: str) -> set[str] | None:
    """The labels of the expression's result (None: a scalar or string), asserting every metric it reads
    exists and every label it matches, groups or joins on is there."""
    if isinstance(node, (pq.NumberLiteral, pq.StringLiteral)):
        return None
    if isinstance(node, pq.ParenExpr):
        return check(node.expr, where)
    if isinstance(node, pq.MatrixSelector):
        return check(node.vector_selector, where)
    if isinstance(node, pq.VectorSelector):
        labels = labels_of(node.name)
        for m in node.matchers.matchers:
            if m.name not in labels:
                raise Unknown(f"{where}: {node.name} has no label {m.name!r} (it has {sorted(labels)})")
        return labels
    if isinstance(node, pq.Call):
        args = [check(a, where) for a in node.args]
        if node.func.name == "histogram_quantile":
            inner = args[1] or set()
            if "le" not in inner:
                raise Unknown(f"{where}: histogram_quantile over series without le")
            return inner - {"le"}
        vectors = [a for a in args if a is not None]
        return vectors[0] if vectors else None
    if isinstance(node, pq.AggregateExpr):
        inner = check(node.expr, where) or set()
        grouping = set(node.modifier.labels) if node.modifier is not None else set()
        missing = grouping - inner
        if missing:
            raise Unknown(f"{where}: {node.op} by {sorted(missing)}, labels its input lacks ({sorted(inner)})")
        if node.modifier is None:
            return set()
        return grouping if node.modifier.type == pq.AggModifierType.By else inner - grouping
    if isinstance(node, pq.BinaryExpr):
        lhs, rhs = check(node.lhs, where), check(node.rhs, where)
        if lhs is None or rhs is None:
            return rhs if lhs is None else lhs
        mod = node.modifier
        if mod is not None and mod.matching is not None:
            on = set(mod.matching.labels)
            for side, labels in (("left", lhs), ("right", rhs)):
                if on - labels:
                    raise Unknown(f"{where}: matching on {sorted(on - labels)}, not on the {side} side")
        group = set(mod.group_labels) if mod is not None and mod.group_labels else set()
        if group - rhs:
            raise Unknown(f"{where}: group_left {sorted(group - rhs)}, not on the right side")
        return lhs | group
    raise AssertionError(f"{where}: an expression the check does not know: {type(node).__name__}")


def panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


# ----- the ConfigMap -----


def test_the_dashboard_configmap_renders_only_when_enabled() -> None:
    assert dashboards({}) == []
    (cm,) = dashboards(ON)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == NAMESPACE
    dashboard = json.loads(cm["data"]["turnout.json"])
    assert dashboard == json.loads(DASHBOARD.read_text())  # the chart's file, whole
    (moved,) = dashboards({"dashboard": {"enabled": True, "namespace": "monitoring", "label": "dash",
                                         "labelValue": "yes", "annotations": {"grafana_folder": "Turnout"}}})
    assert (moved["metadata"]["namespace"], moved["metadata"]["labels"]["dash"]) == ("monitoring", "yes")
    assert moved["metadata"]["annotations"] == {"grafana_folder": "Turnout"}
    assert "grafana_dashboard" not in moved["metadata"]["labels"]


def test_lint_with_the_dashboard_and_every_monitor() -> None:
    report = helm.lint(CHART, {**EVERYTHING, **ON}, strict=True, kube_version="v1.30.0", namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_unknown_dashboard_values_are_refused() -> None:
    with pytest.raises(helm.HelmError, match="dashboard"):
        render({"dashboard": {"enabled": True, "folder": "x"}})


def test_gateway_service_monitor_scrapes_the_gateway_service_keeping_model_namespaces() -> None:
    objs = render(EVERYTHING)
    monitor, service = one(objs, "ServiceMonitor", gateway=True), one(objs, "Service", gateway=True)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["honorLabels"] is True  # the series' own namespace label, not the gateway pod's
    assert one(objs, "ServiceMonitor")["spec"]["endpoints"][0]["honorLabels"] is True
    assert by_kind(render({**EVERYTHING, "gateway": {"enabled": False}}), "ServiceMonitor", gateway=True) == []


# ----- the queries -----


def test_the_dashboard_is_grafana_json_with_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "model"} <= variables.keys()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    titles = " ".join(p["title"].lower() for p in panels())
    for topic in ("requests", "errors", "first token", "tokens / s", "in flight", "queued", "replicas",
                  "scale events", "reconciles"):
        assert topic in titles


def test_every_metric_and_label_the_queries_read_is_exported() -> None:
    read: set[str] = set()

    def seen(node: Any) -> None:
        if isinstance(node, pq.VectorSelector):
            read.add(node.name)

    for panel in panels():
        for target in panel["targets"]:
            where = f"{panel['title']} {target['refId']}"
            ast = pq.parse(interpolate(target["expr"]))
            assert check(ast, where) is not None, f"{where}: a panel query that yields a scalar, not series"
            pq.walk(ast, post_visit=seen)
    apps = {exported()[name][0] for name in read}
    assert apps == {"shim", "gateway", "operator"}


def test_every_variable_query_reads_an_exported_label() -> None:
    for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable["query"]["query"])
        assert match, variable["query"]
        selector, label = match.groups()
        labels = check(pq.parse(interpolate(selector)), variable["name"])
        assert labels is not None and label in labels, variable["name"]


@pytest.mark.parametrize(("expr", "message"), [
    ("sum(rate(turnout_gateway_requests_total[5m]))", None),
    ("rate(turnout_gateway_request_total[5m])", "not exported"),
    ('turnout_requests_in_flight{model="x"}', "no label 'model'"),
    ("sum by (code) (turnout_gateway_in_flight)", "labels its input lacks"),
    ("histogram_quantile(0.9, sum by (model) (rate(turnout_gateway_time_to_first_token_seconds_bucket[5m])))",
     "without le"),
    ("turnout_requests_in_flight * on (pod) group_left (engine_x) turnout_shim_info", "group_left"),
    ("sum by (modeldeployment, pod, namespace) (turnout_requests_in_flight)", None),
])
def test_the_check_catches_names_and_labels_that_do_not_exist(expr: str, message: str | None) -> None:
    if message is None:
        check(pq.parse(expr), "ok")
        return
    with pytest.raises(AssertionError, match=message):
        check(pq.parse(expr), "bad")

