"""Typed models of ModelDeployment: spec, status, and the object itself.

These models are the only source of the API. ``turnout.api.crd`` turns
them into the CRD's structural OpenAPI schema; the operator, the CLI and
local mode parse objects with them. Field names are snake_case in Python and
camelCase on the wire (aliases).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "turnout.dev"
VERSION = "v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ("mdep",)  # not "md": Cluster API's MachineDeployment owns it
API_VERSION = f"{GROUP}/{VERSION}"

Engine = Literal["vllm", "sglang", "llama.cpp", "transformers", "mlx"]
EngineChoice = Literal["auto", "vllm", "sglang", "llama.cpp", "transformers", "mlx"]
AcceleratorType = Literal["nvidia", "ascend", "metal", "cpu"]
AcceleratorChoice = Literal["auto", "nvidia", "ascend", "metal", "cpu"]
ModelFormat = Literal["pytorch", "gptq", "awq", "fp4", "fp8", "bnb", "gguf", "ggufv2", "mlx"]
ModelType = Literal["llm", "embedding", "rerank"]
Phase = Literal["Resolving", "Deploying", "Ready", "ScaledToZero", "Degraded", "Failed"]
RoutingStrategy = Literal["LeastRequests", "PrefixHash"]

ENGINES: tuple[str, ...] = ("vllm", "sglang", "llama.cpp", "transformers", "mlx")
ACCELERATORS: tuple[str, ...] = ("nvidia", "ascend", "metal", "cpu")

#: A JSON-schema key whose value ``turnout.api.crd`` writes as the CRD's ``default`` (pydantic's defaults are not
#: carried over: the API server would store them in every object).
CRD_DEFAULT = "x-turnout-crd-default"

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


def _cel(*rules: tuple[str, str]) -> ConfigDict:
    """Model config carrying CEL rules (``x-kubernetes-validations``) into the CRD.

    Each rule is mirrored by a pydantic validator on the same model, so the CLI
    and local mode reject what the API server rejects; a test evaluates the CEL
    against the same cases.
    """
    return ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        json_schema_extra={"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]},
    )


MODEL_NAME_OR_URI = ("has(self.name) || has(self.uri)", "model.name or model.uri is required")
URI_STAYS_INSIDE = (
    "!(has(self.uri) && self.uri.matches('^(pvc|hf|s3)://(.*/)?[.][.](/.*)?$'))",
    "model.uri: '..' is not allowed in a pvc://, hf:// or s3:// path (it would leave the volume or repository)",
)
_ENGINE_SET = "has(self.engine) && "
_ACCEL_SET = "has(self.accelerator) && has(self.accelerator.type) && "
GGUF_ENGINES = (
    "!(has(self.model.format) && self.model.format in ['gguf', 'ggufv2'] && "
    + _ENGINE_SET
    + "!(self.engine in ['auto', 'llama.cpp']))",
    "gguf models are served by llama.cpp: set engine to auto or llama.cpp",
)
MLX_ENGINES = (
    "!(has(self.model.format) && self.model.format == 'mlx' && " + _ENGINE_SET + "!(self.engine in ['auto', 'mlx']))",
    "mlx models are served by the mlx engine: set engine to auto or mlx",
)
MLX_ON_METAL = (
    "!(" + _ENGINE_SET + "self.engine == 'mlx' && " + _ACCEL_SET + "!(self.accelerator.type in ['auto', 'metal']))",
    "the mlx engine runs only on Apple silicon: set accelerator.type to auto or metal",
)
GPU_ENGINES_NOT_ON_CPU = (
    "!("
    + _ENGINE_SET
    + "self.engine in ['vllm', 'sglang'] && "
    + _ACCEL_SET
    + "self.accelerator.type in ['cpu', 'metal'])",
    "vllm and sglang need an NVIDIA or Ascend accelerator, not cpu or metal",
)
MIN_NOT_ABOVE_MAX = (
    "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
    "autoscaling: minReplicas must not be greater than maxReplicas",
)
ADAPTER_URI_STAYS_INSIDE = (
    "!has(self.adapters) || self.adapters.all(a, !a.uri.matches('^(pvc|hf|s3)://(.*/)?[.][.](/.*)?$'))",
    "adapters[].uri: '..' is not allowed in a pvc://, hf:// or s3:// path (it would leave the volume or repository)",
)
ADAPTERS_NEED_LORA = (
    "!has(self.adapters) || size(self.adapters) == 0 || has(self.lora)",
    "adapters need spec.lora (the engine starts with LoRA support only then; set lora: {} when the deployment is "
    "created, and adding or removing adapters later never restarts a pod)",
)
ADAPTER_NOT_SERVED_NAME = (
    "!has(self.adapters) || !has(self.servedModelName) || self.adapters.all(a, a.name != self.servedModelName)",
    "an adapter's name must differ from servedModelName (clients choose between them by name)",
)
MAX_ADAPTERS = 32
CACHE_ONE_SOURCE = (
    "!(has(self.size) && has(self.existingClaim))",
    "cache: set size (create a claim) or existingClaim (use one), not both",
)


class ModelSource(_Model):
    """Which model to serve: a catalog family, or an explicit source."""

    model_config = _cel(MODEL_NAME_OR_URI, URI_STAYS_INSIDE)

    name: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Catalog family name, as Xinference names it (e.g. qwen2.5-instruct). "
        "`turnout plan` lists close names when this is unknown. Either name or uri is required.",
    )
    uri: str | None = Field(
        None,
        min_length=1,
        max_length=2048,
        pattern=r"^(hf|s3|pvc|file|builtin)://.+",
        description="Explicit model source: hf://ORG/REPO[/FILE.gguf], s3://BUCKET/PATH, "
        "pvc://CLAIM/PATH (mounted read-only), file:///PATH, or builtin://NAME (the project's offline "
        "models: tiny-llama, tiny-llama.gguf, tiny-reranker, all-minilm-l6-v2). Takes precedence over the "
        "catalog's source.",
    )
    size: float | None = Field(
        None,
        gt=0,
        le=10000,
        description="Size in billions of parameters (e.g. 7 or 0.5). Picks the catalog spec and "
        "drives the memory-fit check; when omitted the resolver picks a size that fits.",
    )
    format: ModelFormat | None = Field(
        None,
        description="Weight format: pytorch, gptq, awq, fp4, fp8, bnb, gguf (ggufv2 is accepted as a "
        "synonym) or mlx. When omitted the resolver picks the format that suits the hardware.",
    )
    quantization: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Quantization of the weights: none, Int4, Int8, Q4_K_M, 4bit, fp8, ... "
        "Must be one the chosen spec offers.",
    )
    architecture: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Hugging Face architecture (config.json `architectures[0]`, e.g. "
        "Qwen2ForCausalLM). Filled from the catalog for named models; set it for uri models so "
        "auto can choose vLLM or SGLang.",
    )
    attention_heads: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="num_attention_heads from the model's config.json. Filled from the catalog for named "
        "models where known; set it for uri models so the chosen tensor-parallel size divides it "
        "(vLLM and SGLang shard attention heads evenly).",
    )
    type: ModelType | None = Field(
        None,
        description="What the model does: llm (chat and completions), embedding or rerank. "
        "Filled from the catalog for named models; defaults to llm for uri models.",
    )

    @model_validator(mode="after")
    def _name_or_uri(self) -> ModelSource:
        if self.name is None and self.uri is None:
            raise ValueError(MODEL_NAME_OR_URI[1])
        if self.uri and "://" in self.uri:
            scheme, rest = self.uri.split("://", 1)
            if scheme in ("pvc", "hf", "s3") and ".." in rest.split("/"):
                raise ValueError(URI_STAYS_INSIDE[1])
        return self


class AcceleratorSpec(_Model):
    """Which hardware to run on."""

    type: AcceleratorChoice = Field(
        "auto",
        description="auto, nvidia, ascend, metal or cpu. auto prefers NVIDIA, then Ascend, then "
        "Metal, then CPU, among hardware present that can serve the model.",
    )
    count: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Devices per replica, honoured as given (the tensor-parallel size); more than one node's "
        "devices spans nodes through LeaderWorkerSet. When omitted the resolver picks the smallest of 1, 2, 4 "
        "or 8 that divides the model's attention heads and fits its weights, and more nodes when one is not "
        "enough. Ignored on cpu and metal.",
    )
    product: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Device product to require, as GPU Feature Discovery labels it "
        "(nvidia.com/gpu.product, e.g. NVIDIA-H100-80GB-HBM3).",
    )


class CacheSpec(_Model):
    """Where downloaded weights are kept, so restarts and replicas don't download again."""

    model_config = _cel(CACHE_ONE_SOURCE)

    size: str | None = Field(
        None,
        pattern=_QUANTITY,
        description="Create a PersistentVolumeClaim of this size (e.g. 50Gi) owned by the deployment.",
    )
    storage_class_name: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        description="StorageClass of the created claim; the cluster default when omitted.",
    )
    access_modes: list[Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod"]] | None = Field(
        None,
        max_length=4,
        description="Access modes of the created claim; ReadWriteOnce when omitted. Use "
        "ReadWriteMany to share one cache between replicas on different nodes.",
    )
    existing_claim: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        description="Use this existing PersistentVolumeClaim instead of creating one.",
    )

    @property
    def shared_across_nodes(self) -> bool:
        """Whether pods on several nodes can mount it at once (a replica spanning nodes needs that).

        An existing claim is the user's to size and share; a created one must ask for ReadWriteMany.
        """
        if self.existing_claim:
            return True
        return bool(self.size) and "ReadWriteMany" in (self.access_modes or [])

    @model_validator(mode="after")
    def _one_source(self) -> CacheSpec:
        if self.size is not None and self.existing_claim is not None:
            raise ValueError(CACHE_ONE_SOURCE[1])
        return self


class SecretKeyRef(_Model):
    """A key in a Secret in the deployment's namespace."""

    name: str = Field(..., min_length=1, max_length=253, description="Name of the Secret.")
    key: str = Field(
        "api-key",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key within the Secret.",
    )


class Toleration(_Model):
    """A Kubernetes toleration, as in a Pod spec."""

    key: str | None = Field(None, description="Taint key the toleration applies to; empty matches all.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal (default).")
    value: str | None = Field(None, description="Taint value to match with Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(None, description="How long a NoExecute taint is tolerated before eviction.")


class KeySelector(_Model):
    """A key of a Secret or ConfigMap, as in a Pod's env."""

    name: str = Field(..., min_length=1, max_length=253, description="Name of the Secret or ConfigMap.")
    key: str = Field(..., min_length=1, max_length=253, description="Key within it.")
    optional: bool | None = Field(None, description="Start even when the key is missing.")


class FieldSelector(_Model):
    """A field of the Pod, as in a Pod's env."""

    field_path: str = Field(..., min_length=1, description="Path of the field, e.g. status.podIP.")
    api_version: str | None = Field(None, description="Version of the schema the path is written in.")


class EnvVarSource(_Model):
    """Where an environment variable's value comes from."""

    secret_key_ref: KeySelector | None = Field(None, description="A key of a Secret.")
    config_map_key_ref: KeySelector | None = Field(None, description="A key of a ConfigMap.")
    field_ref: FieldSelector | None = Field(None, description="A field of the Pod.")


class EnvVar(_Model):
    """An environment variable for the model server container."""

    name: str = Field(..., min_length=1, max_length=256, description="Variable name.")
    value: str | None = Field(None, description="Literal value.")
    value_from: EnvVarSource | None = Field(None, description="Take the value from a Secret, ConfigMap or field.")


class ResourceRequirements(_Model):
    """Compute resources of the model server container, merged over what the plan asks for."""

    requests: dict[str, str] | None = Field(None, description="Minimum resources, e.g. {cpu: '4', memory: 16Gi}.")
    limits: dict[str, str] | None = Field(None, description="Maximum resources, e.g. {memory: 32Gi}.")


class RoutingSpec(_Model):
    """How the turnout gateway spreads requests over the deployment's ready pods."""

    strategy: RoutingStrategy = Field(
        "LeastRequests",
        description="LeastRequests: the ready pod with the fewest requests in flight. PrefixHash: requests whose "
        "prompts start alike go to the same pod (its prefix cache hits), as long as that pod's load stays within "
        "loadFactor times the average; otherwise the next pod on the hash ring.",
    )
    prefix_char_length: int = Field(
        100, ge=1, le=10000, description="PrefixHash: how many leading characters of the prompt are hashed."
    )
    load_factor: float = Field(
        1.25,
        gt=1,
        le=10,
        description="PrefixHash: a pod takes a request while its in-flight count stays below this times the "
        "average over the ready pods (consistent hashing with bounded loads).",
    )


class AutoscalingSpec(_Model):
    """The operator's built-in autoscaler: replicas follow the requests in flight."""

    model_config = _cel(MIN_NOT_ABOVE_MAX)

    min_replicas: int = Field(
        1,
        ge=0,
        le=1000,
        description="Fewest replicas. 0 allows scale to zero after scaleDownDelaySeconds without load; the "
        "turnout gateway holds the first request and scales the deployment back to 1.",
    )
    max_replicas: int = Field(..., ge=1, le=1000, description="Most replicas.")
    target_in_flight_per_replica: float = Field(
        4,
        gt=0,
        le=100000,
        description="Requests in flight (sent to a pod, or queued in the gateway) one replica should carry: "
        "desired replicas = ceil(average load over the window / this).",
    )
    scale_down_delay_seconds: int = Field(
        300,
        ge=0,
        le=86400,
        description="Scale down only to the highest replica count recommended during this many seconds (and to "
        "zero only after this long without load). Scale-up is immediate.",
    )

    @model_validator(mode="after")
    def _min_not_above_max(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(MIN_NOT_ABOVE_MAX[1])
        return self


class AdapterSpec(_Model):
    """A LoRA adapter of the base model, loaded into the running engines and served under its own name."""

    name: str = Field(
        ...,
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$",
        description="The name clients pass as `model` to get the adapter applied: lower-case letters, digits, "
        "'-', '.' and '_', starting and ending with a letter or digit. Unique in the deployment.",
    )
    uri: str = Field(
        ...,
        min_length=1,
        max_length=2048,
        pattern=r"^(hf|s3|pvc|file|builtin)://.+",
        description="Where the adapter's files are (a PEFT folder: adapter_config.json and the weights; a GGUF "
        "LoRA file for llama.cpp): hf://ORG/REPO, s3://BUCKET/PATH, pvc://CLAIM/PATH (a claim the pods mount "
        "already), file:///PATH or builtin://NAME. Each pod's shim fetches it when the operator loads it.",
    )

    @model_validator(mode="after")
    def _stays_inside(self) -> AdapterSpec:
        scheme, rest = self.uri.split("://", 1)
        if scheme in ("pvc", "hf", "s3") and ".." in rest.split("/"):
            raise ValueError(ADAPTER_URI_STAYS_INSIDE[1])
        return self


class LoraSpec(_Model):
    """LoRA support of the engine: fixed when the pods start, so set it before adding adapters."""

    max_loaded: int = Field(
        4,
        ge=1,
        le=MAX_ADAPTERS,
        description="Adapters one replica holds at once (vLLM --max-loras). With more adapters than this, the "
        "operator spreads them over the replicas and the gateway routes each to a replica that holds it.",
    )
    max_rank: int = Field(
        16,
        ge=1,
        le=512,
        description="Largest LoRA rank an adapter may have (vLLM --max-lora-rank: 8, 16, 32, 64, 128, 256, 320 or "
        "512). A larger one fails to load, and status.adapters says so.",
    )
    spread_in_flight_per_replica: float = Field(
        8,
        gt=0,
        le=100000,
        description="Requests for one adapter in flight (or held) at the gateways, per replica that holds it, at "
        "which the operator loads it on one more replica (one per pass, unloading that replica's least recently "
        "used idle adapter when it is full). Needs a gateway the operator scrapes (docs/lora.md).",
    )


class ModelDeploymentSpec(_Model):
    """Desired state: one model, served by one engine, on the hardware that suits it."""

    model_config = _cel(GGUF_ENGINES, MLX_ENGINES, MLX_ON_METAL, GPU_ENGINES_NOT_ON_CPU, ADAPTERS_NEED_LORA,
                        ADAPTER_NOT_SERVED_NAME, ADAPTER_URI_STAYS_INSIDE)

    model: ModelSource = Field(..., description="The model to serve.")
    engine: EngineChoice = Field(
        "auto",
        description="auto, vllm, sglang, llama.cpp, transformers or mlx. An explicit engine that "
        "cannot serve the model is rejected with the reason, never switched silently.",
    )
    engine_args: dict[str, Any] | None = Field(
        None,
        description="Extra arguments passed to the engine unchanged (e.g. {max_model_len: 8192} for "
        "vLLM, {n_ctx: 4096} for llama.cpp).",
    )
    accelerator: AcceleratorSpec = Field(default_factory=AcceleratorSpec, description="Hardware to run on.")
    replicas: int = Field(
        1,
        ge=0,
        le=1000,
        description="Number of model server replicas (pods; groups of pods for a multi-node plan). With "
        "autoscaling set the autoscaler writes it through the scale subresource: leave it out of Git then.",
        # Defaulted by the API server too: the scale subresource (kubectl scale, an HPA, KEDA) answers a GET
        # with an error while specReplicasPath holds no value.
        json_schema_extra={CRD_DEFAULT: 1},
    )
    served_model_name: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="The name clients pass as `model`; the deployment's name when omitted.",
    )
    cache: CacheSpec | None = Field(None, description="Model cache volume; an emptyDir (lost on restart) when omitted.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        None,
        description="Secret key holding the Bearer key clients must send; open when omitted.",
    )
    hf_token_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret key holding a Hugging Face token for gated hf:// models."
    )
    resources: ResourceRequirements | None = Field(
        None, description="Container resources merged over the plan's (accelerator limits are kept)."
    )
    node_selector: dict[str, str] | None = Field(
        None, description="Extra node labels the pods require; nodes without them are not considered."
    )
    tolerations: list[Toleration] | None = Field(
        None, max_length=64, description="Extra tolerations for the model server pods."
    )
    env: list[EnvVar] | None = Field(
        None, max_length=128, description="Extra environment variables for the model server container."
    )
    routing: RoutingSpec | None = Field(
        None, description="How the turnout gateway picks a pod for each request; LeastRequests when omitted."
    )
    autoscaling: AutoscalingSpec | None = Field(
        None,
        description="Let the operator set replicas from the load (requests in flight and queued); replicas "
        "stays as written when omitted.",
    )
    lora: LoraSpec | None = Field(
        None,
        description="Start the engine with LoRA support (required by adapters). Changing it restarts the pods; "
        "adding or removing adapters does not.",
    )
    adapters: list[AdapterSpec] | None = Field(
        None,
        max_length=MAX_ADAPTERS,
        description="LoRA adapters of the model, each served under its own name; loaded into the running pods "
        "without restarting them (needs lora). status.adapters says where each is loaded.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @model_validator(mode="after")
    def _engine_fits_format(self) -> ModelDeploymentSpec:
        fmt, engine, accel = self.model.format, self.engine, self.accelerator.type
        if fmt in ("gguf", "ggufv2") and engine not in ("auto", "llama.cpp"):
            raise ValueError(GGUF_ENGINES[1])
        if fmt == "mlx" and engine not in ("auto", "mlx"):
            raise ValueError(MLX_ENGINES[1])
        if engine == "mlx" and accel not in ("auto", "metal"):
            raise ValueError(MLX_ON_METAL[1])
        if engine in ("vllm", "sglang") and accel in ("cpu", "metal"):
            raise ValueError(GPU_ENGINES_NOT_ON_CPU[1])
        adapters = self.adapters or []
        if adapters and self.lora is None:
            raise ValueError(ADAPTERS_NEED_LORA[1])
        names = [a.name for a in adapters]
        if len(set(names)) != len(names):
            raise ValueError(f"adapters: duplicate names {sorted({n for n in names if names.count(n) > 1})}")
        if self.served_model_name is not None and self.served_model_name in names:
            raise ValueError(ADAPTER_NOT_SERVED_NAME[1])
        return self


class Condition(_Model):
    """A status condition in the metav1.Condition shape."""

    type: str = Field(..., description="Resolved, Available, Progressing or Degraded.")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field(..., description="One CamelCase word for the last transition.")
    message: str = Field("", description="Human-readable detail.")
    observed_generation: int | None = Field(None, description="The .metadata.generation the condition was set from.")
    last_transition_time: str = Field(..., description="When the condition last changed status (RFC 3339).")


class EngineReason(_Model):
    """Why one engine was not chosen."""

    engine: str = Field(..., description="The engine.")
    reason: str = Field(..., description="Why it cannot serve this model here.")


class AdapterStatus(_Model):
    """Where one adapter is loaded."""

    name: str = Field(..., description="The adapter's name.")
    ready: str = Field(..., description="Ready replicas holding it, of the ready replicas: '2/3'.")
    loaded: int = Field(0, description="Ready replicas holding it.")
    pods: list[str] | None = Field(None, description="The pods holding it (the gateway routes its requests there).")
    message: str | None = Field(
        None, description="Why it is not loaded where it should be: the pod and its shim's error."
    )


class ModelDeploymentStatus(_Model):
    """Observed state, written by the operator through the status subresource."""

    phase: Phase | None = Field(
        None,
        description="Resolving, Deploying, Ready, ScaledToZero (a plan is applied and replicas is 0), Degraded "
        "or Failed.",
    )
    engine: str | None = Field(None, description="The engine chosen.")
    accelerator: str | None = Field(None, description="The accelerator chosen: nvidia, ascend, metal or cpu.")
    image: str | None = Field(None, description="The model server image.")
    endpoint: str | None = Field(None, description="In-cluster OpenAI base URL.")
    model_uri: str | None = Field(None, description="The model source the plan resolved to.")
    tensor_parallel_size: int | None = Field(None, description="The engine's tensor-parallel size.")
    pipeline_parallel_size: int | None = Field(
        None, description="The engine's pipeline-parallel size (vLLM across nodes: one stage per node)."
    )
    nodes_per_replica: int | None = Field(
        None, description="Nodes (pods) one replica spans: 1, or the LeaderWorkerSet group size."
    )
    devices_per_node: int | None = Field(None, description="Accelerator devices each pod of a replica requests.")
    selector: str | None = Field(
        None, description="Label selector of the model server pods (for the scale subresource and HPA)."
    )
    replicas: int | None = Field(
        None,
        description="Replicas of the model server workload (Deployment pods, or LeaderWorkerSet groups): the "
        "scale subresource's status.replicas.",
    )
    ready_replicas: int | None = Field(None, description="Pods that pass their readiness probe.")
    conditions: list[Condition] | None = Field(
        None,
        description="Resolved, Available, Progressing, Degraded.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    rejected: list[EngineReason] | None = Field(None, description="Why each other engine was not chosen.")
    adapters: list[AdapterStatus] | None = Field(
        None,
        description="Per adapter of spec.adapters: how many ready replicas hold it, and why not where it failed.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    observed_generation: int | None = Field(None, description="The generation last reconciled.")


class ObjectMeta(BaseModel):
    """The metadata fields turnout reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(..., min_length=1, max_length=253)
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class ModelDeployment(BaseModel):
    """A whole ModelDeployment object."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    api_version: Literal["turnout.dev/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["ModelDeployment"] = KIND
    metadata: ObjectMeta
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None

    @property
    def served_name(self) -> str:
        return self.spec.served_model_name or self.metadata.name
