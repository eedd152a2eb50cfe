"""Rendered children: golden files, valid Kubernetes, stable, and the shim contract."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from tests_nodes import every_class

from turnout.api import ModelDeployment, ModelDeploymentSpec
from turnout.cli.plan import load_deployments, load_hardware
from turnout.config import OperatorConfig
from turnout.hardware import ClusterFeatures, parse_nodes, parse_quantity
from turnout.render import SPEC_HASH_LABEL, child_name, render
from turnout.resolver import Plan, resolve
from turnout.shimargs import ShimArgs

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
MIXED = ROOT / "examples" / "nodes" / "mixed.yaml"


def plan_command(path: Path) -> tuple[Path, bool]:
    """The node list (and --lws) an example names in its ``# plan:`` line; the mixed cluster otherwise."""
    for line in path.read_text().splitlines():
        if line.startswith("# plan:"):
            words = line.split()
            return ROOT / words[words.index("--nodes") + 1], "--lws" in words
    return MIXED, False


def _rendered(path: Path) -> list[dict[str, Any]]:
    nodes, lws = plan_command(path)
    hw = load_hardware(str(nodes), ClusterFeatures(leader_worker_set=lws))
    out = []
    for md in load_deployments(str(path)):
        plan = resolve(md.spec, hw)
        assert isinstance(plan, Plan), plan.to_dict()
        out += render(plan, md)
    return out


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_golden_manifests(path: Path) -> None:
    text = yaml.safe_dump_all(_rendered(path), sort_keys=False, width=120)
    golden = GOLDEN / f"{path.stem}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.exists(), f"missing {golden}: run UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == golden.read_text(), f"rendering changed: review and run UPDATE_GOLDEN=1 pytest {__file__}"


@pytest.mark.parametrize("version", ["1.30.0", kubernetes_validate.latest_version()])
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_manifests_are_valid_kubernetes(path: Path, version: str) -> None:
    for obj in _rendered(path):
        if obj["kind"] == "LeaderWorkerSet":  # a CRD: its pod templates are checked as Pods here
            for role in ("leaderTemplate", "workerTemplate"):
                template = obj["spec"]["leaderWorkerTemplate"][role]
                pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", **template["metadata"]},
                       "spec": template["spec"]}
                kubernetes_validate.validate(pod, version, strict=True)
            continue
        kubernetes_validate.validate(obj, version, strict=True)


def _md(spec: dict[str, Any], name: str = "m") -> ModelDeployment:
    return ModelDeployment.model_validate({"metadata": {"name": name, "namespace": "ns"}, "spec": spec})


CPU = parse_nodes([{"metadata": {"name": "c"}, "status": {"allocatable": {"cpu": "8", "memory": "64Gi"}}}])


def _deployment(spec: dict[str, Any], name: str = "m") -> dict[str, Any]:
    plan = resolve(ModelDeploymentSpec.model_validate(spec), CPU)
    assert isinstance(plan, Plan)
    return next(o for o in render(plan, _md(spec, name)) if o["kind"] == "Deployment")


BASE = {"model": {"name": "qwen2.5-instruct", "size": 0.5, "format": "gguf"}}


def test_render_is_stable() -> None:
    assert _deployment(BASE) == _deployment(dict(BASE))


def test_replicas_do_not_change_the_spec_hash_but_the_template_does() -> None:
    one, three = _deployment(BASE), _deployment({**BASE, "replicas": 3})
    assert three["spec"]["replicas"] == 3
    assert one["metadata"]["labels"][SPEC_HASH_LABEL] == three["metadata"]["labels"][SPEC_HASH_LABEL]
    other = _deployment({**BASE, "engineArgs": {"n_ctx": 512}})
    assert other["metadata"]["labels"][SPEC_HASH_LABEL] != one["metadata"]["labels"][SPEC_HASH_LABEL]
    assert (
        other["spec"]["template"]["metadata"]["labels"][SPEC_HASH_LABEL] == other["metadata"]["labels"][SPEC_HASH_LABEL]
    )


def test_security_context_is_restricted() -> None:
    pod = _deployment(BASE)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = pod["containers"][0]["securityContext"]
    assert ctx == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/models", "/tmp"} <= mounts


def test_probes_hit_the_shim_health_endpoint() -> None:
    c = _deployment(BASE)["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/live", "port": "http"}


def test_probes_add_at_most_a_second_yet_allow_a_thirty_minute_load() -> None:
    c = _deployment(BASE)["spec"]["template"]["spec"]["containers"][0]
    startup, readiness = c["startupProbe"], c["readinessProbe"]
    # Ready within about a second of /health answering: neither probe waits longer than that between asks.
    assert startup["periodSeconds"] == 1 and readiness["periodSeconds"] == 1
    assert startup.get("initialDelaySeconds", 0) == 0 and readiness.get("initialDelaySeconds", 0) == 0
    # The model-load budget is unchanged: failures × period = 30 minutes before the kubelet gives up.
    assert startup["failureThreshold"] * startup["periodSeconds"] == 30 * 60
    # Liveness only starts after the startup probe passed, and tolerates a busy engine for 30 s.
    assert c["livenessProbe"]["periodSeconds"] * c["livenessProbe"]["failureThreshold"] >= 30


def test_user_env_is_sorted_and_overrides() -> None:
    env = _deployment({**BASE, "env": [{"name": "ZZ", "value": "1"}, {"name": "HF_HOME", "value": "/x"}]})
    names = [e["name"] for e in env["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert names == sorted(names)
    values = {e["name"]: e.get("value") for e in env["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert values["HF_HOME"] == "/x" and values["ZZ"] == "1"


def test_api_key_is_mounted_never_inline() -> None:
    dep = _deployment({**BASE, "apiKeySecretRef": {"name": "key", "key": "token"}})
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert "--api-key-file" in c["command"]
    assert c["command"][c["command"].index("--api-key-file") + 1] == "/var/run/turnout/api-key/token"
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "api-key")
    assert vol["secret"]["secretName"] == "key"


def test_cache_claim_and_existing_claim() -> None:
    plan = resolve(ModelDeploymentSpec.model_validate(BASE), CPU)
    made = render(plan, _md({**BASE, "cache": {"size": "10Gi", "storageClassName": "fast"}}))
    claim = next(o for o in made if o["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    reused = render(plan, _md({**BASE, "cache": {"existingClaim": "shared"}}))
    assert [o["kind"] for o in reused] == ["Deployment", "Service"]
    dep = reused[0]["spec"]["template"]["spec"]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "shared"}} in dep["volumes"]


def test_child_names_are_dns_labels() -> None:
    assert child_name("qwen.2.5") == "qwen-2-5"
    assert child_name("7b-model") == "m-7b-model"
    long = child_name("a" * 250, "-cache")
    assert len(long) <= 63 and long.endswith("-cache")


def _every_plan() -> list[tuple[Plan, dict[str, Any]]]:
    """A plan for every engine × accelerator the resolver can produce."""
    hw = parse_nodes(every_class())
    specs = []
    for fmt, quant in [("pytorch", None), ("awq", None), ("gguf", None), ("mlx", None), ("fp8", None)]:
        for engine in ["auto", "vllm", "sglang", "llama.cpp", "transformers", "mlx"]:
            for accel in ["auto", "nvidia", "ascend", "metal", "cpu"]:
                for model in ({"name": "qwen2.5-instruct", "size": 7}, {"name": "qwen3", "size": 8}):
                    spec = {"model": {**model, "format": fmt}, "engine": engine, "accelerator": {"type": accel}}
                    if quant:
                        spec["model"]["quantization"] = quant
                    specs.append(spec)
    specs += [{"model": {"name": "bge-large-en"}, "accelerator": {"type": a}} for a in ("nvidia", "cpu", "ascend")]
    specs += [{"model": {"name": "bge-reranker-large"}, "apiKeySecretRef": {"name": "k"}, "engineArgs": {"x": [1]}}]
    specs += [{"model": {"name": "qwen2.5-instruct", "size": 7}, "engine": engine,
               "lora": {"maxLoaded": 3, "maxRank": 64}, "adapters": [{"name": "sql", "uri": "hf://o/sql-lora"}]}
              for engine in ("vllm", "transformers")]
    out = []
    for spec in specs:
        try:
            parsed = ModelDeploymentSpec.model_validate(spec)
        except ValueError:
            continue
        plan = resolve(parsed, hw, OperatorConfig(auto_engines=("vllm", "sglang", "llama.cpp", "transformers", "mlx")))
        if isinstance(plan, Plan):
            out.append((plan, spec))
    return out


def test_every_renderable_command_is_accepted_by_the_shim_parser() -> None:
    """The operator renders argv; the shim parses it: both sides of one contract agree."""
    from turnout.render import shim_args

    seen: set[tuple[str, str]] = set()
    for plan, spec in _every_plan():
        dep = next(o for o in render(plan, _md(spec)) if o["kind"] == "Deployment")
        argv = dep["spec"]["template"]["spec"]["containers"][0]["command"]
        assert argv[0] == "turnout-shim"
        parsed = ShimArgs.parse(argv[1:])
        assert parsed == shim_args(plan, ModelDeploymentSpec.model_validate(spec), "m", OperatorConfig())
        assert parsed.to_argv() == argv
        seen.add((plan.engine, plan.accelerator))
    assert seen == {
        ("vllm", "nvidia"),
        ("vllm", "ascend"),
        ("sglang", "nvidia"),
        ("llama.cpp", "nvidia"),
        ("llama.cpp", "metal"),
        ("llama.cpp", "cpu"),
        ("transformers", "nvidia"),
        ("transformers", "ascend"),
        ("transformers", "metal"),
        ("transformers", "cpu"),
        ("mlx", "metal"),
    }


def test_every_plannable_image_is_in_the_image_matrix() -> None:
    from turnout.images import IMAGE_MATRIX

    refs = {spec.ref() for spec in IMAGE_MATRIX.values()}
    for plan, _ in _every_plan():
        assert plan.image in refs
        assert (plan.engine, plan.accelerator) in IMAGE_MATRIX


def test_model_deployment_round_trip() -> None:
    md = ModelDeployment.model_validate(
        {"apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "x"}, "spec": BASE}
    )
    assert md.served_name == "x"


TINY = {"model": {"uri": "builtin://tiny-llama.gguf", "type": "llm", "size": 0.01}}


def _requests(spec: dict[str, Any]) -> dict[str, Any]:
    return _deployment(spec)["spec"]["template"]["spec"]["containers"][0]["resources"]


def test_a_tiny_cpu_model_requests_a_fraction_of_a_core_and_its_measured_memory() -> None:
    from turnout.resolver.engines import ENGINES

    res = _requests(TINY)
    # Several fit on a 2-core node (the 1-core, 2 GiB request made the second Unschedulable).
    assert res == {"requests": {"cpu": "250m", "memory": res["requests"]["memory"]}}
    memory = parse_quantity(res["requests"]["memory"]) / 2**20
    baseline = ENGINES["llama.cpp"].cpu_baseline_mib
    assert baseline is not None and baseline <= memory < baseline + 128  # the engine's floor, weights are ~nothing
    assert memory % 64 == 0


def test_cpu_requests_grow_with_the_weights_up_to_a_core() -> None:
    small = _requests({"model": {"name": "qwen2.5-instruct", "size": 0.5, "format": "gguf", "quantization": "Q4_K_M"},
                       "accelerator": {"type": "cpu"}})["requests"]
    large = _requests({"model": {"name": "qwen2.5-instruct", "size": 14, "format": "gguf", "quantization": "Q4_K_M"},
                       "accelerator": {"type": "cpu"}})["requests"]
    assert parse_quantity(small["cpu"]) < 1 and large["cpu"] == "1"
    assert parse_quantity(large["memory"]) > 14e9 * 4.8 / 8 * 1.2  # weights × headroom, plus the engine's baseline


def test_spec_resources_override_the_derived_requests_and_a_limit_caps_them() -> None:
    asked = _requests({**TINY, "resources": {"requests": {"cpu": "2", "memory": "3Gi"}}})
    assert asked["requests"] == {"cpu": "2", "memory": "3Gi"}
    capped = _requests({**TINY, "resources": {"limits": {"cpu": "100m", "memory": "128Mi"}}})
    assert capped["requests"] == {"cpu": "100m", "memory": "128Mi"}  # else request > limit: an invalid pod
    assert capped["limits"] == {"cpu": "100m", "memory": "128Mi"}
    roomy = _requests({**TINY, "resources": {"limits": {"memory": "8Gi"}}})
    assert roomy["requests"] == _requests(TINY)["requests"] and roomy["limits"] == {"memory": "8Gi"}
