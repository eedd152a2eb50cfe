"""The Helm chart: renders, lints, validates for Kubernetes 1.30 and the newest bundled version,
grants exactly the operator's declared RBAC, ships the generated CRD, and passes its own
values.schema.json only with values the operator can use."""

from __future__ import annotations

import base64
import copy
import datetime
import json
import re
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chartkit import CHART, EVERYTHING, NAMESPACE, ROOT, SCENARIOS, by_kind, load_script, one, render, render_files

from turnout.agent.jointoken import usable_token
from turnout.agent.rbac import BOOTSTRAP_BINDINGS, BOOTSTRAP_GROUP
from turnout.api.crd import crd
from turnout.api.types import ACCELERATORS, ENGINES
from turnout.config import OperatorConfig, parse_config
from turnout.controller import options as operator_app
from turnout.controller.rbac import RULES
from turnout.images import OPERATOR_IMAGE, VERSION
from turnout.kube.rbac import Rule
from turnout.render import manifests

helm = pytest.importorskip("helm_python", reason="helm-python-sdk renders the chart: pip install helm-python-sdk")

KUBE_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
#: Kinds kubernetes-validate has no schema for (prometheus-operator CRDs); checked structurally below.
NO_SCHEMA = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PodMonitor")}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _triples(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


DECLARED = {(r.api_group, r.resource, v) for r in RULES for v in r.verbs}


def _container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


# ----- rendering, lint, validation -----


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_is_clean(scenario: str) -> None:
    report = helm.lint(CHART, SCENARIOS[scenario], strict=True, kube_version="v1.30.0", namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_object_validates_strictly(scenario: str, kube: str) -> None:
    objs = render(SCENARIOS[scenario])
    checked = 0
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) in NO_SCHEMA:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(obj, kube, strict=True)
            continue
        kubernetes_validate.validate(obj, kube, strict=True)
        checked += 1
    assert checked >= 6


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_names_are_dns_labels_and_objects_are_namespaced_where_they_should_be(scenario: str) -> None:
    cluster_kinds = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    for obj in render(SCENARIOS[scenario]):
        meta = obj["metadata"]
        if obj["kind"] == "CustomResourceDefinition":
            assert meta["name"] == "modeldeployments.turnout.dev"
        else:
            assert DNS_LABEL.match(meta["name"]) and len(meta["name"]) <= 63, meta["name"]
        if obj["kind"] in cluster_kinds:
            assert "namespace" not in meta
        elif obj["kind"] == "Secret" and obj["type"] == "bootstrap.kubernetes.io/token":
            assert meta["namespace"] == "kube-system"  # where the API server looks bootstrap tokens up
        elif obj["kind"] not in ("Role", "RoleBinding"):
            assert meta["namespace"] == NAMESPACE


def test_long_release_names_are_truncated_to_63_characters() -> None:
    name = "a-very-long-release-name-for-the-turnout-operator"[:53]
    objs = render({"podMonitor": {"enabled": True}}, name=name.replace("turnout", "mp") + "-xyzxyzx")
    names = [o["metadata"]["name"] for o in objs if o["kind"] != "CustomResourceDefinition"]
    assert max(len(n) for n in names) == 63
    assert all(DNS_LABEL.match(n) for n in names)
    assert len(set(n for n in names if n.endswith("-metrics"))) == 1


def test_chart_version_follows_the_images() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["appVersion"] == VERSION
    assert _container(render())["image"] == OPERATOR_IMAGE.ref()
    pinned = _container(render(EVERYTHING))["image"]
    assert pinned == f"ghcr.io/turnout-dev/operator@sha256:{'ab' * 32}"


def test_notes_say_what_to_do_next() -> None:
    notes = render_files()["turnout/templates/NOTES.txt"]
    assert "every namespace" in notes and "kubectl get modeldeployments --all-namespaces" in notes
    assert "/v1/chat/completions" in notes
    scoped = render_files(EVERYTHING)["turnout/templates/NOTES.txt"]
    assert "team-a, team-b" in scoped and "--namespace team-a" in scoped
    assert "crds.enabled is false" in scoped and "ServiceMonitor" in scoped and "PodMonitor" in scoped


# ----- the operator's contract: arguments, config, ports -----


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_operator_arguments_parse_with_the_operators_own_parser(scenario: str) -> None:
    values = SCENARIOS[scenario]
    objs = render(values)
    container = _container(objs)
    assert container["command"] == ["turnout", "operator"]
    parser = operator_app.argparse.ArgumentParser()
    operator_app.add_arguments(parser)
    options = operator_app.options_from(parser.parse_args(container["args"]))
    namespaces = values.get("watchNamespaces", [])
    assert options.all_namespaces is (not namespaces)
    assert options.namespaces == namespaces
    assert options.verbose is bool(values.get("verbose"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert options.metrics_port == ports["metrics"] and options.health_port == ports["health"]
    # --config points at the ConfigMap's key through the mount.
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert options.config_path == f"{mount['mountPath']}/config.yaml"
    volume = next(v for v in one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    configmap = one(objs, "ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert "config.yaml" in configmap["data"]


def test_turnout_operator_is_the_cli_entry_point() -> None:
    from turnout import cli

    if "operator" not in cli.SUBCOMMANDS:
        pytest.skip("`turnout operator` is not registered in turnout.cli yet (the chart runs it)")
    args = _container(render())["args"]
    parsed = cli.build_parser().parse_args(["operator", *args])
    assert parsed.command == "operator"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_config_map_is_a_config_the_operator_accepts(scenario: str) -> None:
    text = one(render(SCENARIOS[scenario]), "ConfigMap")["data"]["config.yaml"]
    config = parse_config(yaml.safe_load(text), "chart config")
    if scenario == "namespaced-everything":
        assert config.image("vllm", "nvidia") == "registry.example.com/vllm-cuda:0.1.0"
        assert config.image("mlx", "metal") is None  # null removes a default image
        assert config.image("llama.cpp", "cpu") == OperatorConfig().image("llama.cpp", "cpu")
        assert config.auto_engines == ("vllm", "sglang", "llama.cpp") and config.max_queue == 64
    elif scenario == "default":
        assert config == OperatorConfig()


def test_values_show_the_operators_real_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["config"] == OperatorConfig().model_dump(by_alias=True, mode="json")


def test_schema_config_section_matches_the_operator_config_model() -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    config = schema["properties"]["config"]
    aliases = {f.alias or name for name, f in OperatorConfig.model_fields.items()}
    assert set(config["properties"]) == aliases
    assert set(config["properties"]["images"]["properties"]) == set(ENGINES)
    assert set(schema["definitions"]["engineImages"]["properties"]) == set(ACCELERATORS)
    assert set(config["properties"]["autoEngines"]["items"]["enum"]) == set(ENGINES)


def test_config_change_rolls_the_operator() -> None:
    def checksum(values: dict[str, Any]) -> str:
        return one(render(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) != checksum({"config": {"maxQueue": 8}})
    assert checksum({}) == checksum({"verbose": True})


# ----- security -----


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_operator_pod_meets_the_restricted_pod_security_standard(scenario: str) -> None:
    """The checks of the Pod Security Standards' "restricted" profile, plus a read-only root."""
    pod = one(render(SCENARIOS[scenario]), "Deployment")["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= allowed_volumes
    for container in pod["containers"] + pod.get("initContainers", []):
        sc = container["securityContext"]
        assert not sc.get("privileged")
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert set(sc["capabilities"].get("add", [])) <= {"NET_BIND_SERVICE"}
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True
        assert sc.get("runAsUser", psc.get("runAsUser", 1)) != 0
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile"))
        assert seccomp["type"] in ("RuntimeDefault", "Localhost")
        assert sc["readOnlyRootFilesystem"] is True
        assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
        assert not container.get("ports") or all("hostPort" not in p for p in container["ports"])
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_probes_use_the_operators_health_endpoint() -> None:
    container = _container(render({"health": {"port": 9440}}))
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 9440, "protocol": "TCP"} in container["ports"]
    assert "--health-port=9440" in container["args"]


# ----- RBAC -----


def _watch_rbac(objs: list[dict], kind: str) -> list[dict]:
    """Roles or RoleBindings of the watched namespaces (not leader election's, tests/chart/test_chart_ha.py, nor
    the gateway scrape's, tests/chart/test_chart_gateway_scrape.py: both in the release's namespace)."""
    return [o for o in by_kind(objs, kind)
            if not o["metadata"]["name"].endswith(("-leader-election", "-gateway-scrape"))]


def test_cluster_wide_rbac_is_exactly_the_operators_declared_needs() -> None:
    objs = render()
    role = one(objs, "ClusterRole")
    assert _triples(role["rules"]) == DECLARED
    assert _watch_rbac(objs, "Role") == [] and _watch_rbac(objs, "RoleBinding") == []
    binding = one(objs, "ClusterRoleBinding")
    sa = one(objs, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_namespaced_rbac_uses_roles_and_a_cluster_role_only_for_nodes() -> None:
    objs = render(EVERYTHING)
    sync = load_script("sync-chart-rbac.py")
    (cluster_role,) = [r for r in by_kind(objs, "ClusterRole") if r["metadata"]["name"] == "turnout"]
    assert cluster_role["rules"], "Nodes are cluster-scoped: a ClusterRole must still grant them"
    assert all(sync.cluster_scoped(g, r) for g, r, _ in _triples(cluster_role["rules"]))
    roles = {r["metadata"]["namespace"]: r for r in _watch_rbac(objs, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in _watch_rbac(objs, "RoleBinding")}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for ns, role in roles.items():
        assert all(not sync.cluster_scoped(g, r) for g, r, _ in _triples(role["rules"]))
        assert _triples(role["rules"]) | _triples(cluster_role["rules"]) == DECLARED
        assert bindings[ns]["roleRef"]["name"] == role["metadata"]["name"]
        assert bindings[ns]["subjects"][0]["namespace"] == NAMESPACE


def test_rbac_rules_say_what_they_serve() -> None:
    text = render_files()["turnout/templates/rbac.yaml"]
    for rule in RULES:
        assert f"# {rule.why}\n" in text


def test_rbac_template_is_generated_from_the_declaration() -> None:
    sync = load_script("sync-chart-rbac.py")
    assert (CHART / "templates" / "_rbac_rules.tpl").read_text() == sync.render(), (
        "run python scripts/sync-chart-rbac.py")


def test_rbac_follows_a_changed_declaration(tmp_path: Path) -> None:
    """Regenerating the rules from a declaration with one more rule grants exactly that rule more."""
    sync = load_script("sync-chart-rbac.py")
    extra = (*RULES, Rule("", "configmaps", ("get",), "read a hypothetical model catalog"))
    copied = tmp_path / "turnout"
    shutil.copytree(CHART, copied)
    (copied / "templates" / "_rbac_rules.tpl").write_text(sync.render(extra))
    with helm.Chart.load(copied) as changed:
        for values in ({}, {"watchNamespaces": ["team-a"]}):
            text = changed.render(values, name="turnout", namespace=NAMESPACE)["turnout/templates/rbac.yaml"]
            roles = [d for d in yaml.safe_load_all(text) if d and d["kind"] in ("ClusterRole", "Role")
                     and not d["metadata"]["name"].endswith("-leader-election")]
            granted = set().union(*(_triples(r["rules"]) for r in roles))
            assert granted == DECLARED | {("", "configmaps", "get")}
            assert "# read a hypothetical model catalog" in text


def test_rbac_can_be_left_to_the_cluster_admin() -> None:
    objs = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops-made"}})
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                                                  "ServiceAccount")]
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops-made"
    with pytest.raises(helm.HelmError, match=r"serviceAccount\.name is required"):
        render({"serviceAccount": {"create": False}})


# ----- CRD -----


def test_chart_crd_is_the_generated_crd() -> None:
    generated = crd()
    committed = yaml.safe_load((ROOT / "crds" / "turnout.dev_modeldeployments.yaml").read_text())
    chart_crd = one(render(), "CustomResourceDefinition")
    assert chart_crd["spec"] == generated["spec"] == committed["spec"]
    assert {k: chart_crd[k] for k in ("apiVersion", "kind")} == {k: generated[k] for k in ("apiVersion", "kind")}
    assert chart_crd["metadata"]["name"] == generated["metadata"]["name"]
    assert generated["metadata"]["labels"].items() <= chart_crd["metadata"]["labels"].items()
    assert chart_crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_crd_template_is_in_sync_with_the_generator() -> None:
    sync = load_script("sync-chart-crds.py")
    assert (CHART / "templates" / "crd-modeldeployments.yaml").read_text() == sync.render(), (
        "run python scripts/sync-chart-crds.py")


def test_crds_can_be_dropped_on_uninstall_or_left_out() -> None:
    unkept = one(render({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "annotations" not in unkept["metadata"]
    assert by_kind(render({"crds": {"enabled": False}}), "CustomResourceDefinition") == []


# ----- values.schema.json -----


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"watchNamespace": ["a"]}, "additional properties 'watchNamespace' not allowed"),
        ({"config": {"maxQueu": 10}}, "additional properties 'maxQueu' not allowed"),
        ({"serviceMonitor": {"enable": True}}, "additional properties 'enable' not allowed"),
        ({"config": {"maxQueue": "many"}}, "want integer"),
        ({"crds": {"enabled": "yes"}}, "want boolean"),
        ({"watchNamespaces": "team-a"}, "want array"),
        ({"watchNamespaces": ["team-*"]}, "does not match pattern"),
        ({"config": {"images": {"vllm": {"tpu": "x:1"}}}}, "additional properties 'tpu' not allowed"),
        ({"config": {"autoEngines": ["vllm", "tensorrt"]}}, "/config/autoEngines/1"),
        ({"config": {"memoryHeadroom": 0.5}}, "minimum"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ],
)
def test_schema_rejects_typos_and_wrong_types(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(message)):
        helm.Chart.load(CHART).validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        render(values)


def test_schema_accepts_every_scenario_and_the_defaults() -> None:
    chart = helm.Chart.load(CHART)
    for values in SCENARIOS.values():
        chart.validate_schema(copy.deepcopy(values))


# ----- metrics, monitors, network policy -----


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_metrics_service_reaches_the_operator_pod() -> None:
    objs = render()
    service = one(objs, "Service")
    pod = one(objs, "Deployment")["spec"]["template"]
    assert _matches(service["spec"]["selector"], pod["metadata"]["labels"])
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in pod["spec"]["containers"][0]["ports"]}


def test_service_monitor_scrapes_the_metrics_service() -> None:
    objs = render(EVERYTHING)
    monitor, service = one(objs, "ServiceMonitor"), one(objs, "Service")
    assert _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    with pytest.raises(helm.HelmError, match=r"needs metrics\.service\.enabled"):
        render({"serviceMonitor": {"enabled": True}, "metrics": {"service": {"enabled": False}}})


def test_pod_monitor_selects_the_model_pods_the_operator_renders() -> None:
    for values, namespaces in ((EVERYTHING, {"matchNames": ["team-a", "team-b"]}),
                               ({"podMonitor": {"enabled": True}}, {"any": True})):
        monitor = one(render(values), "PodMonitor")
        model_pod_labels = {**manifests.labels("qwen"), manifests.ENGINE_LABEL: "vllm",
                            manifests.ACCELERATOR_LABEL: "nvidia"}
        assert _matches(monitor["spec"]["selector"]["matchLabels"], model_pod_labels)
        assert not _matches(monitor["spec"]["selector"]["matchLabels"],
                            one(render(), "Deployment")["spec"]["template"]["metadata"]["labels"])
        assert monitor["spec"]["namespaceSelector"] == namespaces
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] == manifests.PORT_NAME and endpoint["path"] == "/metrics"
        # Prometheus' meta labels spell each pod label with [^a-zA-Z0-9_] replaced by "_".
        sources = {s for r in endpoint["relabelings"] for s in r["sourceLabels"]}
        wanted = {manifests.INSTANCE_LABEL, manifests.ENGINE_LABEL, manifests.ACCELERATOR_LABEL}
        assert sources == {"__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", w) for w in wanted}


def test_network_policy_admits_only_metrics_and_health_and_allows_the_api_server() -> None:
    objs = render(EVERYTHING)
    policy = one(objs, "NetworkPolicy")
    pod = one(objs, "Deployment")["spec"]["template"]
    assert _matches(policy["spec"]["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {"metrics", "health"} <= {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert policy["spec"]["ingress"][0]["from"] == EVERYTHING["networkPolicy"]["metricsFrom"]
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {443, 6443, 53} <= egress_ports
    assert EVERYTHING["config"]["port"] in egress_ports  # the autoscaler scrapes the model pods' shims
    assert by_kind(render(), "NetworkPolicy") == []


def test_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    opaque = {"images", "resources", "podSecurityContext", "securityContext"}

    def leaves(node: dict[str, Any], prefix: str = "") -> list[str]:
        out = []
        for key, value in node.items():
            if isinstance(value, dict) and value and key not in opaque:
                out.extend(leaves(value, f"{prefix}{key}."))
            else:
                out.append(f"{prefix}{key}")
        return out

    readme = (CHART / "README.md").read_text()
    missing = [key for key in leaves(values) if f"`{key}`" not in readme]
    assert missing == [], f"values without a line in charts/turnout/README.md: {missing}"


def test_set_expressions_from_the_docs_work() -> None:
    """The --set lines docs/install.md shows parse as Helm parses them and render what they promise."""
    values = helm.parse_set_string(
        r"config.images.llama\.cpp.cpu=registry.example.com/turnout/llamacpp-cpu:0.1.0,"
        "config.autoEngines={vllm,sglang,llama.cpp,transformers,mlx},watchNamespaces={team-a,team-b}"
    )
    objs = render(values)
    config = parse_config(yaml.safe_load(one(objs, "ConfigMap")["data"]["config.yaml"]))
    assert config.image("llama.cpp", "cpu") == "registry.example.com/turnout/llamacpp-cpu:0.1.0"
    assert config.image("llama.cpp", "nvidia") == OperatorConfig().image("llama.cpp", "nvidia")
    assert "sglang" in config.auto_engines
    assert {r["metadata"]["namespace"] for r in _watch_rbac(objs, "Role")} == {"team-a", "team-b"}


def test_peering_is_refused_because_the_chart_grants_no_peering_rbac() -> None:
    with pytest.raises(helm.HelmError, match=r"--peering needs kopf\.dev"):
        render({"extraArgs": ["--peering=turnout"]})


def test_host_agents_keep_their_unexpired_chart_made_token_across_upgrades(tmp_path: Path) -> None:
    """The ``lookup`` branch: offline rendering has no cluster, so a copy of the chart gets lookup's answer."""
    def token(host: str, token_id: str, expiration: str | None, manager: str = "Helm") -> dict[str, Any]:
        data = {"token-id": token_id, "token-secret": "0123456789abcdef",
                **({"expiration": expiration} if expiration else {})}
        return {"type": "bootstrap.kubernetes.io/token", "metadata": {"labels": {
            "turnout.dev/host": host, "app.kubernetes.io/managed-by": manager,
            "app.kubernetes.io/instance": "turnout"}},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}

    existing = {"items": [token("mac1", "keep01", "2099-01-01T00:00:00Z"),
                          token("mac2", "old002", "2001-01-01T00:00:00Z"),
                          token("mac3", "cli003", None, manager="turnout-join-token"), token("mac4", "ever04", None),
                          {"type": "Opaque", "metadata": {}}]}
    copy_dir = tmp_path / "turnout"
    shutil.copytree(CHART, copy_dir)
    template = copy_dir / "templates" / "hostagents.yaml"
    lookup = '{{- with lookup "v1" "Secret" "kube-system" "" }}'
    assert lookup in template.read_text()
    answer = "{{- with (fromJson " + json.dumps(json.dumps(existing)) + ") }}"
    template.write_text(template.read_text().replace(lookup, answer))
    out = helm.Chart.load(copy_dir).render({"hostAgents": {"names": ["mac1", "mac2", "mac3", "mac4"]}},
                                           name="turnout", namespace=NAMESPACE, is_install=False, is_upgrade=True)
    secrets = {d["metadata"]["labels"]["turnout.dev/host"]: d for d in yaml.safe_load_all(
        out["turnout/templates/hostagents.yaml"]) if d and d["kind"] == "Secret"}
    assert secrets["mac1"]["metadata"]["name"] == "bootstrap-token-keep01"  # unexpired: kept
    assert secrets["mac1"]["stringData"]["expiration"] == "2099-01-01T00:00:00Z"
    assert secrets["mac4"]["metadata"]["name"] == "bootstrap-token-ever04"  # no expiry: kept
    assert "expiration" not in secrets["mac4"]["stringData"]
    assert secrets["mac2"]["metadata"]["name"] != "bootstrap-token-old002"  # expired: a new one
    assert secrets["mac3"]["metadata"]["name"] != "bootstrap-token-cli003"  # not the release's: left alone


def test_host_agents_get_bootstrap_tokens_and_the_bootstrapper_bindings_not_an_identity_of_the_chart() -> None:
    assert [o for o in render() if "agent" in o["metadata"]["name"] or o["kind"] == "Secret"] == []
    objs = render({"hostAgents": {"names": ["mac-studio-1", "mac-mini-2"]}})
    secrets = by_kind(objs, "Secret")
    assert {s["metadata"]["labels"]["turnout.dev/host"] for s in secrets} == {"mac-studio-1", "mac-mini-2"}
    now = datetime.datetime.now(datetime.timezone.utc)
    for secret in secrets:
        data = secret["stringData"]
        assert secret["type"] == "bootstrap.kubernetes.io/token" and secret["metadata"]["namespace"] == "kube-system"
        assert re.fullmatch(r"[a-z0-9]{6}", data["token-id"]) and re.fullmatch(r"[a-z0-9]{16}", data["token-secret"])
        assert secret["metadata"]["name"] == f"bootstrap-token-{data['token-id']}"
        assert data["usage-bootstrap-authentication"] == "true" and data["auth-extra-groups"] == BOOTSTRAP_GROUP
        left = datetime.datetime.fromisoformat(data["expiration"].replace("Z", "+00:00")) - now
        assert datetime.timedelta(hours=23) < left <= datetime.timedelta(hours=24)
        assert usable_token({"type": secret["type"], "data": {k: base64.b64encode(v.encode()).decode()
                                                               for k, v in data.items()}}, now)
    bindings = {b["roleRef"]["name"]: b["subjects"] for b in by_kind(objs, "ClusterRoleBinding")
                if b["roleRef"]["name"].startswith("system:")}
    assert bindings == {role: [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}]
                        for role, group, _ in BOOTSTRAP_BINDINGS}
    # Nothing else for the agents: their API calls are the Node authorizer's to grant.
    assert not [o for o in by_kind(objs, "ServiceAccount") if "agent" in o["metadata"]["name"]]
    assert not [o for o in by_kind(objs, "ClusterRole") if "agent" in o["metadata"]["name"]]
    assert len(by_kind(objs, "ClusterRoleBinding")) == len(by_kind(render(), "ClusterRoleBinding")) + 3
    forever = by_kind(render({"hostAgents": {"names": ["m"], "tokenTTL": ""}}), "Secret")
    assert "expiration" not in forever[0]["stringData"]
    text = render_files({"hostAgents": {"names": ["m"]}})["turnout/templates/hostagents.yaml"]
    assert all(f"# {why}\n" in text for _, _, why in BOOTSTRAP_BINDINGS)


def test_inference_pool_and_the_autoscalers_gateway_flags() -> None:
    """--inference-pool follows inferencePool.enabled (the picker comes from the config); --gateway-service names
    the chart's gateway Service exactly when the chart runs one."""
    parser = operator_app.argparse.ArgumentParser()
    operator_app.add_arguments(parser)
    default = operator_app.options_from(parser.parse_args(_container(render())["args"]))
    assert not default.inference_pool
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if (values.get("gateway") or {}).get("enabled"):
        assert default.gateway_service == f"{NAMESPACE}/turnout-gateway"
    else:
        assert default.gateway_service is None
    objs = render(EVERYTHING)
    options = operator_app.options_from(parser.parse_args(_container(objs)["args"]))
    assert options.inference_pool
    config = parse_config(yaml.safe_load(one(objs, "ConfigMap")["data"]["config.yaml"]), "chart config")
    picker = config.inference_pool.endpoint_picker
    assert picker is not None and (picker.name, picker.port, picker.failure_mode) == ("{name}-epp", 9002, "FailOpen")
