"""Children of a ModelDeployment, rendered from its Plan: Deployment, Service, and a cache PVC.

A plan whose replica spans several nodes renders a LeaderWorkerSet (``leaderworkerset.x-k8s.io/v1``)
instead of the Deployment: one group of ``nodesPerReplica`` pods per replica, the leader (rank 0)
serving the API behind the Service, the workers running the engine headless. Both templates carry the
same shim command but for the rank, which the kubelet fills in from LeaderWorkerSet's environment.

Pure and stable: dict keys in a fixed order, env sorted, and a spec-hash label
computed from everything but the replica count, so equal inputs render equal
objects and a changed pod template rolls out while scaling does not.
Owner references are added by the controller, not here.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from turnout.api.types import ModelDeployment, ModelDeploymentSpec
from turnout.config import OperatorConfig
from turnout.hardware import parse_quantity
from turnout.resolver.memory import bytes_per_param
from turnout.resolver.plan import Plan
from turnout.shimargs import EnvRef, LoraModule, ShimArgs
from turnout.sources import PVC_ROOT, pvc_mount
from turnout.toolparsers import tool_parser

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
#: The startup probe's period and the time it allows the model to load (failureThreshold = budget / period).
STARTUP_PERIOD_SECONDS = 1
STARTUP_BUDGET_SECONDS = 30 * 60
#: Memory requests are rounded up to this many MiB.
MEMORY_STEP_MIB = 64
#: The least CPU a CPU model pod requests (millicores): a model of a few MiB must not reserve a core.
CPU_REQUEST_FLOOR_MILLI = 250
ROLE_LABEL = "turnout.dev/role"  # leader | worker, on the pods of a multi-node group
LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"
INFERENCE_POOL_API_VERSION = "inference.networking.k8s.io/v1"
# Set by LeaderWorkerSet in every container of a group (its pod webhook); the kubelet expands $(…) from them.
LWS_LEADER_ADDRESS = "LWS_LEADER_ADDRESS"
LWS_WORKER_INDEX = "LWS_WORKER_INDEX"
#: Engines that take LoRA adapters only when they start (llama.cpp): their pods get ``spec.adapters`` as
#: ``--lora-modules``, so a change of the adapters rolls them. The others load adapters at run time and never see
#: ``spec.adapters`` in their pod template (docs/lora.md).
LORA_AT_START_ONLY = ("llama.cpp",)


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


def service_selector(name: str, plan: Plan | None = None) -> dict[str, str]:
    """The Service's selector: every pod, or only the leaders of a multi-node group (they serve the API)."""
    if plan is not None and plan.multi_node:
        return {**selector(name), ROLE_LABEL: "leader"}
    return selector(name)


def spec_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


#: the engines that read ``--tool-call-parser`` (llama.cpp and MLX find the call format themselves)
TOOL_PARSER_ENGINES = frozenset({"vllm", "sglang", "transformers"})


def shim_args(
    plan: Plan, spec: ModelDeploymentSpec, served_name: str, config: OperatorConfig, role: str = "leader"
) -> ShimArgs:
    """The shim's command line for this plan (the same contract the shim parses).

    ``role`` matters for multi-node plans: the leader is rank 0, a worker's rank is ``$(LWS_WORKER_INDEX)``.
    """
    key_file = None
    if spec.api_key_secret_ref:
        key_file = f"{API_KEY_DIR}/{spec.api_key_secret_ref.key}"
    group: dict[str, Any] = {}
    if plan.multi_node:
        group = {
            "nnodes": plan.placement.nodes_per_replica,
            "node_rank": 0 if role == "leader" else EnvRef(LWS_WORKER_INDEX),
            "leader_address": EnvRef(LWS_LEADER_ADDRESS),
            "dist_port": config.dist_port,
        }
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
        pipeline_parallel_size=plan.pipeline_parallel_size,
        tool_call_parser=tool_parser(plan.model.family, plan.model.abilities) if plan.engine in TOOL_PARSER_ENGINES
        else None,
        **_lora(plan, spec),
        **group,
    )


def _lora(plan: Plan, spec: ModelDeploymentSpec) -> dict[str, Any]:
    """The shim's LoRA flags: from ``spec.lora``; ``spec.adapters`` only for an engine that cannot load them at
    run time (the others get them from the operator through the shim's API: adding one changes no pod)."""
    if spec.lora is None:
        return {}
    out: dict[str, Any] = {"enable_lora": True, "max_loras": spec.lora.max_loaded, "max_lora_rank": spec.lora.max_rank}
    if plan.engine in LORA_AT_START_ONLY and spec.adapters:
        modules = tuple(LoraModule(a.name, a.uri) for a in spec.adapters)
        out.update(lora_modules=modules, max_loras=max(spec.lora.max_loaded, len(modules)))
    return out


def _mib(mib: int) -> str:
    """MiB as a quantity, rounded up to :data:`MEMORY_STEP_MIB` (a few MiB of weights need no whole GiB)."""
    return f"{-(-mib // MEMORY_STEP_MIB) * MEMORY_STEP_MIB}Mi"


def cpu_request(plan: Plan) -> str:
    """The CPU request of a model pod: a core on accelerators; on CPU a core per GiB of weights, from
    :data:`CPU_REQUEST_FLOOR_MILLI` up to a core.

    A request is what the scheduler reserves, not a cap (no CPU limit is set): a small model still uses every
    idle core, and a 2-core node holds several tiny models instead of one.
    """
    m = plan.model
    if plan.accelerator != "cpu" or m.size_b is None:
        return "1"
    weights_gib = m.size_b * 1e9 * bytes_per_param(m.format, m.quantization) / 2**30
    milli = min(1000, max(CPU_REQUEST_FLOOR_MILLI, -(-int(weights_gib * 1000) // 50) * 50))
    return "1" if milli == 1000 else f"{milli}m"


def _resources(plan: Plan, spec: ModelDeploymentSpec) -> dict[str, Any]:
    requests: dict[str, str] = {"cpu": cpu_request(plan)}
    limits: dict[str, str] = {}
    p = plan.placement
    if p.resource and p.devices:
        limits[p.resource] = str(p.devices)
    elif p.resource:  # metal: one host's GPU
        limits[p.resource] = "1"
    if plan.accelerator == "cpu" and p.memory_needed_mib:
        requests["memory"] = _mib(p.memory_needed_mib)
    if spec.resources:
        user_requests = dict(spec.resources.requests or {})
        user_limits = dict(spec.resources.limits or {})
        if p.resource:
            user_limits.pop(p.resource, None)  # the plan owns the accelerator count
        for key, limit in user_limits.items():
            # A derived request above the user's limit would make the pod invalid: the limit caps it.
            if key in requests and key not in user_requests and parse_quantity(requests[key]) > parse_quantity(limit):
                requests[key] = limit
        requests.update(user_requests)
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
    if cache and plan.multi_node and not cache.shared_across_nodes:
        source: dict[str, Any] = {"emptyDir": {}}  # a ReadWriteOnce claim cannot be mounted on several nodes
    elif cache and cache.existing_claim:
        source = {"persistentVolumeClaim": {"claimName": cache.existing_claim}}
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


def _ident(md: ModelDeployment) -> tuple[str, str]:
    """The ModelDeployment's name and namespace (``default`` when it has none)."""
    return md.metadata.name, md.metadata.namespace or "default"


def _pod_template(
    plan: Plan, spec: ModelDeploymentSpec, name: str, config: OperatorConfig, role: str | None = None
) -> dict[str, Any]:
    """The pod template (labels without the spec hash yet) for this plan; ``role`` for a multi-node group."""
    served = spec.served_model_name or name
    args = shim_args(plan, spec, served, config, role or "leader")
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
        # The startup probe asks every second, so a pod is Ready within about a second of /health
        # answering (a 10 s period was most of a scale from zero); 1800 failures keep the same 30-minute
        # budget for a long model load. It holds liveness off until then; liveness asks /live (503 only
        # once the engine is dead), so a slow load is not restarted. An engine that fails to load does not
        # wait out the budget: the shim exits with the engine's error as its termination message.
        # Each probe is one HTTP GET the shim answers from memory. A worker of a multi-node group answers
        # /health while its headless engine runs.
        "startupProbe": _probe("/health", STARTUP_PERIOD_SECONDS, STARTUP_BUDGET_SECONDS // STARTUP_PERIOD_SECONDS),
        "readinessProbe": _probe("/health", 1, 3),
        "livenessProbe": _probe("/live", 10, 3),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if plan.multi_node and role == "leader":
        container["ports"].append({"name": "dist", "containerPort": config.dist_port, "protocol": "TCP"})
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
    pod_labels = labels(name)
    if role is not None:
        pod_labels[ROLE_LABEL] = role
    return {"metadata": {"labels": pod_labels}, "spec": pod_spec}


def _stamp(template: dict[str, Any], plan: Plan, digest: str) -> None:
    """The final pod labels: the common ones, accelerator, engine and the spec hash."""
    pod_labels = {
        **template["metadata"]["labels"],
        ACCELERATOR_LABEL: plan.accelerator,
        ENGINE_LABEL: plan.engine,
        SPEC_HASH_LABEL: digest,
    }
    template["metadata"] = {"labels": dict(sorted(pod_labels.items()))}


def _rollout(plan: Plan) -> dict[str, int]:
    # Accelerators are scarce: replace pods one at a time instead of surging.
    return {"maxSurge": 0, "maxUnavailable": 1} if plan.accelerator != "cpu" else {"maxSurge": 1, "maxUnavailable": 0}


def render_deployment(plan: Plan, md: ModelDeployment, config: OperatorConfig | None = None) -> dict[str, Any]:
    """The apps/v1 Deployment that runs the shim for this plan (one node per replica)."""
    config = config or OperatorConfig()
    name, namespace = _ident(md)
    spec = md.spec
    template = _pod_template(plan, spec, name, config)
    digest = spec_hash({"template": template, "engine": plan.engine})
    _stamp(template, plan, digest)
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
            "strategy": {"type": "RollingUpdate", "rollingUpdate": _rollout(plan)},
            "template": template,
        },
    }


def render_leader_worker_set(
    plan: Plan, md: ModelDeployment, config: OperatorConfig | None = None
) -> dict[str, Any]:
    """The LeaderWorkerSet that runs a multi-node plan: ``replicas`` groups of ``nodesPerReplica`` pods.

    Any pod's restart recreates its whole group (the engine's ranks cannot rejoin one by one), and the
    workers start once the leader exists, so ``$(LWS_LEADER_ADDRESS)`` resolves.
    """
    config = config or OperatorConfig()
    name, namespace = _ident(md)
    spec = md.spec
    leader = _pod_template(plan, spec, name, config, "leader")
    worker = _pod_template(plan, spec, name, config, "worker")
    digest = spec_hash({"leader": leader, "worker": worker, "engine": plan.engine})
    _stamp(leader, plan, digest)
    _stamp(worker, plan, digest)
    return {
        "apiVersion": LWS_API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": {
            "name": child_name(name),
            "namespace": namespace,
            "labels": dict(sorted({**labels(name), SPEC_HASH_LABEL: digest}.items())),
        },
        "spec": {
            "replicas": spec.replicas,
            "leaderWorkerTemplate": {
                "size": plan.placement.nodes_per_replica,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": leader,
                "workerTemplate": worker,
            },
            "rolloutStrategy": {"type": "RollingUpdate", "rollingUpdateConfiguration": _rollout(plan)},
            "startupPolicy": "LeaderCreated",
        },
    }


def render_service(
    md: ModelDeployment, config: OperatorConfig | None = None, plan: Plan | None = None
) -> dict[str, Any]:
    """The ClusterIP Service clients use; for a multi-node plan it selects the leaders only."""
    config = config or OperatorConfig()
    name, namespace = _ident(md)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": child_name(name),
            "namespace": namespace,
            "labels": labels(name),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": service_selector(name, plan),
            "ports": [{"name": PORT_NAME, "port": config.port, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def render_cache_claim(md: ModelDeployment, plan: Plan | None = None) -> dict[str, Any] | None:
    """The cache claim to create, if the spec asks for one (not for a multi-node plan it cannot serve)."""
    cache = md.spec.cache
    if not cache or not cache.size or cache.existing_claim:
        return None
    if plan is not None and plan.multi_node and not cache.shared_across_nodes:
        return None
    name, namespace = _ident(md)
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
            "name": child_name(name, "-cache"),
            "namespace": namespace,
            "labels": labels(name),
        },
        "spec": claim,
    }


def render_inference_pool(
    md: ModelDeployment, config: OperatorConfig | None = None, plan: Plan | None = None
) -> dict[str, Any]:
    """The Gateway API Inference Extension InferencePool of the model pods (the Service's pods, on the shim port).

    A Gateway implementing the extension routes to it through the Endpoint Picker the operator config names.
    """
    config = config or OperatorConfig()
    md_name, namespace = _ident(md)
    name = child_name(md_name)
    spec: dict[str, Any] = {
        "selector": {"matchLabels": service_selector(md_name, plan)},
        "targetPorts": [{"number": config.port}],
    }
    picker = config.inference_pool.endpoint_picker
    if picker is not None:
        ref: dict[str, Any] = {"name": picker.name.replace("{name}", name)}
        if picker.group:
            ref["group"] = picker.group
        if picker.kind != "Service":
            ref["kind"] = picker.kind
        ref["port"] = {"number": picker.port}
        ref["failureMode"] = picker.failure_mode
        spec["endpointPickerRef"] = ref
    return {
        "apiVersion": INFERENCE_POOL_API_VERSION,
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(md_name)},
        "spec": spec,
    }


def _with_hash(child: dict[str, Any]) -> dict[str, Any]:
    """Label a child with the hash of its spec (the Deployment's hash covers its pod template)."""
    meta = child["metadata"]
    if SPEC_HASH_LABEL not in meta["labels"]:
        meta["labels"] = dict(sorted({**meta["labels"], SPEC_HASH_LABEL: spec_hash(child["spec"])}.items()))
    return child


def render(plan: Plan, md: ModelDeployment, config: OperatorConfig | None = None, *,
           inference_pool: bool = False) -> list[dict[str, Any]]:
    """All children of the (typed) ModelDeployment ``md``, in apply order: cache claim (if any), Deployment or
    LeaderWorkerSet, Service, and the InferencePool when ``inference_pool``.

    Each carries a spec-hash label.
    """
    workload = render_leader_worker_set(plan, md, config) if plan.multi_node else render_deployment(plan, md, config)
    children = [render_cache_claim(md, plan), workload, render_service(md, config, plan),
                render_inference_pool(md, config, plan) if inference_pool else None]
    return [_with_hash(c) for c in children if c is not None]
