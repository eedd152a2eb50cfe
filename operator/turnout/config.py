"""Operator configuration: images per engine × accelerator, what `auto` may choose, defaults.

Read once at start-up (``load_config``) and validated there, so a bad file
fails fast with a one-line message instead of failing every reconcile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from turnout.api.types import ACCELERATORS
from turnout.images import default_images
from turnout.resolver.engines import ENGINES, REGISTRY

DEFAULT_AUTO_ENGINES = tuple(e.name for e in REGISTRY if e.auto)


class ConfigError(ValueError):
    """The operator configuration cannot be used; the message says why."""


class EndpointPickerConfig(BaseModel):
    """The Endpoint Picker (Gateway API Inference Extension) every rendered InferencePool refers to."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    name: str = Field(
        ..., min_length=1, max_length=253,
        description="Name of the picker's Service (or other kind); ``{name}`` is replaced by the InferencePool's "
        "name (one picker per pool, as the upstream chart deploys it).",
    )
    kind: str = Field("Service", min_length=1, max_length=63, description="Kind of the referent.")
    group: str = Field("", max_length=253, description="API group of the referent; empty for a Service.")
    port: int = Field(9002, ge=1, le=65535, description="The picker Service's gRPC port.")
    failure_mode: str = Field(
        "FailClose", pattern="^(FailOpen|FailClose)$",
        description="What the gateway does when the picker does not answer: FailOpen or FailClose.",
    )


class InferencePoolConfig(BaseModel):
    """What the operator puts in the InferencePool it renders per ModelDeployment (``--inference-pool``)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    endpoint_picker: EndpointPickerConfig | None = Field(
        None, description="The Endpoint Picker reference; omitted from the pools when not set."
    )


class OperatorConfig(BaseModel):
    """What the resolver and renderer take from the operator's configuration."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    images: dict[str, dict[str, str]] = Field(
        default_factory=default_images,
        description="Image per engine and accelerator; an engine has no image on an accelerator it cannot serve there.",
    )
    auto_engines: tuple[str, ...] = Field(
        DEFAULT_AUTO_ENGINES,
        description="Engines `engine: auto` may choose (sglang is opt-in).",
    )
    memory_headroom: float = Field(
        1.2, ge=1.0, le=4.0, description="Multiplier over weight bytes for KV cache and activations."
    )
    memory_overhead_mib: int = Field(
        1024, ge=0, description="Fixed memory per replica on top of weights (runtime, CUDA context). On CPU the "
        "engine's measured baseline is used instead (llama.cpp, transformers; see docs/operator.md)."
    )
    port: int = Field(8000, ge=1, le=65535, description="Port the shim listens on in every pod.")
    dist_port: int = Field(
        29500, ge=1, le=65535, description="Port of a multi-node group's rendezvous on its leader pod."
    )
    image_pull_policy: str = Field("IfNotPresent", description="imagePullPolicy of model server pods.")
    shm_size: str = Field("16Gi", description="Size of /dev/shm for vLLM and SGLang pods.")
    termination_grace_seconds: int = Field(
        60, ge=1, description="Model pods' grace period: preStop sleep, then the shim drains in-flight streams."
    )
    max_queue: int = Field(256, ge=1, description="Requests a shim admits before answering 429.")
    inference_pool: InferencePoolConfig = Field(
        default_factory=InferencePoolConfig,
        description="The InferencePool rendered per ModelDeployment when the operator runs with --inference-pool.",
    )

    @field_validator("images")
    @classmethod
    def _known_images(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for engine, per_accel in value.items():
            if engine not in ENGINES:
                raise ValueError(f"images: unknown engine {engine!r} (known: {', '.join(ENGINES)})")
            for accel, image in per_accel.items():
                if accel not in ACCELERATORS:
                    raise ValueError(
                        f"images.{engine}: unknown accelerator {accel!r} (known: {', '.join(ACCELERATORS)})"
                    )
                if not image or any(c.isspace() for c in image):
                    raise ValueError(f"images.{engine}.{accel}: {image!r} is not an image reference")
        return value

    @field_validator("auto_engines")
    @classmethod
    def _known_engines(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [e for e in value if e not in ENGINES]
        if unknown:
            raise ValueError(f"autoEngines: unknown engine(s) {unknown} (known: {', '.join(ENGINES)})")
        return value

    def image(self, engine: str, accelerator: str) -> str | None:
        return self.images.get(engine, {}).get(accelerator)


def parse_config(data: Any, source: str = "config") -> OperatorConfig:
    """Validate a config mapping; raises ConfigError with one readable line."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
    try:
        return OperatorConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise ConfigError(f"{source}: {where}: {first['msg']}") from None


def load_config(path: str | Path | None) -> OperatorConfig:
    """Read and validate the operator config file (defaults when path is None)."""
    if path is None:
        return OperatorConfig()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, str(path))
