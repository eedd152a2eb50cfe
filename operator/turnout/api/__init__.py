"""The ModelDeployment API (turnout.dev/v1alpha1): typed models, the one source of the CRD."""

from turnout.api.types import (
    GROUP,
    KIND,
    PLURAL,
    SINGULAR,
    VERSION,
    AcceleratorSpec,
    AutoscalingSpec,
    CacheSpec,
    Condition,
    EngineReason,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ModelSource,
    RoutingSpec,
    SecretKeyRef,
)

__all__ = [
    "GROUP",
    "KIND",
    "PLURAL",
    "SINGULAR",
    "VERSION",
    "AcceleratorSpec",
    "AutoscalingSpec",
    "CacheSpec",
    "Condition",
    "EngineReason",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ModelSource",
    "RoutingSpec",
    "SecretKeyRef",
]
