"""Children of a ModelDeployment, rendered from its Plan: Deployment, Service, and a cache PVC.

Pure and stable: dict keys in a fixed order, env sorted, and a spec-hash label
computed from everything but the replica count, so equal inputs render equal
objects and a changed pod template rolls out while scaling does not.
Owner references are added by the controller, not here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from turnout.api.types import ModelDeploymentSpec
from turnout.config import OperatorConfig
from turnout.resolver.plan import Plan
from turnout.shimargs import ShimArgs
from turnout.sources import PVC_ROOT, pvc_mount

MANAGED_BY = "turnout"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
COMPONENT = "model-server"
INSTANCE_LABEL = "turnout.dev/deployment"
SPEC_HASH_LABEL = "turnout.dev/spec-hash"
ENGINE_LABEL = "turnout.dev/engine"
ACCELERATOR_LABEL = "turnout.dev/accelerator"
CACHE_MOUNT = "/models"
API_KEY_DIR = "/var/run/turnout/api-key"
RUN_AS = 1000
PORT_NAME = "http"
# The shim reads its shutdown grace from this variable (turnout.shim.__main__.GRACE_ENV).
SHUTDOWN_GRACE_ENV = "TURNOUT_SHUTDOWN_GRACE_SECONDS"
PRESTOP_SECONDS = 5
SHUTDOWN_MARGIN_SECONDS = 5


def child_name(name: str, suffix: str = "") -> str:
    """A DNS-1035 label (Service names need one) from a ModelDeployment name, <= 63 chars."""
    base = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-") or "model"
    if not base[0].isalpha():
        base = f"m-{base}"
    if len(base) + len(suffix) > 63:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        base = f"{base[: 63 - len(suffix) - 9].rstrip('-')}-{digest}"
    return base + suffix


def endpoint(name: str, namespace: str, port: int) -> str:
    """The in-cluster OpenAI base URL of a ModelDeployment's Service."""
    return f"http://{child_name(name)}.{namespace}.svc:{port}/v1"


def labels(name: str) -> dict[str, str]:
    """Labels every child carries.

    No ``app.kubernetes.io/instance``: Argo CD's label tracking reads that label, and an
    Application named like a model would claim (and prune) the model's children.
    """
    return {
        "app.kubernetes.io/component": COMPONENT,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/name": "turnout",
        INSTANCE_LABEL: child_name(name),
    }


def selector(name: str) -> dict[str, str]:
    """The pod selector of the Deployment and the Service."""
    return {INSTANCE_LABEL: child_name(name)}


def spec_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def shim_args(plan: Plan, spec: ModelDeploymentSpec, served_name: str, config: OperatorConfig) -> ShimArgs:
    """The shim's command line for this plan (the same contract the shim parses)."""
    key_file = None
    if spec.api_key_secret_ref:
        key_file = f"{API_KEY_DIR}/{spec.api_key_secret_ref.key}"
    return ShimArgs(
        engine=plan.engine,
        model=plan.model.uri,
        served_model_name=served_name,
        model_type=plan.model.model_type,
        device=plan.device,
        port=config.port,
        tensor_parallel_size=plan.tensor_parallel_size,
        model_format=plan.model.format,
        quantization=plan.model.quantization,
        api_key_file=key_file,
        max_queue=config.max_queue,
        engine_args=dict(spec.engine_args or {}),
    )


def _mib(mib: int) -> str:
    return f"{-(-mib // 1024)}Gi"


def _resources(plan: Plan, spec: ModelDeploymentSpec) -> dict[str, Any]:
    requests: dict[str, str] = {"cpu": "1"}
    limits: dict[str, str] = {}
    p = plan.placement
    if p.resource and p.devices:
        limits[p.resource] = str(p.devices)
    elif p.resource:  # metal: one host's GPU
        limits[p.resource] = "1"
    if plan.accelerator == "cpu" and p.memory_needed_mib:
        requests["memory"] = _mib(p.memory_needed_mib)
    if spec.resources:
        requests.update(spec.resources.requests or {})
        user_limits = dict(spec.resources.limits or {})
        if p.resource:
            user_limits.pop(p.resource, None)  # the plan owns the accelerator count
        limits.update(user_limits)
    out: dict[str, Any] = {"requests": dict(sorted(requests.items()))}
    if limits:
        out["limits"] = dict(sorted(limits.items()))
    return out


def shutdown_timing(termination_grace_seconds: int) -> tuple[int, int]:
    """``(preStop sleep, shim grace)`` that fit in the pod's ``terminationGracePeriodSeconds``.

    The kubelet's clock starts with the preStop hook; the shim then has its grace to finish
    in-flight streams, and a margin is left for stopping the engine before SIGKILL.
    """
    quarter = termination_grace_seconds // 4
    prestop = min(PRESTOP_SECONDS, quarter)
    margin = min(SHUTDOWN_MARGIN_SECONDS, quarter)
    return prestop, max(1, termination_grace_seconds - prestop - margin)


def _env(spec: ModelDeploymentSpec, shim_grace: int) -> list[dict[str, Any]]:
    env: dict[str, dict[str, Any]] = {
        SHUTDOWN_GRACE_ENV: {"name": SHUTDOWN_GRACE_ENV, "value": str(shim_grace)},
        "HF_HOME": {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/huggingface"},
        "TURNOUT_CACHE": {"name": "TURNOUT_CACHE", "value": CACHE_MOUNT},
        "TMPDIR": {"name": "TMPDIR", "value": "/tmp"},
        "XDG_CACHE_HOME": {"name": "XDG_CACHE_HOME", "value": f"{CACHE_MOUNT}/xdg"},
    }
    if spec.hf_token_secret_ref:
        env["HF_TOKEN"] = {
            "name": "HF_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": spec.hf_token_secret_ref.name, "key": spec.hf_token_secret_ref.key}},
        }
    for var in spec.env or []:
        env[var.name] = var.model_dump(by_alias=True, exclude_none=True)
    return [env[k] for k in sorted(env)]


def _probe(path: str, period: int, failures: int, timeout: int = 5) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _volumes(plan: Plan, spec: ModelDeploymentSpec, name: str, config: OperatorConfig) -> tuple[list, list]:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    cache = spec.cache
    if cache and cache.existing_claim:
        source: dict[str, Any] = {"persistentVolumeClaim": {"claimName": cache.existing_claim}}
    elif cache and cache.size:
        source = {"persistentVolumeClaim": {"claimName": child_name(name, "-cache")}}
    else:
        source = {"emptyDir": {}}
    volumes.append({"name": "model-cache", **source})
    mounts.append({"name": "model-cache", "mountPath": CACHE_MOUNT})
    if plan.model.uri.startswith("pvc://"):
        claim, _inner = pvc_mount(plan.model.uri)
        volumes.append({"name": "model-source", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "model-source", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True})
    volumes.append({"name": "tmp", "emptyDir": {}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    if plan.shm:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shm_size}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if spec.api_key_secret_ref:
        ref = spec.api_key_secret_ref
        volumes.append(
            {
                "name": "api-key",
                "secret": {
                    "secretName": ref.name,
                    "items": [{"key": ref.key, "path": ref.key}],
                    "defaultMode": 0o440,
                },
            }
        )
        mounts.append({"name": "api-key", "mountPath": API_KEY_DIR, "readOnly": True})
    return volumes, mounts


def _tolerations(plan: Plan, spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    tols = [dict(t) for t in plan.placement.tolerations]
    tols += [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations or []]
    unique = {json.dumps(t, sort_keys=True): t for t in tols}
    return [unique[k] for k in sorted(unique)]


def _spec(md: Mapping[str, Any]) -> ModelDeploymentSpec:
    """``md["spec"]``, parsed unless the caller already did (the controller parses each object once)."""
    spec = md["spec"]
    return spec if isinstance(spec, ModelDeploymentSpec) else ModelDeploymentSpec.model_validate(spec)


def render_deployment(plan: Plan, md: Mapping[str, Any], config: OperatorConfig | None = None) -> dict[str, Any]:
    """The apps/v1 Deployment that runs the shim for this plan."""
    config = config or OperatorConfig()
    meta = md["metadata"]
    name, namespace = meta["name"], meta.get("namespace", "default")
    spec = _spec(md)
    served = spec.served_model_name or name
    args = shim_args(plan, spec, served, config)
    volumes, mounts = _volumes(plan, spec, name, config)
    prestop, shim_grace = shutdown_timing(config.termination_grace_seconds)
    container: dict[str, Any] = {
        "name": "model-server",
        "image": plan.image,
        "imagePullPolicy": config.image_pull_policy,
        "command": args.to_argv(),
        "ports": [{"name": PORT_NAME, "containerPort": config.port, "protocol": "TCP"}],
        "env": _env(spec, shim_grace),
        "resources": _resources(plan, spec),
        "volumeMounts": mounts,
        # Model load can take many minutes; the startup probe holds liveness off until then.
        # Liveness asks /live (503 only once the engine is dead), so a slow load is not restarted.
        "startupProbe": _probe("/health", 10, 180),
        "readinessProbe": _probe("/health", 5, 3),
        "livenessProbe": _probe("/live", 10, 3),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if prestop:
        # Let endpoints drop the pod before the shim stops taking requests.
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": prestop}}}
    node_selector = {**dict(plan.placement.node_selector), **(spec.node_selector or {})}
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "enableServiceLinks": False,
        "securityContext": {
            "fsGroup": RUN_AS,
            "runAsGroup": RUN_AS,
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": config.termination_grace_seconds,
        "volumes": volumes,
    }
    if node_selector:
        pod_spec["nodeSelector"] = dict(sorted(node_selector.items()))
    tolerations = _tolerations(plan, spec)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    template = {"metadata": {"labels": labels(name)}, "spec": pod_spec}
    digest = spec_hash({"template": template, "engine": plan.engine})
    pod_labels = {
        **labels(name),
        ACCELERATOR_LABEL: plan.accelerator,
        ENGINE_LABEL: plan.engine,
        SPEC_HASH_LABEL: digest,
    }
    template["metadata"] = {"labels": dict(sorted(pod_labels.items()))}
    accelerated = plan.accelerator != "cpu"
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": child_name(name),
            "namespace": namespace,
            "labels": dict(sorted({**labels(name), SPEC_HASH_LABEL: digest}.items())),
        },
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector(name)},
            # Accelerators are scarce: replace pods one at a time instead of surging.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}
                if accelerated
                else {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": template,
        },
    }


def render_service(md: Mapping[str, Any], config: OperatorConfig | None = None) -> dict[str, Any]:
    config = config or OperatorConfig()
    meta = md["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": child_name(meta["name"]),
            "namespace": meta.get("namespace", "default"),
            "labels": labels(meta["name"]),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector(meta["name"]),
            "ports": [{"name": PORT_NAME, "port": config.port, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def render_cache_claim(md: Mapping[str, Any]) -> dict[str, Any] | None:
    spec = _spec(md)
    cache = spec.cache
    if not cache or not cache.size or cache.existing_claim:
        return None
    meta = md["metadata"]
    claim: dict[str, Any] = {
        "accessModes": list(cache.access_modes or ["ReadWriteOnce"]),
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class_name:
        claim["storageClassName"] = cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": child_name(meta["name"], "-cache"),
            "namespace": meta.get("namespace", "default"),
            "labels": labels(meta["name"]),
        },
        "spec": claim,
    }


def _with_hash(child: dict[str, Any]) -> dict[str, Any]:
    """Label a child with the hash of its spec (the Deployment's hash covers its pod template)."""
    meta = child["metadata"]
    if SPEC_HASH_LABEL not in meta["labels"]:
        meta["labels"] = dict(sorted({**meta["labels"], SPEC_HASH_LABEL: spec_hash(child["spec"])}.items()))
    return child


def render(plan: Plan, md: Mapping[str, Any], config: OperatorConfig | None = None) -> list[dict[str, Any]]:
    """All children, in apply order: cache claim (if any), Deployment, Service; each with a spec-hash label.

    ``md`` is the ModelDeployment's ``metadata`` (name, namespace) and ``spec``: a mapping, or the
    :class:`ModelDeploymentSpec` already parsed from it.
    """
    children = [render_cache_claim(md), render_deployment(plan, md, config), render_service(md, config)]
    return [_with_hash(c) for c in children if c is not None]
