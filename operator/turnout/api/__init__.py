"""The ModelDeployment API (turnout.dev/v1alpha1): typed models, the one source of the CRD."""

from turnout.api.gatewaykeys import GATEWAY_KEYS_SECRET, key_digest
from turnout.api.types import (
    API_VERSION,
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
    "API_VERSION",
    "GATEWAY_KEYS_SECRET",
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
    "key_digest",
]
