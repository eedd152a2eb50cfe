"""Render a Plan into the Kubernetes objects that run it."""

from turnout.render.manifests import (
    INFERENCE_POOL_API_VERSION,
    LWS_API_VERSION,
    ROLE_LABEL,
    SPEC_HASH_LABEL,
    child_name,
    endpoint,
    labels,
    render,
    render_cache_claim,
    render_deployment,
    render_inference_pool,
    render_leader_worker_set,
    render_service,
    selector,
    service_selector,
    shim_args,
)

__all__ = [
    "INFERENCE_POOL_API_VERSION",
    "LWS_API_VERSION",
    "ROLE_LABEL",
    "SPEC_HASH_LABEL",
    "child_name",
    "endpoint",
    "labels",
    "render",
    "render_cache_claim",
    "render_deployment",
    "render_inference_pool",
    "render_leader_worker_set",
    "render_service",
    "selector",
    "service_selector",
    "shim_args",
]
